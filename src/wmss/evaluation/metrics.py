"""Statistics of an evaluation: the unbiased pass@k estimator and a paired bootstrap interval."""

from __future__ import annotations

from math import comb

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 − C(n−c, k) / C(n, k)``."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n; got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem; got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(num_correct: list[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with ``n`` samples."""
    return float(np.mean([pass_at_k(n, c, k) for c in num_correct])) if num_correct else 0.0


def paired_bootstrap(
    model: np.ndarray,
    baseline: np.ndarray,
    num_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy difference ``mean(model) − mean(baseline)`` over the same problems, with a percentile
    bootstrap interval: problems are resampled with replacement, keeping each problem's pair together.

    ``model`` and ``baseline`` are per-problem scores (1/0 correctness, or pass@k values).
    Returns ``(delta, low, high)``.
    """
    model, baseline = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if model.shape != baseline.shape or model.ndim != 1 or len(model) == 0:
        raise ValueError(
            f"paired scores must be two 1-D arrays over the same problems; got shapes "
            f"{model.shape} and {baseline.shape}"
        )
    diff = model - baseline
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(num_resamples, len(diff)))
    resampled = diff[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(diff.mean()), float(low), float(high)


def paired_bootstrap_mean_over_tasks(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    num_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Like ``paired_bootstrap`` for the average of per-task accuracies: each task's problems are
    resampled on their own (stratified), and the resampled task differences are averaged."""
    rng = np.random.default_rng(seed)
    deltas, resampled = [], np.zeros(num_resamples)
    for model, baseline in pairs:
        diff = np.asarray(model, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
        deltas.append(diff.mean())
        resampled += diff[rng.integers(0, len(diff), size=(num_resamples, len(diff)))].mean(axis=1)
    resampled /= len(pairs)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(np.mean(deltas)), float(low), float(high)

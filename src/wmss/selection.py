"""WD-DS: weak-driven discrepancy selection (Eq. 9), sampling and de-duplication.

With ``ΔH = H_strong − H_weak`` and ``[u]_+ = max(u, 0)``, the selection forms are:

``paper`` (the default; Eq. 9 as printed)
    ``p_i ∝ α·[−ΔH_i]_+ + β·H_strong[i] + γ·[ΔH_i]_+``
``normalized``
    the same three terms, each first divided by its own sum over D.
``released_code`` (the authors' released code, which differs from the paper)
    ``p_i ∝ α·H_weak[i]/ΣH_weak + β·[−ΔH_i]_+/Σ[−ΔH]_+ + γ·[ΔH_i]_+/Σ[ΔH]_+``; its sampling keeps
    duplicate draws (``wmss.dedup`` defaults to false for this form).
``uniform`` (a control, not WD-DS)
    ``p_i = 1/|D|`` over the examples with a finite entropy: random sampling at the size WD-DS's
    draws give, for telling the value of Eq. 9's weights from that of a smaller second pass.

Degenerate cases, all reported in ``Selection.notes``:
- an example whose entropy is NaN (no completion token) gets weight 0;
- in the normalised forms, a term whose sum over D is 0 contributes nothing (instead of 0/0);
- if every weight is 0, selection falls back to uniform weights over the valid examples;
- if no example has a valid entropy, selection is impossible and raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmss.config import RunConfig
from wmss.errors import DataError, WmssError
from wmss.io import read_jsonl

TERMS = ("alpha", "beta", "gamma")


@dataclass
class Selection:
    """Result of WD-DS over D (arrays are in the order of the training dataset's rows)."""

    weights: np.ndarray
    """Normalised selection probabilities p_i (sum to 1)."""
    draws: np.ndarray
    """How often each example was drawn."""
    dedup: bool
    term_mass: dict[str, float]
    """Share of the total (unnormalised) weight contributed by each term of Eq. 9."""
    notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> np.ndarray:
        return self.draws > 0

    @property
    def active_rows(self) -> list[int]:
        """Rows of D_active (``active_rows``)."""
        return active_rows(self.draws, self.dedup)

    @property
    def active_fraction(self) -> float:
        """|D_active| / |D|."""
        return len(self.active_rows) / len(self.weights)


def _term_arrays(
    entropy_weak: np.ndarray, entropy_strong: np.ndarray, form: str
) -> tuple[list[np.ndarray], list[str]]:
    """The three per-example terms (α, β, γ) of the chosen form, before weighting."""
    delta = entropy_strong - entropy_weak
    consolidate, repair = np.maximum(-delta, 0.0), np.maximum(delta, 0.0)
    if form == "paper":
        return [consolidate, entropy_strong, repair], []
    if form == "normalized":
        raw = [consolidate, entropy_strong, repair]
    elif form == "released_code":
        raw = [entropy_weak, consolidate, repair]
    else:
        raise WmssError(f"unknown selection form {form!r}; use paper, normalized, released_code or uniform.")
    terms, notes = [], []
    for name, term in zip(TERMS, raw, strict=True):
        total = term.sum()
        if total > 0:
            terms.append(term / total)
        else:
            terms.append(np.zeros_like(term))
            notes.append(f"the {name} term sums to 0 over the data, so it contributes nothing")
    return terms, notes


def selection_weights(
    entropy_weak: np.ndarray,
    entropy_strong: np.ndarray,
    alpha: float = 0.1,
    beta: float = 0.8,
    gamma: float = 0.1,
    form: str = "paper",
) -> tuple[np.ndarray, dict[str, float], list[str]]:
    """Eq. 9 (or a variant): normalised probabilities, each term's share of the mass, and notes."""
    coefficients = (alpha, beta, gamma)
    if min(coefficients) < 0:
        raise WmssError(
            f"selection coefficients must be >= 0; got alpha={alpha}, beta={beta}, gamma={gamma}."
        )
    if max(coefficients) == 0:
        raise WmssError("alpha, beta and gamma are all 0, so every selection weight is 0; set one > 0.")
    entropy_weak = np.asarray(entropy_weak, dtype=np.float64)
    entropy_strong = np.asarray(entropy_strong, dtype=np.float64)
    if entropy_weak.shape != entropy_strong.shape or entropy_weak.ndim != 1:
        raise WmssError(
            f"weak and strong entropies must be 1-D arrays of one length; got shapes "
            f"{entropy_weak.shape} and {entropy_strong.shape}."
        )
    valid = np.isfinite(entropy_weak) & np.isfinite(entropy_strong)
    if not valid.any():
        raise WmssError("no example has a finite entropy (no completion tokens?), so WD-DS cannot select.")
    notes = []
    if not valid.all():
        notes.append(f"{int((~valid).sum())} example(s) have no finite entropy and get weight 0")
    # Entropy is >= 0; clip float round-off and neutralise invalid rows before any sum.
    h_weak = np.where(valid, np.clip(entropy_weak, 0.0, None), 0.0)
    h_strong = np.where(valid, np.clip(entropy_strong, 0.0, None), 0.0)
    if form == "uniform":  # the control: no entropy term, whatever the coefficients
        return (valid / valid.sum()).astype(np.float64), {name: 0.0 for name in TERMS}, notes
    terms, term_notes = _term_arrays(h_weak, h_strong, form)
    notes += term_notes
    weighted = [c * t for c, t in zip(coefficients, terms, strict=True)]
    raw = np.sum(weighted, axis=0)
    total = raw.sum()
    if total > 0:
        mass = {name: float(w.sum() / total) for name, w in zip(TERMS, weighted, strict=True)}
        return raw / total, mass, notes
    notes.append("every selection weight is 0; falling back to uniform weights over the valid examples")
    uniform = valid / valid.sum()
    return uniform.astype(np.float64), {name: 0.0 for name in TERMS}, notes


def sample_active_set(weights: np.ndarray, seed: int, sample_multiplier: float = 1.0) -> np.ndarray:
    """Draw ``round(m·|D|)`` indices i.i.d. from ``weights`` with replacement; return per-row counts."""
    n = len(weights)
    num_draws = max(1, round(sample_multiplier * n))
    rng = np.random.default_rng(seed)
    drawn = rng.choice(n, size=num_draws, replace=True, p=weights)
    return np.bincount(drawn, minlength=n)


def active_rows(draws: np.ndarray, dedup: bool) -> list[int]:
    """Rows of D_active: each drawn row once (dedup) or once per draw, in row order."""
    rows = np.flatnonzero(draws)
    if dedup:
        return rows.tolist()
    return np.repeat(rows, draws[rows]).tolist()


def active_set(dataset: Any, draws: np.ndarray, dedup: bool) -> Any:
    """D_active: the rows of ``dataset`` (a ``datasets.Dataset``) given by ``active_rows``."""
    return dataset.select(active_rows(draws, dedup))


def read_selection_draws(path: str | Path, idx: list) -> np.ndarray:
    """The ``draws`` of a ``selection-<t>.jsonl`` file (``wmss select``) in the order of the examples
    ``idx``; the file must list exactly those examples."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"selection file {path} does not exist; write one with `wmss select`.")
    try:
        rows = read_jsonl(path)
        draws = {r["idx"]: int(r["draws"]) for r in rows}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not a selection file (JSON lines with idx and draws, as `wmss select` writes): {err}"
        ) from None
    missing = [i for i in idx if i not in draws]
    if missing or len(draws) != len(idx):
        extra = len(set(draws) - set(idx))
        raise DataError(
            f"{path} was made for other examples than this data: {len(missing)} of its {len(idx)} examples "
            f"have no line (e.g. idx {missing[:3]}), {extra} lines name examples it does not have. "
            "Compute the entropies and the selection on this data."
        )
    return np.array([draws[i] for i in idx], dtype=np.int64)


def select_for_config(
    entropy_weak: np.ndarray, entropy_strong: np.ndarray, cfg: RunConfig, seed: int
) -> Selection:
    """WD-DS with the ``wmss`` section of a run config."""
    w = cfg.wmss
    return select(
        entropy_weak,
        entropy_strong,
        alpha=w.alpha,
        beta=w.beta,
        gamma=w.gamma,
        form=w.selection,
        dedup=cfg.dedup,
        seed=seed,
        sample_multiplier=w.sample_multiplier,
    )


def selection_rows(
    idx: list, entropy_weak: np.ndarray, entropy_strong: np.ndarray, selection: Selection
) -> list[dict]:
    """The lines of a ``selection-<t>.jsonl`` file, one per training example."""

    def number(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return [
        {
            "idx": i,
            "entropy_weak": number(hw),
            "entropy_strong": number(hs),
            "weight": float(p),
            "draws": int(d),
            "active": bool(d > 0),
        }
        for i, hw, hs, p, d in zip(
            idx, entropy_weak, entropy_strong, selection.weights, selection.draws, strict=True
        )
    ]


def select(
    entropy_weak: np.ndarray,
    entropy_strong: np.ndarray,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    form: str,
    dedup: bool,
    seed: int,
    sample_multiplier: float = 1.0,
) -> Selection:
    """WD-DS: Eq. 9 weights, then the active set D_active."""
    weights, mass, notes = selection_weights(entropy_weak, entropy_strong, alpha, beta, gamma, form)
    draws = sample_active_set(weights, seed, sample_multiplier)
    return Selection(weights=weights, draws=draws, dedup=dedup, term_mass=mass, notes=notes)

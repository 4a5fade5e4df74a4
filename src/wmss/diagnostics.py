"""Looking inside a weak–strong pair (SPEC §2 "Why it helps" and §3): logit statistics, entropy
separation, and the automatic λ of Appendix D.

Everything is measured, without gradient and in eval mode, at the positions that predict a
completion token (the same positions as the loss and Eq. 7), on a seeded sample of the training
examples (``wmss.diagnostic_examples``). Logits are projected a chunk of positions at a time, like
the entropy pass (``wmss.entropy``): no tokens×vocabulary tensor is held for a whole batch.

Per model and position, with ``z`` the logits and ``y`` the target token (averaged over positions):
``target_logit`` z[y]; ``background_logit`` the mean of z[k] over k ≠ y; ``target_background_gap``
their difference; ``logit_std`` the standard deviation of z over the vocabulary; ``max_logit`` and
``min_logit``; ``l2_norm`` ‖z‖₂; ``centred_norm`` ‖z̃‖₂ with z̃ = z − mean_v(z); ``entropy`` (Eq. 7's
per-token term); ``max_prob`` max_v softmax(z)_v; ``target_prob`` softmax(z)[y].

Per pair (weak, strong), with margins ``m_k(z) = z[y] − z[k]``: ``hard_negative_share`` the share of
non-target tokens k with m_k(z_weak) < m_k(z_strong) (the hard negatives H), averaged over positions;
``theorem1_fraction`` the fraction of positions where every non-target margin of the weak model is
≤ the strong model's, the condition of Theorem 1 under which mixing lowers P(y) below the strong
model's own and so enlarges the gradient on wrong tokens.

Separation: ``ΔH = H_strong − H_weak`` per example (Eq. 7). When |mean ΔH| is below
``wmss.min_entropy_gap`` the pair is too close for mixing to add much signal (the paper's sweep of the
weak checkpoint found a threshold rather than a monotone gain; the default of 0.05 nats is this
project's heuristic, not the paper's number).

Automatic λ (``wmss.mix_lambda: auto``): the gradient-share crossover ``λ = 1/(1+√a)`` with
``a = (‖z̃_strong‖/‖z̃_weak‖)²``, the norms being the mean per-position ``centred_norm`` of each model.

Files: ``wmss diagnose logits`` writes ``logits.json`` (the result) and ``logits.md`` (its tables) to a
directory, by default a run's ``diagnostics/``; ``write_logit_statistics`` and ``read_logit_statistics``
are the only code that writes and reads them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader

from wmss.config import RunConfig
from wmss.data import completion_collator, load_training_data
from wmss.entropy import dataset_entropies
from wmss.errors import WmssError
from wmss.heads import final_hidden_states, output_head, use_fused_head
from wmss.io import atomic_write_json, atomic_write_text, read_json
from wmss.losses import completion_positions, default_chunk_size
from wmss.models import check_compatible, load_model, load_tokenizer
from wmss.packing import use_padding_free
from wmss.reporting import markdown_table

MODEL_STATISTICS = {
    "target_logit": "target logit z[y]",
    "background_logit": "background logit (mean over k ≠ y)",
    "target_background_gap": "target − background",
    "logit_std": "logit std over the vocabulary",
    "max_logit": "max logit",
    "min_logit": "min logit",
    "l2_norm": "L2 norm ‖z‖",
    "centred_norm": "centred norm ‖z − mean(z)‖",
    "entropy": "entropy (nats)",
    "max_prob": "max probability",
    "target_prob": "target probability",
}
"""Per-model statistics (name -> label), each the mean over completion positions of a per-position value."""

PAIR_STATISTICS = {
    "hard_negative_share": "hard-negative share: k ≠ y with m_k(weak) < m_k(strong)",
    "theorem1_fraction": "positions where every m_k(weak) ≤ m_k(strong) (Theorem 1)",
}
"""Statistics of a (weak, strong) pair, with margins m_k(z) = z[y] − z[k]."""

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def sample_rows(num_rows: int, size: int, seed: int) -> list[int]:
    """``size`` of ``num_rows`` row numbers drawn without replacement (seeded), in increasing order."""
    if size >= num_rows:
        return list(range(num_rows))
    return sorted(np.random.default_rng(seed).choice(num_rows, size=size, replace=False).tolist())


def diagnostic_sample(dataset: Dataset, cfg: RunConfig) -> Dataset:
    """The seeded sample of ``wmss.diagnostic_examples`` training examples that diagnostics measure on."""
    return dataset.select(sample_rows(len(dataset), cfg.wmss.diagnostic_examples, cfg.seed))


# ---------------------------------------------------------------- per-position statistics


def position_statistics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every ``MODEL_STATISTICS`` value per position: ``(N, V)`` logits and ``(N,)`` targets -> ``(N,)``."""
    z = logits.float()
    vocab = z.shape[-1]
    target = z.gather(1, targets[:, None]).squeeze(1)
    total = z.sum(dim=-1)
    background = (total - target) / (vocab - 1)
    centred_norm = (z - (total / vocab)[:, None]).norm(dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    return {
        "target_logit": target,
        "background_logit": background,
        "target_background_gap": target - background,
        "logit_std": centred_norm / math.sqrt(vocab),
        "max_logit": z.amax(dim=-1),
        "min_logit": z.amin(dim=-1),
        "l2_norm": z.norm(dim=-1),
        "centred_norm": centred_norm,
        "entropy": -(logp.exp() * logp).sum(dim=-1),
        "max_prob": logp.amax(dim=-1).exp(),
        "target_prob": logp.gather(1, targets[:, None]).squeeze(1).exp(),
    }


def pair_statistics(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``PAIR_STATISTICS`` at each position (``(N,)`` each).

    With ``d = z_strong − z_weak``, ``m_k(z_strong) − m_k(z_weak) = d[y] − d[k]``: token k is a hard
    negative when ``d[k] < d[y]``, and Theorem 1's condition holds when ``max_{k≠y} d[k] ≤ d[y]``.
    """
    d = strong_logits.float() - weak_logits.float()
    d_target = d.gather(1, targets[:, None])
    hard = (d < d_target).sum(dim=-1)  # k = y never counts: d[y] < d[y] is false
    d.scatter_(1, targets[:, None], float("-inf"))
    return {
        "hard_negative_share": hard.float() / (d.shape[-1] - 1),
        "theorem1_fraction": (d.amax(dim=-1) <= d_target.squeeze(1)).float(),
    }


# ---------------------------------------------------------------- logits at completion positions


def completion_logit_chunks(
    models: list[nn.Module],
    dataset: Dataset,
    pad_token_id: int,
    batch_size: int = 8,
    fused: bool = True,
    chunk_size: int | None = None,
    padding_free: bool = False,
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """``([logits of each model], targets)`` for chunks of the completion-predicting positions of ``dataset``.

    Every model sees the same positions in the same order; logits are ``(n, V)`` float32 on the first
    model's device, at most ``chunk_size`` positions at a time (default ``default_chunk_size(V)``).
    With ``fused`` the models run without their output heads and only those positions are projected
    (``wmss.heads``); otherwise (or for a model the fused head cannot reproduce) each batch's full
    logits are computed and the positions taken from them. No gradient, eval mode. With
    ``padding_free`` each batch is flattened into one row (``wmss.packing``): the same positions, in
    the same order.
    """
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    fused = use_fused_head(models, fused, "diagnostics")
    collate = completion_collator(pad_token_id, use_padding_free(models, padding_free, "diagnostics"))
    device = next(models[0].parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    try:
        for batch in loader:
            rows, targets = [], None
            with torch.no_grad():
                for m in models:
                    own = next(m.parameters()).device
                    ids, labels = batch["input_ids"].to(own), batch["labels"].to(own)
                    mask, positions = (
                        None if batch.get(k) is None else batch[k].to(own)
                        for k in ("attention_mask", "position_ids")
                    )
                    if fused:
                        states = final_hidden_states(m, ids, mask, positions)
                    else:
                        states = m(
                            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
                        ).logits
                    r, targets = completion_positions(states, labels)
                    rows.append(r)
            targets = targets.to(device)
            vocab = output_head(models[0]).weight.shape[0] if fused else rows[0].shape[-1]
            chunk = chunk_size or default_chunk_size(vocab)
            for start in range(0, targets.numel(), chunk):
                with torch.no_grad():
                    logits = [
                        (output_head(m)(r[start : start + chunk]) if fused else r[start : start + chunk])
                        .float()
                        .to(device)
                        for m, r in zip(models, rows, strict=True)
                    ]
                yield logits, targets[start : start + chunk]
    finally:
        for m, mode in zip(models, was_training, strict=True):
            m.train(mode)


def logit_statistics(
    models: dict[str, nn.Module],
    dataset: Dataset,
    pad_token_id: int,
    pairs: list[tuple[str, str]] | tuple = (),
    batch_size: int = 8,
    fused: bool = True,
    chunk_size: int | None = None,
    padding_free: bool = False,
) -> dict[str, Any]:
    """``MODEL_STATISTICS`` of every model and ``PAIR_STATISTICS`` of every ``(weak, strong)`` name pair.

    Returns ``{"examples", "positions", "models": {name: {stat: mean}}, "pairs": {"weak vs strong":
    {stat: mean}}}``, means over all completion-predicting positions of ``dataset``.
    """
    names = list(models)
    for weak, strong in pairs:
        if weak not in models or strong not in models:
            raise ValueError(f"pair ({weak}, {strong}) names a model that is not among {names}.")
    sums: dict[str, dict[str, float]] = {n: dict.fromkeys(MODEL_STATISTICS, 0.0) for n in names}
    pair_sums = {f"{w} vs {s}": dict.fromkeys(PAIR_STATISTICS, 0.0) for w, s in pairs}
    positions = 0
    for logits, targets in completion_logit_chunks(
        [models[n] for n in names], dataset, pad_token_id, batch_size, fused, chunk_size, padding_free
    ):
        by_name = dict(zip(names, logits, strict=True))
        positions += targets.numel()
        for name, z in by_name.items():
            for key, values in position_statistics(z, targets).items():
                sums[name][key] += values.double().sum().item()
        for weak, strong in pairs:
            for key, values in pair_statistics(by_name[weak], by_name[strong], targets).items():
                pair_sums[f"{weak} vs {strong}"][key] += values.double().sum().item()
    if positions == 0:
        raise WmssError(
            f"the {len(dataset)} examples measured have no completion token, so no logit statistic "
            "is defined; check the data's completions."
        )
    return {
        "examples": len(dataset),
        "positions": positions,
        "models": {n: {k: v / positions for k, v in s.items()} for n, s in sums.items()},
        "pairs": {p: {k: v / positions for k, v in s.items()} for p, s in pair_sums.items()},
    }


# ---------------------------------------------------------------- saturation (the paper's premise)


def saturation_statistics(
    strong: nn.Module,
    dataset: Dataset,
    pad_token_id: int,
    weak: nn.Module | None = None,
    mix_lambda: float = 0.5,
    threshold: float = 0.99,
    batch_size: int = 8,
    fused: bool = True,
    padding_free: bool = False,
) -> dict[str, Any]:
    """How saturated SFT is on ``dataset``'s completion tokens, and (with ``weak``) what WD-JT gives back.

    A token is *saturated* when the model's probability of its target exceeds ``threshold``. The
    cross-entropy gradient w.r.t. the logits is ``p − e_y``; its L2 norm per token,
    ``√((1 − p_y)² + Σ_{k≠y} p_k²)``, measures how much the token still teaches. Returned (means over
    positions unless said): ``tokens``, ``saturated_share``, ``saturated_gradient_share`` (the saturated
    tokens' share of the summed gradient norms), ``loss``, ``target_prob``, ``entropy``, ``gradient_norm``.
    With ``weak``: the strong model's gradient under WD-JT, ``λ·(P_mix − e_y)`` with
    ``z_mix = λ·z_strong + (1−λ)·z_weak`` (Eq. 5-6), as ``wdjt_gradient_norm`` and
    ``wdjt_saturated_gradient_norm`` (mean over the saturated tokens, with ``saturated_gradient_norm``
    the SFT one beside it), and their ratio ``wdjt_over_sft_on_saturated``."""
    models = [strong] if weak is None else [strong, weak]
    sums: dict[str, float] = {}
    tokens = saturated = 0

    def add(key: str, values: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + values.double().sum().item()

    chunks = completion_logit_chunks(
        models, dataset, pad_token_id, batch_size, fused, padding_free=padding_free
    )
    for logits, targets in chunks:
        z = logits[0]
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        p_y = p.gather(1, targets[:, None]).squeeze(1)
        norm = ((1 - p_y) ** 2 + (p**2).sum(dim=-1) - p_y**2).clamp(min=0).sqrt()
        hot = p_y > threshold
        tokens += targets.numel()
        saturated += int(hot.sum())
        add("loss", -logp.gather(1, targets[:, None]).squeeze(1))
        add("target_prob", p_y)
        add("entropy", -(p * logp).sum(dim=-1))
        add("gradient_norm", norm)
        add("saturated_gradient_norm", norm[hot])
        if weak is not None:
            p_mix = torch.softmax(mix_lambda * z + (1 - mix_lambda) * logits[1], dim=-1)
            q_y = p_mix.gather(1, targets[:, None]).squeeze(1)
            wdjt = mix_lambda * ((1 - q_y) ** 2 + (p_mix**2).sum(dim=-1) - q_y**2).clamp(min=0).sqrt()
            add("wdjt_gradient_norm", wdjt)
            add("wdjt_saturated_gradient_norm", wdjt[hot])
    if tokens == 0:
        raise WmssError(f"the {len(dataset)} examples measured have no completion token.")
    out: dict[str, Any] = {
        "examples": len(dataset),
        "tokens": tokens,
        "threshold": threshold,
        "saturated_share": saturated / tokens,
        "saturated_gradient_share": sums["saturated_gradient_norm"] / sums["gradient_norm"]
        if sums["gradient_norm"] > 0
        else None,
    }
    out.update({k: sums[k] / tokens for k in ("loss", "target_prob", "entropy", "gradient_norm")})
    out["saturated_gradient_norm"] = sums["saturated_gradient_norm"] / saturated if saturated else None
    if weak is not None:
        out["mix_lambda"] = mix_lambda
        out["wdjt_gradient_norm"] = sums["wdjt_gradient_norm"] / tokens
        out["wdjt_saturated_gradient_norm"] = (
            sums["wdjt_saturated_gradient_norm"] / saturated if saturated else None
        )
        out["wdjt_over_sft_on_saturated"] = (
            sums["wdjt_saturated_gradient_norm"] / sums["saturated_gradient_norm"]
            if saturated and sums["saturated_gradient_norm"] > 0
            else None
        )
    return out


# ---------------------------------------------------------------- automatic λ (Appendix D)


def crossover_lambda(strong_norm: float, weak_norm: float) -> dict[str, float]:
    """Gradient-share crossover: ``a = (‖z̃_strong‖/‖z̃_weak‖)²``, ``λ = 1/(1+√a)``.

    The paper's numbers (‖z̃‖ 1240.10 strong, 1191.33 weak) give a ≈ 1.08 and λ ≈ 0.49.
    """
    if not (math.isfinite(strong_norm) and math.isfinite(weak_norm)) or min(strong_norm, weak_norm) <= 0:
        raise WmssError(
            f"cannot set λ automatically: the centred logit norms are {strong_norm} (strong) and "
            f"{weak_norm} (weak); both must be finite and > 0 (a model with constant logits has norm 0). "
            "Set wmss.mix_lambda to a number instead."
        )
    a = (strong_norm / weak_norm) ** 2
    return {
        "strong_centred_norm": strong_norm,
        "weak_centred_norm": weak_norm,
        "a": a,
        "mix_lambda": 1.0 / (1.0 + math.sqrt(a)),
    }


def measure_auto_lambda(
    weak: nn.Module,
    strong: nn.Module,
    sample: Dataset,
    pad_token_id: int,
    batch_size: int = 8,
    fused: bool = True,
    padding_free: bool = False,
) -> dict[str, Any]:
    """``crossover_lambda`` from the two models' mean centred logit norms on ``sample``."""
    pair = {"weak": weak, "strong": strong}
    stats = logit_statistics(pair, sample, pad_token_id, (), batch_size, fused, padding_free=padding_free)
    found = crossover_lambda(
        stats["models"]["strong"]["centred_norm"], stats["models"]["weak"]["centred_norm"]
    )
    return {**found, "examples": stats["examples"], "positions": stats["positions"]}


# ---------------------------------------------------------------- weak–strong separation


def entropy_separation(
    entropy_weak: np.ndarray, entropy_strong: np.ndarray, min_gap: float = 0.05
) -> dict[str, Any]:
    """Distribution of ``ΔH = H_strong − H_weak`` over the examples where both are finite.

    ``too_close`` is true when |mean ΔH| < ``min_gap`` (nats).
    """
    delta = np.asarray(entropy_strong, dtype=np.float64) - np.asarray(entropy_weak, dtype=np.float64)
    delta = delta[np.isfinite(delta)]
    if delta.size == 0:
        return {"examples": 0, "mean": None, "min_entropy_gap": min_gap, "too_close": None}
    mean = float(delta.mean())
    return {
        "examples": int(delta.size),
        "mean": mean,
        "std": float(delta.std()),
        "quantiles": {f"q{round(100 * q):02d}": float(np.quantile(delta, q)) for q in QUANTILES},
        "share_negative": float((delta < 0).mean()),
        "share_positive": float((delta > 0).mean()),
        "min_entropy_gap": min_gap,
        "too_close": bool(abs(mean) < min_gap),
    }


def separation_warning(separation: dict[str, Any], what: str = "the weak and strong models") -> str | None:
    """A warning, with the numbers, when ``separation`` says the pair is too close; else None."""
    if not separation.get("too_close"):
        return None
    return (
        f"{what} are barely separated: mean ΔH = H_strong − H_weak = {separation['mean']:+.4f} nats over "
        f"{separation['examples']} examples, |mean ΔH| < wmss.min_entropy_gap = "
        f"{separation['min_entropy_gap']}. Mixing their logits adds little signal; consider a weaker "
        "checkpoint (`wmss pick-weak` ranks candidates)."
    )


def pick_weak(strong_path: str, weak_paths: list[str], dataset: Dataset, cfg: RunConfig) -> dict[str, Any]:
    """Rank candidate weak checkpoints by their entropy separation from ``strong_path``.

    Entropies (Eq. 7) on the seeded sample ``diagnostic_sample(dataset, cfg)``; candidates ordered by
    |mean ΔH|, largest first. Every candidate must share the strong model's tokenizer and vocabulary.
    """
    sample = diagnostic_sample(dataset, cfg)
    strong_tokenizer = load_tokenizer(strong_path)
    pad = strong_tokenizer.pad_token_id

    def entropies(path: str, what: str) -> np.ndarray:
        model = load_model(path, **cfg.model_args.load_kwargs())
        values = dataset_entropies(
            model, sample, pad, cfg.wmss.entropy_batch_size, desc=what, fused=cfg.train.fused_loss,
            padding_free=cfg.train.padding_free,
        )  # fmt: skip
        del model
        return values

    h_strong = entropies(strong_path, "entropy strong")
    candidates = []
    for path in weak_paths:
        check_compatible(path, strong_path, load_tokenizer(path), strong_tokenizer)
        h_weak = entropies(path, f"entropy {path}")
        separation = entropy_separation(h_weak, h_strong, cfg.wmss.min_entropy_gap)
        candidates.append(
            {
                "weak": path,
                "mean_entropy_weak": float(np.nanmean(h_weak)),
                "separation": separation,
            }
        )
    candidates.sort(key=lambda c: -abs(c["separation"]["mean"] or 0.0))
    for rank, c in enumerate(candidates, start=1):
        c["rank"] = rank
    return {
        "strong": strong_path,
        "mean_entropy_strong": float(np.nanmean(h_strong)),
        "examples": len(sample),
        "seed": cfg.seed,
        "min_entropy_gap": cfg.wmss.min_entropy_gap,
        "candidates": candidates,
    }


def pick_weak_markdown(result: dict[str, Any]) -> str:
    """The ranking of ``pick_weak`` as a Markdown table."""
    header = ["rank", "weak", "mean H_weak", "mean ΔH", "median ΔH", "ΔH 5%–95%", "share ΔH<0", "separation"]
    rows = []
    for c in result["candidates"]:
        s = c["separation"]
        if s["mean"] is None:
            rows.append([str(c["rank"]), c["weak"], "–", "–", "–", "–", "–", "no finite entropy"])
            continue
        q = s["quantiles"]
        verdict = f"too close (< {s['min_entropy_gap']})" if s["too_close"] else "ok"
        rows.append(
            [
                str(c["rank"]),
                c["weak"],
                f"{c['mean_entropy_weak']:.4f}",
                f"{s['mean']:+.4f}",
                f"{q['q50']:+.4f}",
                f"{q['q05']:+.4f} … {q['q95']:+.4f}",
                f"{s['share_negative']:.0%}",
                verdict,
            ]
        )
    return (
        f"strong: {result['strong']} (mean H {result['mean_entropy_strong']:.4f} nats); "
        f"{result['examples']} examples, seed {result['seed']}\n\n" + markdown_table(header, rows) + "\n"
    )


# ---------------------------------------------------------------- weak / strong before / strong after


def diagnose_logits(paths: dict[str, str], dataset: Dataset, cfg: RunConfig) -> dict[str, Any]:
    """Logit statistics of the models at ``paths`` (``weak``, ``strong_before``, ``strong_after``; any
    subset that includes ``weak``) on the seeded sample of ``dataset``.

    Pairs: ``weak`` with each strong model; for each pair also the crossover λ its norms imply.
    """
    if "weak" not in paths or len(paths) < 2:
        raise WmssError("logit diagnostics need the weak model and at least one strong model.")
    tokenizers = {name: load_tokenizer(path) for name, path in paths.items()}
    for name, path in paths.items():
        if name != "weak":
            check_compatible(paths["weak"], path, tokenizers["weak"], tokenizers[name])
    sample = diagnostic_sample(dataset, cfg)
    models = {name: load_model(path, **cfg.model_args.load_kwargs()) for name, path in paths.items()}
    strong = [n for n in paths if n != "weak"]
    stats = logit_statistics(
        models,
        sample,
        tokenizers["weak"].pad_token_id,
        [("weak", s) for s in strong],
        cfg.wmss.entropy_batch_size,
        cfg.train.fused_loss,
        padding_free=cfg.train.padding_free,
    )
    norms = {n: s["centred_norm"] for n, s in stats["models"].items()}
    stats["crossover"] = {
        f"weak vs {s}": crossover_lambda(norms[s], norms["weak"])
        for s in strong
        if min(norms[s], norms["weak"]) > 0
    }
    return {"paths": paths, "seed": cfg.seed, **stats}


def logit_statistics_markdown(result: dict[str, Any]) -> str:
    """``diagnose_logits``'s result as Markdown tables (statistics × models; pairs)."""
    names = list(result["models"])
    text = (
        f"Logit statistics at {result['positions']} completion positions of {result['examples']} "
        "training examples (means over positions).\n\n"
    )
    models = result["models"]
    rows = [[label, *[f"{models[n][key]:.4f}" for n in names]] for key, label in MODEL_STATISTICS.items()]
    text += markdown_table(["statistic", *names], rows)
    if result.get("pairs"):
        pairs = list(result["pairs"])
        stats = result["pairs"]
        rows = [[label, *[f"{stats[p][key]:.4f}" for p in pairs]] for key, label in PAIR_STATISTICS.items()]
        crossover = result.get("crossover", {})
        if crossover:
            rows.append(
                [
                    "crossover λ = 1/(1+√a)",
                    *[f"{crossover[p]['mix_lambda']:.4f}" if p in crossover else "–" for p in pairs],
                ]
            )
        text += "\n\n" + markdown_table(["pair statistic", *pairs], rows)
    return text + "\n"


# ---------------------------------------------------------------- logits.json and logits.md


def logit_statistics_path(out_dir: str | Path) -> Path:
    """Where ``write_logit_statistics`` puts ``logits.json`` in ``out_dir``."""
    return Path(out_dir) / "logits.json"


def write_logit_statistics(result: dict[str, Any], out_dir: str | Path) -> Path:
    """``logits.json`` and ``logits.md`` in ``out_dir``; returns the JSON's path."""
    out = Path(out_dir)
    atomic_write_json(logit_statistics_path(out), result)
    lines = [f"- {name}: {path}" for name, path in result["paths"].items()]
    atomic_write_text(out / "logits.md", "\n".join(lines) + "\n\n" + logit_statistics_markdown(result))
    return logit_statistics_path(out)


def read_logit_statistics(out_dir: str | Path) -> dict[str, Any]:
    """The ``diagnose_logits`` result that ``write_logit_statistics`` wrote to ``out_dir``."""
    return read_json(logit_statistics_path(out_dir))


def diagnose_to_files(cfg: RunConfig, paths: dict[str, str], out_dir: str | Path) -> dict[str, Any]:
    """``diagnose_logits`` of the models at ``paths`` on ``cfg``'s training data; writes ``logits.json``
    and ``logits.md`` to ``out_dir``."""
    dataset, _ = load_training_data(cfg.data, load_tokenizer(paths["weak"]), cfg.train.max_length)
    result = diagnose_logits(paths, dataset, cfg)
    write_logit_statistics(result, out_dir)
    return result

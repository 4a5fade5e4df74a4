"""Eq. 7: token-averaged predictive entropy of a model on each training example.

``H(M; x_i) = (1/|T_i|) Σ_{t∈T_i} −Σ_v P_M(v|c_{i,t}) log P_M(v|c_{i,t})``, over the positions that
predict completion tokens only, without gradient and in eval mode. An example with no completion
token has no defined entropy: it gets NaN (and selection gives it weight 0).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from wmss import distributed
from wmss.data import IGNORE_INDEX, completion_collator
from wmss.errors import DataError
from wmss.heads import final_hidden_states, output_head, use_fused_head
from wmss.io import atomic_write_jsonl, read_jsonl
from wmss.losses import completion_positions, default_chunk_size
from wmss.packing import example_index, packed_forward_kwargs, use_padding_free


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along the last axis, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def sequence_entropy(
    logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example mean entropy over the positions that predict a completion token (NaN if none).

    With ``position_ids``, ``logits`` is one padding-free row of several examples (``wmss.packing``);
    one value per example, in their order."""
    entropy = token_entropy(logits[:, :-1, :])
    if position_ids is not None:
        keep = labels[:, 1:] != IGNORE_INDEX
        return _per_example_mean(entropy[keep], example_index(position_ids)[:, 1:][keep], position_ids)
    mask = (labels[:, 1:] != IGNORE_INDEX).float()
    count = mask.sum(dim=1)
    total = (entropy * mask).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _per_example_mean(
    values: torch.Tensor, example: torch.Tensor, position_ids: torch.Tensor
) -> torch.Tensor:
    """Mean of ``values`` per example of a padding-free row (``example``: each value's), NaN if none."""
    examples = int((position_ids == 0).sum())
    count = torch.bincount(example, minlength=examples)
    total = torch.zeros(examples, dtype=torch.float32, device=values.device).index_add_(0, example, values)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


@torch.no_grad()
def chunked_sequence_entropy(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    chunk_size: int | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sequence_entropy(head(hidden), labels)`` without the tokens×vocabulary logits tensor.

    ``hidden`` is ``(batch, seq, hidden)``, what goes into the model's output ``head`` (see
    ``wmss.heads.final_hidden_states``). Only the positions that predict a completion token are
    projected, ``chunk_size`` of them at a time (default: ``default_chunk_size(vocab)``), each chunk's
    logits upcast to float32. Per example: the mean entropy over those positions, NaN if it has none.
    Computed without gradient. With ``position_ids``, ``hidden`` is one padding-free row of several
    examples (``wmss.packing``), split back into one value per example.
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    rows, _ = completion_positions(hidden, labels)
    example = keep.nonzero()[:, 0]  # the example each row belongs to
    chunk = chunk_size or default_chunk_size(head.weight.shape[0])
    entropy = torch.empty(rows.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, rows.shape[0], chunk):
        # H = log Σ_v e_v − Σ_v e_v·z_v / Σ_v e_v with z = logits − max and e = exp(z): one exp per
        # logit, and every term is small where the distribution is peaked, so nothing cancels badly.
        z = head(rows[start : start + chunk]).float()
        z = z.sub_(z.amax(dim=-1, keepdim=True))
        e = torch.exp(z)
        mass = e.sum(dim=-1)
        entropy[start : start + chunk] = mass.log() - torch.bmm(e[:, None], z[:, :, None]).view(-1) / mass
    if position_ids is not None:
        return _per_example_mean(entropy, example_index(position_ids)[:, 1:][keep], position_ids)
    count = keep.sum(dim=1)
    total = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device).index_add_(
        0, example, entropy
    )
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


@torch.inference_mode()
def dataset_entropies(
    model: torch.nn.Module,
    dataset: Dataset,
    pad_token_id: int,
    batch_size: int = 8,
    desc: str = "entropy",
    fused: bool = True,
    progress: str | Path | None = None,
    padding_free: bool = False,
) -> np.ndarray:
    """Eq. 7 for every row of ``dataset`` (in row order), as float64, on every process.

    With ``progress`` (a file path), each process appends its finished batches to its own file beside
    it, so an interrupted pass resumes by batch, to the same values; the files are removed at the end.

    ``fused`` (the default) runs the model without its output head and projects only the
    completion-predicting positions, a chunk at a time (``chunked_sequence_entropy``); models whose
    logits the fused head cannot reproduce fall back to full logits (``wmss.heads``).

    Rows are sorted by length and cut into batches of ``batch_size`` (little padding); with
    ``padding_free`` each batch is flattened into one row instead (``wmss.packing``; the same values to
    float rounding). Under several processes (``wmss.distributed``) process r takes batches r, r + N,
    r + 2N, …: every example is computed exactly once, in the same batch as by one process, so the
    merged values equal a one-process pass to the bit; they are then gathered to every process.
    """
    was_training = model.training
    model.eval()
    fused = use_fused_head([model], fused, desc)
    padding_free = use_padding_free([model], padding_free, desc)
    device = next(model.parameters()).device
    lengths = np.array([len(ids) for ids in dataset["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    # Only the globally last batch can be short, and it is the last of its process's share, so cutting
    # the share into batch_size rows again gives back exactly these batches.
    mine = batches[distributed.rank() :: distributed.world_size()]
    rows = np.concatenate(mine) if mine else np.empty(0, dtype=np.int64)
    collate = completion_collator(pad_token_id, padding_free)
    settings = {
        "rows": len(dataset),
        "batch_size": batch_size,
        "fused": fused,
        "processes": distributed.world_size(),
        **({"padding_free": True} if padding_free else {}),
    }
    own = (
        None
        if progress is None
        else Path(progress).with_name(f"{Path(progress).name}.rank{distributed.rank()}")
    )
    done = _read_progress(own, settings)
    values = []
    with contextlib.ExitStack() as stack:
        sink = None
        if own is not None:
            own.parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(open(own, "a", encoding="utf-8"))
            if not done:
                sink.write(json.dumps({"settings": settings}) + "\n")
        for batch_rows in tqdm(mine, desc=desc, unit="batch", leave=False, disable=not distributed.is_main()):
            key = int(batch_rows[0])
            if key in done:
                values.append(torch.tensor(done[key], dtype=torch.float64))
                continue
            batch = collate([dataset[int(i)] for i in batch_rows])
            batch = {k: v.to(device) for k, v in batch.items()}
            mask, positions = batch.get("attention_mask"), batch.get("position_ids")
            if fused:
                hidden = final_hidden_states(model, batch["input_ids"], mask, positions)
                entropy = chunked_sequence_entropy(
                    hidden, output_head(model), batch["labels"], position_ids=positions
                )
            else:
                packed = packed_forward_kwargs(positions)
                logits = model(input_ids=batch["input_ids"], attention_mask=mask, **packed).logits
                entropy = sequence_entropy(logits, batch["labels"], positions)
            values.append(entropy.double().cpu())
            if sink is not None:
                sink.write(json.dumps({"first": key, "values": values[-1].tolist()}) + "\n")
                sink.flush()
    model.train(was_training)
    mine_values = torch.cat(values).numpy() if values else np.empty(0)
    shares = distributed.gather((rows, mine_values))
    all_rows = np.concatenate([r for r, _ in shares]).astype(np.int64)
    if not np.array_equal(np.sort(all_rows), np.arange(len(dataset))):  # each row exactly once
        raise RuntimeError(
            f"{desc}: the processes' shares do not cover the {len(dataset)} rows exactly once."
        )
    out = np.empty(len(dataset), dtype=np.float64)
    out[all_rows] = np.concatenate([v for _, v in shares])
    if own is not None:
        own.unlink(missing_ok=True)
    return out


def _read_progress(path: Path | None, settings: dict) -> dict[int, list[float]]:
    """Batches finished before an interruption (keyed by their first row), if made with these settings."""
    if path is None or not path.is_file():
        return {}
    bad: list[int] = []
    lines = read_jsonl(path, bad)  # a line cut by the interruption: that batch is computed again
    if not lines or lines[0].get("settings") != settings:
        path.unlink()
        return {}
    done = {int(r["first"]): r["values"] for r in lines[1:] if "first" in r}
    if bad:  # drop the cut line, so that what is appended next starts on a line of its own
        atomic_write_jsonl(path, [lines[0], *({"first": k, "values": v} for k, v in done.items())])
    return done


def write_entropy_file(path: str | Path, idx: list, values: np.ndarray) -> None:
    """JSONL, one ``{"idx", "entropy"}`` line per example (``null`` where the entropy is NaN)."""
    atomic_write_jsonl(
        path,
        ({"idx": i, "entropy": None if np.isnan(h) else float(h)} for i, h in zip(idx, values, strict=True)),
    )


def read_entropy_file(path: str | Path) -> tuple[list, np.ndarray]:
    """``(idx, entropies)`` from a file written by ``write_entropy_file`` (``wmss entropy``)."""
    if not Path(path).is_file():
        raise DataError(f"entropy file {path} does not exist; write it with `wmss entropy`.")
    rows = read_jsonl(path)
    try:
        values = [np.nan if r["entropy"] is None else float(r["entropy"]) for r in rows]
        return [r["idx"] for r in rows], np.array(values, dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path} is not an entropy file (JSON lines with idx and entropy, as `wmss entropy` writes): "
            f"{type(err).__name__}: {err}."
        ) from None

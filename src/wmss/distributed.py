"""Running wmss under several processes (``accelerate launch``, ``torchrun``): ranks, barriers, sharding.

Every process runs the same code (SPMD). Training phases are data-parallel through transformers'
``Trainer`` (DDP, or FSDP / DeepSpeed from an accelerate config); the helpers here cover the rest:

- ``init`` joins the process group before the first barrier, the way ``Trainer`` would (accelerate's
  ``PartialState``: NCCL on GPUs, gloo on the CPU), so that the pipeline can synchronise outside training;
- ``is_main`` / ``barrier`` / ``on_main``: only the main process writes run files; the others wait and
  read them back;
- ``gather`` and ``check_same`` merge per-process results and prove that values every process computed
  for itself (e.g. the WD-DS selection) are identical.

Without a launcher (one process) every helper is a no-op: ``world_size() == 1``, ``is_main()`` is true.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from wmss.errors import WmssError

T = TypeVar("T")

MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    for name in ("WORLD_SIZE", *MPI_SIZE_VARIABLES):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0))))


def _check_launcher() -> None:
    """Refuse a run that asked ``accelerate launch`` for several processes but got one.

    accelerate starts CPU processes (``--cpu``, ``use_cpu: true``, ``distributed_type: MULTI_CPU``, or
    no GPU at all) only through MPI (``--mpirun_hostfile``); otherwise its simple launcher runs the
    script once, with ``MASTER_ADDR`` set but no ``WORLD_SIZE``. Training would then silently use one
    process and half the global batch.
    """
    if (
        "ACCELERATE_USE_CPU" in os.environ  # set by accelerate's simple (non-torchrun) launcher
        and os.environ.get("MASTER_ADDR")  # which sets it only for --num_processes > 1
        and launched_world_size() == 1
        and not any(os.environ.get(v) for v in MPI_SIZE_VARIABLES)
    ):
        raise WmssError(
            "`accelerate launch` was asked for more than one process but started only this one: on the "
            "CPU (--cpu, use_cpu, MULTI_CPU, or a machine without a GPU) accelerate starts several "
            "processes only through MPI. Launch with accelerate's torchrun launcher instead: "
            "`accelerate launch --multi_gpu --num_processes N -m wmss run ...` or `accelerate launch "
            "--config_file configs/accelerate/cpu-2proc.yaml -m wmss run ...` (on a machine without "
            "CUDA each process runs on the CPU with the gloo backend), or `torchrun --nproc_per_node N "
            "-m wmss run ...`. (If MASTER_ADDR is set in your shell for another reason, unset it to run "
            "one process.)"
        )


def init(timeout_s: float = 1800) -> None:
    """Join the process group when launched with several processes (a no-op otherwise, or if joined).

    Uses accelerate's ``PartialState`` with the settings ``Trainer`` uses (the CPU and gloo when there
    is no CUDA device), so the Trainers of the training phases reuse this process group. ``timeout_s``:
    how long a process waits at a barrier or collective before failing (e.g. while the main process
    alone generates DPO pairs).
    """
    _check_launcher()
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    for name, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(name, "").lower() == "true" and device().type == "cpu":
            raise WmssError(
                f"the accelerate config asks for {what}, which accelerate runs on GPUs only: on the CPU "
                "it would silently train plain DDP. Use configs/accelerate/cpu-2proc.yaml on the CPU."
            )
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "1",
        "true",
    )
    PartialState(cpu=use_cpu, timeout=timedelta(seconds=timeout_s))
    if not dist.is_initialized():  # pragma: no cover - accelerate did not recognise the launcher
        raise WmssError(
            f"launched as {launched_world_size()} processes, but no process group could be set up; "
            "launch with `torchrun` or `accelerate launch --multi_gpu`."
        )


def shutdown() -> None:
    """Leave the process group, if this process joined one (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this is the process that writes run files (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def device() -> torch.device:
    """This process's device: its GPU (accelerate sets ``LOCAL_RANK``'s) when there is one, else the CPU."""
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather(value: T) -> list[T]:
    """Every process's ``value`` (any picklable object), in rank order, on every process."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def on_main(work: Callable[[], T]) -> T:
    """Run ``work`` on the main process only and hand its result to every process."""
    if world_size() == 1:
        return work()
    box = [work() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (e.g. to fill a download or conversion cache), then the rest."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def digest(*arrays: Any) -> str:
    """A short hash of arrays' bytes (numpy or torch), to compare values across processes."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        h.update(memoryview(a.tobytes()))
    return h.hexdigest()[:16]


def check_same(what: str, value: str) -> None:
    """Raise unless every process computed the same ``value`` (e.g. a ``digest``) for ``what``."""
    values = gather(value)
    if len(set(values)) > 1:
        per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise WmssError(
            f"{what} differs between processes ({per_rank}); "
            "every process must compute it from the same inputs. Please report this as a bug."
        )

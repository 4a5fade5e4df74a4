"""wmss against TRL's SFTTrainer: time per step and per epoch, peak memory and first-step loss, with
padding-free batches on both sides (and padded batches as further rows), plus a WD-JT step.

Contenders, each a real ``Trainer.train()`` as a user runs it (its data loader, collator, loss,
clipping to 1.0, AdamW, scheduler and logging):
  wmss sft    ``wmss.trainers.train_sft`` (what ``wmss run method=sft`` trains with): completion-only
              loss, fused loss head, ``train.padding_free`` on or off;
  trl sft     TRL's ``SFTTrainer`` with ``completion_only_loss=True`` and ``padding_free`` on or off
              (its fused LM head is its default), given the model object and the tokenizer;
  wmss wd-jt  ``wmss.trainers.train_joint``: weak and strong model both trained (λ = 0.5).
All get the same model (``--model``, float32 unless ``--dtype``), the same examples in the same order
(GSM8K or MAWPS from ``--data-dir``, tokenised once by wmss with the chat template, longer than
``--max-length`` dropped; TRL receives them as ``input_ids`` + ``completion_mask``), batch ``--batch``,
learning rate ``--lr`` (constant, no warm-up), no weight decay, no activation checkpointing, no bf16.

Timing: the contenders' training runs are interleaved in one process, one step each in turn, the
order rotating every round: each trainer runs in its own thread, and a turn-taking lock lets exactly
one of them run at a time, from one ``on_step_begin`` to its next (so a step's time covers collating
the next batch, forward, backward, clipping, the optimizer and scheduler steps and logging). The first
``--warmup`` steps are not timed; the median of the next ``--steps`` is reported, and the time per
epoch is it times the steps of one pass over the whole data set. Each padding mode is one such
interleaved session (padding-free first, then padded).

Same work: every contender starts from the same weights, so their first logged loss (step 1,
``logging_first_step``) is that of the same batch and weights; they are printed with the largest
difference between wmss and TRL (WD-JT's too: with weak = strong, Eq. 5's mixed logits equal the
strong model's).

Memory: each contender once more in a fresh subprocess (``--memory-steps`` steps, the model loaded
once, not copied): its peak resident set size (``VmHWM``) and that peak minus the resident size
just before training (the model loaded). A CPU allocator keeps no peak statistics of its own.

TRL is not a wmss dependency: install it into the benchmark's environment (benchmarks/requirements.txt).

Usage: python benchmarks/trl_sft.py [--data gsm8k,mawps] [--modes padding-free,padded] [--batch 8]
       [--steps 10] [--warmup 2] [--memory-steps 3] [--lr 1e-5] [--max-length 1024] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import device, print_header
from padding_free import read_rows
from transformers import TrainerCallback

from wmss.config import TrainConfig
from wmss.data import IGNORE_INDEX, tokenize_examples
from wmss.models import load_model, load_tokenizer, resolve_model

CONTENDERS = ("wmss sft", "trl sft", "wmss wd-jt")
MODES = ("padding-free", "padded")
MIX_LAMBDA = 0.5


def release_freed_memory() -> None:
    """Give memory freed by this process back to the system (glibc keeps it in each thread's arena):
    several trainers' threads would otherwise hold the peak of each at once."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def one_malloc_arena() -> None:
    """glibc: every thread allocates from one arena (``mallopt(M_ARENA_MAX, 1)``), before any trainer
    thread starts; only one runs at a time, so none waits on the arena's lock, and memory one trainer
    freed is reused by the next instead of each thread's arena keeping its own peak."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    """In a memory subprocess: end when the benchmark ends (Linux ``PR_SET_PDEATHSIG``, SIGTERM)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, 15)
    except (OSError, AttributeError):
        pass


class TurnTaking:
    """One thread at a time, in the order of ``turns`` (each entry a contender's name)."""

    def __init__(self, turns: list[str]):
        self.turns, self.at = turns, 0
        self.failed: BaseException | None = None
        self._cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.failed is not None or self.turns[self.at] == name)
            if self.failed is not None:
                raise RuntimeError(f"{name}: stopped, another contender failed") from self.failed

    def done(self, name: str) -> None:
        with self._cond:
            if self.turns[self.at] != name:
                raise RuntimeError(f"{name} ended a turn that was {self.turns[self.at]}'s")
            self.at += 1
            self._cond.notify_all()

    def fail(self, err: BaseException) -> None:
        with self._cond:
            self.failed = self.failed or err  # the first failure; the others follow from it
            self._cond.notify_all()


@dataclass
class Record:
    """What one contender's run leaves: each step's seconds (from one step's start to the next's) and
    the loss Trainer logged at step 1."""

    step_seconds: list[float] = field(default_factory=list)
    first_loss: float | None = None


class Turns(TrainerCallback):
    """Ends this contender's turn at each step's start, waits for the next, and times the steps."""

    def __init__(self, turns: TurnTaking, name: str, record: Record):
        self.turns, self.name, self.record = turns, name, record
        self.start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is not None:
            self.record.step_seconds.append(time.perf_counter() - self.start)
        release_freed_memory()  # untimed
        self.turns.done(self.name)
        self.turns.wait(self.name)
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 1 and logs and "loss" in logs:
            self.record.first_loss = float(logs["loss"])


@dataclass
class Setup:
    batch: int
    lr: float
    max_length: int
    seed: int


def wmss_train_config(setup: Setup, padding_free: bool) -> TrainConfig:
    """wmss's ``train`` section for the benchmark: the defaults, but for what both sides must share."""
    return TrainConfig(
        per_device_batch_size=setup.batch,
        learning_rate=setup.lr,
        max_length=setup.max_length,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        padding_free=padding_free,
        # no checkpoint (Trainer would save one after the last step), as TRL's save_strategy="no" below
        args={
            "save_strategy": "no",
            "train_sampling_strategy": "sequential",
            "logging_first_step": True,
            "disable_tqdm": True,
        },
    )


def run_wmss_sft(models, tokenizer, examples, setup, padding_free, callbacks, workdir) -> None:
    from datasets import Dataset

    from wmss.trainers import PhaseTraining, train_sft

    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    where = PhaseTraining(checkpoint_dir=workdir, seed=setup.seed, callbacks=callbacks, phase="sft")
    train_sft(models(), tokenizer, Dataset.from_list(rows), wmss_train_config(setup, padding_free), 1, where)


def run_wmss_wdjt(models, tokenizer, examples, setup, padding_free, callbacks, workdir) -> None:
    from datasets import Dataset

    from wmss.trainers import PhaseTraining, train_joint

    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    where = PhaseTraining(checkpoint_dir=workdir, seed=setup.seed, callbacks=callbacks, phase="wdjt-1")
    strong, weak = models(), models()
    train_cfg = wmss_train_config(setup, padding_free)
    train_joint(weak, strong, tokenizer, Dataset.from_list(rows), train_cfg, 1, MIX_LAMBDA, False, where)


def run_trl_sft(models, tokenizer, examples, setup, padding_free, callbacks, workdir) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [
        {"input_ids": e["input_ids"], "completion_mask": [int(t != IGNORE_INDEX) for t in e["labels"]]}
        for e in examples
    ]
    args = SFTConfig(
        output_dir=str(workdir),
        per_device_train_batch_size=setup.batch,
        learning_rate=setup.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_train_epochs=1,
        bf16=False,
        gradient_checkpointing=False,
        padding_free=padding_free,
        completion_only_loss=True,
        max_length=None if padding_free else setup.max_length,  # TRL: padding-free without packing takes None
        save_strategy="no",
        logging_steps=10,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        seed=setup.seed,
        data_seed=setup.seed,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=models(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()


RUNNERS: dict[str, Callable] = {"wmss sft": run_wmss_sft, "trl sft": run_trl_sft, "wmss wd-jt": run_wmss_wdjt}


def interleaved(
    contenders: list[str], models, tokenizer, examples: list[dict], setup: Setup, padding_free: bool
) -> dict[str, Record]:
    """Train every contender on ``examples`` (one pass, in order), one step at a time each, in rotating
    order. ``models()`` gives a model to train (called once per model a contender trains)."""
    steps = len(examples) // setup.batch
    if steps * setup.batch != len(examples):
        raise ValueError(f"{len(examples)} examples do not fill batches of {setup.batch}")
    turns = list(contenders)  # each contender's first turn: building its trainer, up to step 1
    for r in range(steps):
        k = r % len(contenders)
        turns += contenders[k:] + contenders[:k]
    taking = TurnTaking(turns)
    records = {name: Record() for name in contenders}

    def work(name: str, workdir: str) -> None:
        try:
            taking.wait(name)
            callbacks = [Turns(taking, name, records[name])]
            RUNNERS[name](models, tokenizer, examples, setup, padding_free, callbacks, Path(workdir))
            taking.done(name)  # the last step's turn: not timed (it ends with the end of training)
        except BaseException as err:
            taking.fail(err)

    with tempfile.TemporaryDirectory(prefix="trl_sft_") as tmp:
        threads = [
            threading.Thread(target=work, args=(name, f"{tmp}/{i}"), name=name)
            for i, name in enumerate(contenders)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    gc.collect()  # the contenders' models and optimizer states
    release_freed_memory()
    if taking.failed is not None:
        raise RuntimeError(f"a contender failed: {taking.failed}") from taking.failed
    return records


def tiny_model(vocab_size: int) -> torch.nn.Module:
    """For ``--quick``: a 2-layer Llama built from its config, the same in every process."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return AutoModelForCausalLM.from_config(config)


def load_base(args: argparse.Namespace, tokenizer) -> torch.nn.Module:
    if args.quick:
        return tiny_model(len(tokenizer)).to(device())
    return load_model(resolve_model(args.model), args.dtype, args.attn).to(device())


def load_examples(args: argparse.Namespace, data: str, tokenizer, steps: int) -> tuple[list[dict], int]:
    """The first ``steps`` batches of examples in a seeded random order (``--seed``), and the size of
    the whole data set."""
    rows, data_cfg = read_rows(data, args.data_dir)
    dataset, _ = tokenize_examples(rows[: args.limit], tokenizer, data_cfg, args.max_length, source=data)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed)).tolist()
    needed = steps * args.batch
    if needed > len(dataset):
        raise SystemExit(f"{data}: {needed} examples needed for the steps asked, {len(dataset)} there.")
    return [dataset[i] for i in order[:needed]], len(dataset)


def _status_bytes(key: str) -> int:
    """A size from /proc/self/status (``VmRSS``: resident now; ``VmHWM``: the peak resident size of this
    process's memory since it started, unlike ``ru_maxrss``, which a child inherits from its parent)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024  # kB


def measure_memory(args: argparse.Namespace) -> dict:
    """Subprocess mode (``--memory-of``): one contender alone on the examples of ``--examples`` (the
    first ``--memory-steps`` batches of the timed run); its peak RSS and that peak minus the RSS with
    the model loaded, before training."""
    tokenizer = load_tokenizer(resolve_model(args.model))
    examples = json.loads(args.examples.read_text())
    base = load_base(args, tokenizer)
    given = []

    def models() -> torch.nn.Module:  # the loaded model itself first, a copy for WD-JT's second
        given.append(base if not given else copy.deepcopy(base))
        return given[-1]

    setup = Setup(args.batch, args.lr, args.max_length, args.seed)
    before = _status_bytes("VmRSS")
    with contextlib.redirect_stdout(sys.stderr):
        interleaved([args.memory_of], models, tokenizer, examples, setup, args.mode == "padding-free")
    return {"peak_bytes": _status_bytes("VmHWM"), "before_bytes": before}


def memory_in_subprocess(args: argparse.Namespace, contender: str, mode: str, examples: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--memory-of",
        contender,
        "--mode",
        mode,
        "--examples",
        str(examples),
    ]
    command += ["--model", args.model, "--dtype", args.dtype, "--attn", args.attn]
    command += ["--batch", str(args.batch), "--lr", str(args.lr), "--max-length", str(args.max_length)]
    command += ["--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_die_with_parent)
    if done.returncode != 0:
        raise SystemExit(f"memory run of {contender} ({mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report_data(args: argparse.Namespace, data: str, tokenizer, base) -> None:
    examples, size = load_examples(
        args, data, tokenizer, max(args.warmup + args.steps + 1, args.memory_steps)
    )
    steps_per_epoch = math.ceil(size / args.batch)
    setup = Setup(args.batch, args.lr, args.max_length, args.seed)
    print(
        f"\n## {data}: {size:,} examples ({steps_per_epoch:,} steps per epoch at batch {args.batch}), "
        f"max length {args.max_length}, lr {args.lr:g}, {args.dtype}, "
        f"attention {base.config._attn_implementation}"
    )
    timed = examples[args.warmup * args.batch : (args.warmup + args.steps) * args.batch]
    lengths = [
        [len(e["input_ids"]) for e in timed[k : k + args.batch]] for k in range(0, len(timed), args.batch)
    ]
    padded = sum(max(b) * len(b) for b in lengths)
    print(
        f"timed batches: {sum(map(sum, lengths)) / len(lengths):,.0f} tokens each on average, "
        f"{padded / len(lengths):,.0f} when padded (padding share {1 - sum(map(sum, lengths)) / padded:.1%})"
    )
    median: dict[tuple[str, str], float] = {}
    losses: dict[tuple[str, str], float] = {}
    memory: dict[tuple[str, str], dict] = {}
    first = Path(tempfile.mkdtemp(prefix="trl_sft_examples_")) / "examples.json"
    first.write_text(json.dumps(examples[: args.memory_steps * args.batch]))
    for mode in args.modes:  # first, while this process holds one model only
        for name in args.contenders:
            memory[name, mode] = memory_in_subprocess(args, name, mode, first)
    shutil.rmtree(first.parent)
    for mode in args.modes:
        with contextlib.redirect_stdout(sys.stderr):  # the trainers' log lines, apart from the results
            run = examples[: (args.warmup + args.steps + 1) * args.batch]
            records = interleaved(
                list(args.contenders),
                lambda: copy.deepcopy(base),
                tokenizer,
                run,
                setup,
                mode == "padding-free",
            )
        for name, record in records.items():
            timed = record.step_seconds[args.warmup :]
            if len(timed) != args.steps:
                raise SystemExit(f"{name} ({mode}): {len(timed)} timed steps, {args.steps} expected")
            median[name, mode] = statistics.median(timed)
            losses[name, mode] = record.first_loss

    print("first-step loss (same batch, same weights):")
    for (name, mode), loss in losses.items():
        print(f"  {name:<10} {mode:<12} {loss:.9f}")
    wmss = [v for (n, _), v in losses.items() if n.startswith("wmss")]
    trl = [v for (n, _), v in losses.items() if n.startswith("trl")]
    if wmss and trl:
        gap = max(abs(a - b) for a in wmss for b in trl)
        print(
            f"  largest |wmss - TRL| difference: {gap:.1e} ({'agree' if gap <= 1e-4 else 'DIFFER'} to 1e-4)"
        )
    print(
        f"\n| contender | batches | median s/step ({args.steps} steps) | time per epoch | "
        "peak RSS | peak - RSS before training |"
    )
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        for name in args.contenders:
            s, m = median[name, mode], memory[name, mode]
            epoch = f"{s * steps_per_epoch / 60:.1f} min"
            peak, training = mib(m["peak_bytes"]), mib(m["peak_bytes"] - m["before_bytes"])
            print(f"| {name} | {mode} | {s:.3f} | {epoch} | {peak} | {training} |")
    for mode in args.modes:
        trl_step = median.get(("trl sft", mode))
        if trl_step is None:
            continue
        if ("wmss sft", mode) in median:
            ratio = median["wmss sft", mode] / trl_step
            target = " (target <= 1.0x)" if mode == "padding-free" else ""
            print(f"ratio {mode}: wmss sft ÷ trl sft time per epoch: {ratio:.2f}x{target}")
        if ("wmss wd-jt", mode) in median:
            print(
                f"ratio {mode}: wmss wd-jt step ÷ trl sft step: {median['wmss wd-jt', mode] / trl_step:.2f}x "
                "(target <= 2.1x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="comma-separated: gsm8k, mawps (default both; mawps with --quick)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    parser.add_argument(
        "--modes", default="padding-free,padded", help="comma-separated: padding-free, padded"
    )
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated: " + ", ".join(CONTENDERS)
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each memory subprocess")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N rows of the data")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: a tiny model built from its config, 2 steps, MAWPS",
    )
    parser.add_argument("--memory-of", choices=CONTENDERS, help=argparse.SUPPRESS)  # subprocess mode
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--examples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.memory_steps = 2, 0, 2
        args.limit = args.limit or 200
    args.data = args.data or ("mawps" if args.quick else "gsm8k,mawps")
    one_malloc_arena()
    if args.memory_of:
        print(json.dumps(measure_memory(args)))
        return
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for value, allowed, flag in (
        (args.modes, MODES, "--modes"),
        (args.contenders, CONTENDERS, "--contenders"),
    ):
        unknown = [v for v in value if v not in allowed]
        if unknown or not value:
            parser.error(f"{flag}: {', '.join(unknown) or 'none given'}; choose from {', '.join(allowed)}")
    if args.steps < 1 or args.warmup < 0 or args.memory_steps < 2:
        parser.error("--steps must be >= 1, --warmup >= 0 and --memory-steps >= 2")

    import transformers
    import trl

    model_name = "tiny Llama (2 layers, hidden 64; --quick)" if args.quick else args.model
    print_header(f"wmss vs TRL SFTTrainer ({model_name})")
    print(f"trl {trl.__version__} | transformers {transformers.__version__}")
    print(
        f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps per contender, interleaved; "
        f"memory: fresh subprocess per contender, {args.memory_steps} steps"
    )
    tokenizer = load_tokenizer(resolve_model(args.model))
    base = load_base(args, tokenizer)
    for data in (d.strip() for d in args.data.split(",")):
        if data not in ("gsm8k", "mawps"):
            parser.error(f"--data: {data!r}; choose from gsm8k, mawps")
        report_data(args, data, tokenizer, base)


if __name__ == "__main__":
    main()

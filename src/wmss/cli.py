"""The ``wmss`` command line. Thin: it parses arguments and calls the library.

Every subcommand that trains or measures takes an optional YAML config followed by ``key=value``
overrides of any config key, e.g. ``wmss run configs/demo.yaml wmss.mix_lambda=0.42 seed=1``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from pathlib import Path

from wmss import distributed
from wmss.config import RunConfig, all_keys, config_from_dict, load_config
from wmss.errors import ConfigError, WmssError

log = logging.getLogger("wmss")

CONFIG_HELP = (
    "optional YAML config, then key=value overrides of any config key "
    "(e.g. wmss.mix_lambda=0.42 train.learning_rate=5e-5); `wmss config` lists the keys"
)


def _config(items: list[str], base: RunConfig | None = None) -> RunConfig:
    """The config of ``[FILE] key=value …``; with ``base`` (e.g. a run's), overrides apply to it instead."""
    path = None
    if items and "=" not in items[0]:
        path, items = items[0], items[1:]
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ConfigError(
            f"'{bad[0]}' is neither a config file (it must come first) nor a key=value override."
        )
    if base is not None:
        if path is not None:
            raise ConfigError(
                f"'{path}': with --run the run's own config is used; give only key=value overrides."
            )
        return config_from_dict(base.to_dict(), "run config", items)
    return load_config(path, items)


def _say(text: str) -> None:
    """Print a result line, once: under several processes only the main one prints."""
    if distributed.is_main():
        print(text)


def cmd_run(args: argparse.Namespace) -> None:
    from wmss.pipeline import run_pipeline
    from wmss.rundir import EVAL

    cfg = _config(args.config)
    manifest = run_pipeline(cfg)
    if not distributed.is_main():
        return
    root = Path(cfg.output_dir)
    print(f"done: final model at {root / 'final'}; manifest at {root / 'manifest.json'}")
    if EVAL in manifest["phases"]:
        e = manifest["phases"][EVAL]
        print(f"eval: {e['num_correct']}/{e['num_problems']} correct ({e['accuracy']:.1%}) on {e['source']}")


def cmd_sft(args: argparse.Namespace) -> None:
    from wmss.pipeline import run_sft

    record = run_sft(_config(args.config), args.output)
    _say(f"SFT done in {record['steps']} steps: model at {Path(args.output) / 'model'}")


def cmd_entropy(args: argparse.Namespace) -> None:
    import numpy as np

    from wmss.data import load_training_data
    from wmss.entropy import dataset_entropies, write_entropy_file
    from wmss.models import load_model, load_tokenizer, resolve_model

    cfg = _config(args.config)
    distributed.init(cfg.train.ddp_timeout)
    with distributed.main_process_first():
        source = resolve_model(args.model or cfg.model)
        tokenizer = load_tokenizer(source)
        dataset, _ = load_training_data(cfg.data, tokenizer, cfg.train.max_length)
    values = dataset_entropies(  # sharded across processes, merged on every one
        load_model(source, **cfg.model_args.load_kwargs()).to(distributed.device()),
        dataset,
        tokenizer.pad_token_id,
        cfg.wmss.entropy_batch_size,
        fused=cfg.train.fused_loss,
        padding_free=cfg.train.padding_free,
    )
    if distributed.is_main():
        write_entropy_file(args.output, dataset["idx"], values)
    _say(f"Eq. 7 entropy of {len(values)} examples (mean {np.nanmean(values):.4f}) written to {args.output}")


def cmd_select(args: argparse.Namespace) -> None:
    from wmss.entropy import read_entropy_file
    from wmss.io import atomic_write_jsonl
    from wmss.selection import select_for_config, selection_rows

    cfg = _config(args.config)
    (idx, h_weak), (strong_idx, h_strong) = read_entropy_file(args.weak), read_entropy_file(args.strong)
    if idx != strong_idx:
        raise WmssError(
            f"{args.weak} and {args.strong} list different examples (idx); compute both "
            "entropies on the same data."
        )
    sel = select_for_config(h_weak, h_strong, cfg, seed=cfg.seed)
    if distributed.is_main():
        atomic_write_jsonl(args.output, selection_rows(idx, h_weak, h_strong, sel))
    for note in sel.notes:
        log.warning("%s", note)
    _say(
        f"active set: {len(sel.active_rows)} of {len(sel.weights)} examples ({sel.active_fraction:.1%}); "
        f"written to {args.output}"
    )


def cmd_joint(args: argparse.Namespace) -> None:
    from wmss.pipeline import run_joint

    record = run_joint(_config(args.config), args.weak, args.strong, args.selection, args.output)
    if record.get("mix_lambda_auto"):
        auto = record["mix_lambda_auto"]
        _say(
            f"mix_lambda auto: centred logit norms {auto['strong_centred_norm']:.4f} (strong), "
            f"{auto['weak_centred_norm']:.4f} (weak) -> a = {auto['a']:.4f}, λ = {auto['mix_lambda']:.4f}"
        )
    _say(
        f"WD-JT done in {record['steps']} steps on {record['examples']} examples: strong model at "
        f"{Path(args.output) / 'model'}"
    )


def cmd_diagnose_logits(args: argparse.Namespace) -> None:
    from wmss.diagnostics import diagnose_to_files, logit_statistics_markdown
    from wmss.models import resolve_model
    from wmss.rundir import load_run, run_models

    given = {"weak": args.weak, "strong_before": args.strong_before, "strong_after": args.strong_after}
    given = {k: v for k, v in given.items() if v}
    if args.run:
        root, manifest, run_cfg = load_run(args.run)
        cfg = _config(args.config, base=run_cfg)
        paths = {**run_models(root, manifest), **given}
        out = Path(args.output) if args.output else root / "diagnostics"
    else:
        if not args.output or "weak" not in given or len(given) < 2:
            raise ConfigError(
                "without --run, give --weak, --strong-before and/or --strong-after, and --output "
                "(or --run RUN_DIR to take the models and data of a run)."
            )
        cfg, paths, out = _config(args.config), given, Path(args.output)
    result = diagnose_to_files(cfg, {k: resolve_model(v) for k, v in paths.items()}, out)
    print("\n" + logit_statistics_markdown(result))
    print(f"written to {out / 'logits.json'} and {out / 'logits.md'}")


def cmd_pick_weak(args: argparse.Namespace) -> None:
    from wmss.data import load_training_data
    from wmss.diagnostics import pick_weak, pick_weak_markdown
    from wmss.io import atomic_write_json
    from wmss.models import load_tokenizer, resolve_model

    cfg = _config(args.config)
    strong = resolve_model(args.strong)
    weak = [resolve_model(w) for w in args.weak]
    dataset, _ = load_training_data(cfg.data, load_tokenizer(strong), cfg.train.max_length)
    result = pick_weak(strong, weak, dataset, cfg)
    atomic_write_json(args.output, result)
    print("\n" + pick_weak_markdown(result))
    print(f"written to {args.output}")


def cmd_report(args: argparse.Namespace) -> None:
    from wmss.run_report import write_run_report

    path = write_run_report(args.run_dir, args.output, compute_logits=args.logits)
    print(f"report: {path} (open it in a browser; figures also saved as PNG beside it)")


def _named(items: list[str], option: str) -> dict[str, str]:
    """``[NAME=]PATH`` items by name (a path alone is named after its file or folder)."""
    named: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (Path(item.rstrip("/")).name or item, item)
        if name in named:
            raise ConfigError(f"two {option} items are named '{name}'; name them with {option} NAME=PATH.")
        named[name] = path
    return named


def cmd_eval(args: argparse.Namespace) -> None:
    from wmss.evaluation.harness import evaluate_models
    from wmss.evaluation.report import markdown

    cfg = _config(args.config)
    models = _named(args.model, "--model")
    if args.baseline and args.baseline not in models:
        raise ConfigError(f"--baseline {args.baseline} is not one of the models ({', '.join(models)}).")
    table = evaluate_models(models, args.task or [None], cfg, args.output, args.baseline)
    print("\n" + markdown(table))
    print(
        f"predictions: {args.output}/<model>/<task>/predictions.jsonl; summary.json, summary.md and "
        f"summary.png in {args.output}"
    )


def cmd_grade_code(args: argparse.Namespace) -> None:
    from wmss.evaluation.harness import grade_prediction_files
    from wmss.evaluation.report import markdown

    cfg = _config(args.config)
    files = {
        name.removesuffix(".jsonl"): path for name, path in _named(args.predictions, "--predictions").items()
    }
    if args.baseline and args.baseline not in files:
        raise ConfigError(f"--baseline {args.baseline} is not one of the predictions ({', '.join(files)}).")
    task = args.task or (None if cfg.eval.task != "generic" else "humaneval")
    table = grade_prediction_files(files, task, cfg, args.output, args.baseline)
    print("\n" + markdown(table))
    print(
        f"verdicts: {args.output}/<name>/<task>/predictions.jsonl; summary.json, summary.md in {args.output}"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from wmss.demo import run_demo

    if args.code and not args.allow_code_execution:
        raise ConfigError(
            "wmss demo --code runs the model's Python code (in a sandbox: a guard, not a security boundary; "
            "see docs/code-evaluation.md): add --allow-code-execution to say yes."
        )
    run_demo(
        args.output_dir,
        quick=args.quick,
        code=args.code,
        humaneval=args.humaneval,
        humaneval_limit=args.humaneval_limit,
    )


def cmd_study(args: argparse.Namespace) -> None:
    from wmss.study.spec import load_study

    study = load_study(args.study, args.overrides)
    if args.action == "run":
        from wmss.study.runner import run_study

        run_study(study, args.stage, args.arm, args.seed)
        print(f"done: runs under {study.output_dir}; tables with `wmss study report {args.study}`")
    elif args.action == "archive":
        from wmss.study.archive import archive_study

        into, files, size = archive_study(study, args.into or Path("results") / study.name)
        print(f"archive: {files} files ({size / 2**20:.1f} MiB) in {into}; tables from it with "
              f"`wmss study report {args.study} output_dir={into}`")  # fmt: skip
    else:
        from wmss.study.report import write_study_report

        out = write_study_report(study, args.into)
        print(f"report: {out}")


def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    if args.keys:
        print("\n".join(all_keys()))
        return
    if args.reference:
        from wmss.config_reference import reference

        print(reference(), end="")
        return
    print(yaml.safe_dump(_config(args.config).to_dict(), sort_keys=False), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmss",
        description="Weak-driven learning (WMSS): post-train a causal LM with its own weaker "
        "checkpoint. `wmss run` runs Algorithm 1 end to end; the other subcommands run one phase each.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if func is not None:
            p.set_defaults(func=func)
        return p

    p = add(
        "run",
        cmd_run,
        "Run the whole pipeline: SFT (M0 -> M1), then K iterations of WD-DS + WD-JT, or a baseline "
        "with method=sft|neftune|undial|dpo|spin; resumable: re-run the same command after an interruption.",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)

    p = add("sft", cmd_sft, "Phase 1: completion-only SFT of `model` on `data` for sft.epochs epochs.")
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument("--output", required=True, help="directory for the trained model (OUTPUT/model)")

    p = add(
        "entropy",
        cmd_entropy,
        "Eq. 7: token-averaged predictive entropy of a model on every training "
        "example, written as JSONL (idx, entropy).",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument("--model", help="checkpoint to measure (default: the config's model)")
    p.add_argument("--output", required=True, help="JSONL file to write")

    p = add(
        "select",
        cmd_select,
        "WD-DS: Eq. 9 selection weights from weak and strong entropies, sampling and "
        "de-duplication; writes the selection JSONL.",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument("--weak", required=True, help="entropy JSONL of the weak model")
    p.add_argument("--strong", required=True, help="entropy JSONL of the strong model")
    p.add_argument("--output", required=True, help="selection JSONL to write")

    p = add(
        "joint",
        cmd_joint,
        "WD-JT: train weak and strong jointly on mixed logits (Eq. 5-6) and save the strong model.",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument("--weak", required=True, help="weak checkpoint (M_{t-1})")
    p.add_argument("--strong", required=True, help="strong checkpoint (M_t)")
    p.add_argument("--selection", help="selection JSONL from `wmss select` (default: all of the data)")
    p.add_argument("--output", required=True, help="directory for the trained strong model (OUTPUT/model)")

    p = add(
        "eval",
        cmd_eval,
        "Evaluate one or more models on one or more tasks (greedy pass@1 by default, or sampled pass@k), "
        "graded by math-verify; writes predictions, summary.json, summary.md and summary.png. "
        "An interrupted evaluation resumes where it stopped.",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="model to evaluate: checkpoint dir, .gguf, hub id or smollm2-135m-instruct (repeat)",
    )
    p.add_argument(
        "--task",
        action="append",
        metavar="TASK[=PATH]",
        help="gsm8k, mawps, svamp, aqua, math500, aime, amc, generic, or a task YAML file; code tasks "
        "(need eval.allow_code_execution=true): humaneval, humaneval_plus, mbpp, mbpp_plus, code; with an "
        "optional data path (repeat); default: eval.task with eval.path",
    )
    p.add_argument(
        "--baseline", metavar="NAME", help="model the others are compared with (Δ and 95%% interval)"
    )
    p.add_argument("--output", required=True, help="directory for predictions and the summary")

    p = add(
        "grade-code",
        cmd_grade_code,
        "Grade code generated elsewhere (e.g. with vLLM) on a code task: run each predictions file's "
        "programs against the task's tests in the sandbox (needs eval.allow_code_execution=true); writes "
        "the verdicts, summary.json, summary.md and summary.png (pass@k, and Δ vs --baseline).",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument(
        "--predictions",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help="JSONL, one row per sample: task_id (or id) and completion (continues the prompt), solution "
        "(whole code) or generation (a raw answer, sanitised) (repeat)",
    )
    p.add_argument(
        "--task",
        metavar="TASK[=PATH]",
        help="humaneval (the default, unless eval.task names a code task), humaneval_plus, mbpp, "
        "mbpp_plus or code, with an optional data path",
    )
    p.add_argument("--baseline", metavar="NAME", help="predictions the others are compared with (Δ, 95%% CI)")
    p.add_argument("--output", required=True, help="directory for the verdicts and the summary")

    p = add(
        "diagnose",
        None,
        "Diagnostics of a weak-strong pair. `wmss diagnose logits`: logit statistics (target and "
        "background logits, norms, entropy, hard negatives, Theorem 1's condition) of the weak model and "
        "the strong model before and after WD-JT, on a seeded sample of the training data.",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = what.add_parser(
        "logits",
        help="logit statistics at completion positions (JSON and Markdown)",
        description="Logit statistics at completion positions of wmss.diagnostic_examples training "
        "examples (seeded) for the weak model, the strong model before WD-JT and after it; writes "
        "logits.json and logits.md.",
    )
    q.set_defaults(func=cmd_diagnose_logits)
    q.add_argument("config", nargs="*", help=CONFIG_HELP + "; with --run, only overrides of the run's config")
    q.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="take the models (last iteration: M_{K-1}, M_K, M_{K+1}) and data of this run; output "
        "defaults to RUN_DIR/diagnostics",
    )
    q.add_argument("--weak", help="weak checkpoint")
    q.add_argument("--strong-before", help="strong checkpoint before WD-JT")
    q.add_argument("--strong-after", help="strong checkpoint after WD-JT")
    q.add_argument("--output", help="directory for logits.json and logits.md")

    p = add(
        "pick-weak",
        cmd_pick_weak,
        "Rank candidate weak checkpoints against a strong one by their entropy separation "
        "ΔH = H_strong − H_weak (Eq. 7) on a seeded sample of the config's training data; "
        "candidates with |mean ΔH| < wmss.min_entropy_gap are flagged too close.",
    )
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument("--strong", required=True, help="strong checkpoint")
    p.add_argument("--weak", action="append", required=True, help="candidate weak checkpoint (repeat)")
    p.add_argument("--output", required=True, help="JSON file to write")

    p = add(
        "report",
        cmd_report,
        "One self-contained HTML page about a run (configuration, timings, loss curves, WD-DS "
        "histograms and top examples, λ, logit statistics, evaluation), with its PNG figures, in "
        "RUN_DIR/report/.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `wmss run`")
    p.add_argument("--output", help="directory for report.html and its figures (default RUN_DIR/report)")
    p.add_argument(
        "--logits",
        action="store_true",
        help="first compute the logit statistics (`wmss diagnose logits --run RUN_DIR`)",
    )

    p = add(
        "demo",
        cmd_demo,
        "SmolLM2-135M-Instruct on generated arithmetic word problems: SFT (2 epochs) vs "
        "WMSS (1+1 epochs) at the same budget, evaluated on a held-out split. About 15 minutes on "
        "2 CPU cores.",
    )
    p.add_argument(
        "--output-dir", default="runs/demo", help="where runs and the report go (default runs/demo)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a much smaller demo (about 3 minutes), for a smoke test"
    )
    p.add_argument(
        "--code",
        action="store_true",
        help="the Python demo: generated function-writing problems, graded by their tests in a sandbox",
    )
    p.add_argument(
        "--allow-code-execution", action="store_true", help="consent to run model-written code (--code)"
    )
    p.add_argument(
        "--humaneval",
        action="store_true",
        help="with --code: also grade both arms' final models on HumanEval (164 problems) and report "
        "pass@1 and WMSS - SFT with paired bootstrap intervals on both evaluations",
    )
    p.add_argument(
        "--humaneval-limit",
        type=int,
        metavar="N",
        help="with --humaneval: HumanEval's first N problems only (a smoke test)",
    )

    p = add(
        "study",
        cmd_study,
        "A comparison study from a study YAML (configs/study/): `run` tunes SFT on the validation "
        "split, then trains and evaluates every arm and seed (resumable); `report` writes the tables "
        "and plots; `archive` copies the finished runs' records, without weights, to results/<name> "
        "(`report ... output_dir=results/<name>` rebuilds the tables from them).",
    )
    p.add_argument("action", choices=("run", "report", "archive"))
    p.add_argument("study", help="study YAML, e.g. configs/study/mawps-smollm2.yaml")
    p.add_argument(
        "overrides", nargs="*", help="key=value for top-level study keys, or run.<config key>=value"
    )
    p.add_argument(
        "--stage",
        choices=("tune", "curve", "arms", "all", "heldout"),
        default="all",
        help="(run) what to run; heldout: score the finished arms on the held-out problems",
    )
    p.add_argument("--arm", action="append", help="(run) only this arm (repeat); default: all arms")
    p.add_argument(
        "--seed",
        action="append",
        type=int,
        help="(run) only this seed of the study's (repeat), e.g. the ones still missing from its archive; "
        "default: all",
    )
    p.add_argument(
        "--into",
        help="(report) also replace the study's section of this Markdown file (e.g. docs/RESULTS.md); "
        "(archive) the archive's directory (default results/<study name>)",
    )

    p = add("config", cmd_config, "Print the resolved configuration (defaults + file + overrides).")
    p.add_argument("config", nargs="*", help=CONFIG_HELP)
    p.add_argument("--keys", action="store_true", help="list every config key")
    p.add_argument(
        "--reference", action="store_true", help="print the configuration reference (docs/configuration.md)"
    )
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may come anywhere on the line, also after options
    (argparse alone takes the positionals only where they first appear)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    target = "config" if isinstance(getattr(args, "config", None), list) else "overrides"
    extra = [t for t in rest if "=" in t and not t.startswith("-")]
    if rest and (len(extra) != len(rest) or not isinstance(getattr(args, target, None), list)):
        parser.parse_args(argv)  # exits with argparse's own message about what it does not recognise
    if extra:
        getattr(args, target).extend(extra)
    return args


MAX_MESSAGE = 2000
"""Characters of an error message printed at most: the start and the end (what to do) are kept."""


def _capped(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    left_out = len(message) - MAX_MESSAGE
    return f"{message[: MAX_MESSAGE - 500]} … ({left_out} characters left out) … {message[-500:]}"


def _os_error_message(err: BaseException) -> str | None:
    """What to tell the user about a failed file operation: a full disk (also when a library, e.g.
    safetensors or torch, reports it in its own exception type), a permission or a read-only file system;
    None for anything else (a bug: its traceback is shown)."""
    for cause in (err, err.__cause__, err.__context__):
        code = getattr(cause, "errno", None)
        text = str(cause) if cause is not None else ""
        where = f" while writing {cause.filename}" if getattr(cause, "filename", None) else ""
        if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "StorageFull" in text:
            return (
                f"no space left on the device{where}. Nothing written so far is lost: free some space, then "
                "re-run the same command to resume where it stopped."
            )
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            path = f" ({cause.filename})" if getattr(cause, "filename", None) else ""
            return (
                f"{cause.strerror}{path}. Make that path readable, and the output directory writable (or "
                "give another one), then re-run the same command to resume where it stopped."
            )
    return None


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    rank = distributed.launched_rank()  # under several processes only the main one logs progress
    prefix = "[wmss]" if distributed.launched_world_size() == 1 else f"[wmss {rank}]"
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR, format=f"{prefix} %(message)s")
    import transformers

    if rank == 0:
        transformers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    previous = signal.signal(signal.SIGTERM, _terminated)  # `kill`, a scheduler's stop: like Ctrl-C
    try:
        args.func(args)
    except WmssError as err:
        print(f"wmss: error: {_capped(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wmss: interrupted. Re-run the same command to resume where it stopped.", file=sys.stderr)
        return 130
    except Exception as err:
        message = _os_error_message(err)
        if message is None:
            raise
        print(f"wmss: error: {message}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`rlsd` command line: train | eval | compare | report | inspect | export | quickstart.

Errors a user can fix (bad key, unknown reward, missing model, unwritable
directory, bad data) print one line and exit with status 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys

from ..agents.glue import load_tools
from ..algorithms import CONTRAST_SUFFIX, algorithm_variant, display_name
from ..data import load_dataset
from ..rewards import get_reward
from ..tasks import get_task
from ..teacher.prompts import with_reference
from .evaluate import evaluate, load_model
from .export import export
from .inspect import inspect
from .quickstart import run_quickstart
from .report import report
from .run import RunError, RunInterrupted, check_model_path, train
from .run_config import load_run_config


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="run YAML (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any run key or RLSDConfig/GRPOConfig field, e.g. --set learning_rate=1e-5")
    parser.add_argument("--model", help="hub id or local path (overrides `model:`)")
    parser.add_argument("--output-dir", help="run directory (overrides training.output_dir)")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (see lora.* keys for options)")
    parser.add_argument("--lora-r", type=int, help="LoRA rank (implies --lora)")
    parser.add_argument("--skip-bad-rows", action="store_true", help="drop invalid dataset rows (with a summary)")
    parser.add_argument("--from-hub", action="store_true", help="data.train names a Hugging Face Hub dataset")
    parser.add_argument("--allow-image-urls", action="store_true", help="image rows may name http(s) URLs (downloaded once)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlsd", description="RLVR with self-distillation (RLSD) on TRL.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model from a run config")
    _add_run_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run directory")

    compare = commands.add_parser("compare", help="same config, several algorithms, one plot and table")
    _add_run_arguments(compare)
    compare.add_argument("--algorithms", default="rlsd,grpo",
                         help="comma-separated: rlsd, grpo, opsd, opd, sdpo, grpo+opsd, rlcsd, a registered name "
                              "or your own 'my_method.py:MyMethod'; X+contrast adds "
                              "teacher_contrast=wrong_reference to X (e.g. rlsd+contrast)")

    evaluate = commands.add_parser("eval", help="accuracy, pass@k and maj@k of a model on a held-out set")
    evaluate.add_argument("--model", required=True, help="hub id, model directory or run directory (LoRA: adapter only)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="JSONL/JSON/CSV/Parquet file or saved dataset directory")
    source.add_argument("--task", help="a built-in task's held-out split")
    evaluate.add_argument("--reward", default=None, help="reward name (default: the task's reward, else math)")
    evaluate.add_argument("--k", type=int, default=1)
    evaluate.add_argument("--num-samples", type=int, default=None)
    evaluate.add_argument("--temperature", type=float, default=1.0)
    evaluate.add_argument("--max-new-tokens", type=int, default=256)
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    evaluate.add_argument("--allow-image-urls", action="store_true", help="image rows may name http(s) URLs")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", help="write the metrics (and per-row records) as JSON here")
    evaluate.add_argument("--tools", default=None,
                          help="comma-separated tool import paths (my_tools.py:calc): score greedy multi-turn agent "
                               "episodes; a built-in agent task (e.g. shop) brings its own")
    evaluate.add_argument("--with-reference", metavar="FIELDS", default=None,
                          help="put these columns (e.g. answer,solution) into every prompt with the teacher's default "
                               "template: the RLSD self-teacher's view. It should score far above the plain prompt, "
                               "or the teacher cannot tell good tokens from bad")

    report = commands.add_parser("report", help="curves and a Markdown summary from run directories")
    report.add_argument("run_dirs", nargs="+")
    report.add_argument("--out", default=None, help="output directory (default: the first run's report/)")

    inspect = commands.add_parser("inspect", help="per-token credit page (HTML) and a PNG of one group from a run")
    inspect.add_argument("run_dir")
    inspect.add_argument("--step", type=int, default=None, help="only this recorded step (default: every one)")
    inspect.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/credit.html)")
    inspect.add_argument("--png", default=None, help="PNG of one group (default: credit_group.png beside the page)")

    export = commands.add_parser("export", help="a plain Hugging Face model directory (LoRA merged) from a run")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="directory to write")
    export.add_argument("--merge-lora", action="store_true", help="fold a LoRA adapter into its base model's weights")
    export.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: as saved)")

    quick = commands.add_parser("quickstart", help="a first RLSD vs GRPO run on a laptop CPU, no downloads")
    quick.add_argument("--task", default="arithmetic")
    quick.add_argument("--steps", type=int, default=None)
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--output-dir", default="runs/quickstart")
    quick.add_argument("--fast", action="store_true", help="a ~2-minute smoke version")
    quick.add_argument("--retrain-warm-start", action="store_true",
                       help="train the warm start from scratch with the shipped checkpoint's recorded settings "
                            "(about 15 minutes on 2 cores) instead of starting from the shipped checkpoint")
    return parser


def _run_from_args(args) -> dict:
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    if args.lora or args.lora_r:
        overrides.append(f"lora.r={args.lora_r or 16}")
    run = load_run_config(args.config, overrides)
    flags = {"skip_bad_rows": args.skip_bad_rows, "from_hub": args.from_hub, "allow_image_urls": args.allow_image_urls}
    if any(flags.values()):
        data = run.get("data") or {}
        data = {"train": data} if isinstance(data, str) else dict(data)
        data.update({k: True for k, flag in flags.items() if flag})
        run["data"] = data
    return run


def cmd_train(args) -> int:
    run = _run_from_args(args)
    try:
        prepared = train(run, output_dir=args.output_dir, resume=args.resume)
    except RunInterrupted as stop:
        again = shlex.join(["rlsd", *args.argv] + ([] if args.resume else ["--resume"]))
        print(f"rlsd train: {stop}. Resume with: {again}", file=sys.stderr, flush=True)
        return stop.exit_code
    print(f"rlsd: run finished; model, metrics and checkpoints in {prepared.output_dir}")
    return 0


def cmd_compare(args) -> int:
    run = _run_from_args(args)
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    try:
        variants = {name: algorithm_variant(name) for name in names}
    except ValueError as err:
        raise RunError(f"--algorithms: {err}") from None
    base = args.output_dir or run["training"].get("output_dir") or "runs/compare"
    run_dirs = []
    for name, (algorithm, extra) in variants.items():
        one = copy.deepcopy(run)
        one["training"].update(algorithm=algorithm, **extra)
        # A user's 'file.py:Class' runs in a folder named after its registered name.
        folder = display_name(algorithm) + (CONTRAST_SUFFIX if extra else "")
        print(f"rlsd compare: training {name}", flush=True)
        run_dirs.append(str(train(one, output_dir=os.path.join(base, folder)).output_dir))
    outputs = report(run_dirs, os.path.join(base, "report"))
    print(f"rlsd compare: report in {os.path.join(base, 'report')}")
    return 0 if outputs else 1


def cmd_eval(args) -> int:
    model_path = check_model_path(args.model)
    reward_fn, tools = None, []
    if args.task:
        task = get_task(args.task)
        rows = task.make_rows(args.limit or 200, seed=args.seed, difficulty=task.default_difficulty, split="test")
        reward_fn = task.reward
        tools = list(task.tools)
    else:
        rows = list(load_dataset(args.data, allow_image_urls=args.allow_image_urls)["train"])
    if args.limit:
        rows = rows[: args.limit]
    if args.with_reference:
        try:
            rows = with_reference(rows, [f.strip() for f in args.with_reference.split(",") if f.strip()])
        except ValueError as err:
            raise RunError(f"--with-reference: {err}") from None
    if args.reward or reward_fn is None:
        reward_fn = get_reward(args.reward or "math")
    try:
        model, tokenizer = load_model(model_path)  # a VLM comes with its processor
    except OSError as err:
        raise RunError(f"cannot load model {args.model!r}: {str(err).splitlines()[0]}") from None
    if args.tools:
        try:
            tools = load_tools(args.tools)
        except ValueError as err:
            raise RunError(f"--tools: {err}") from None
    metrics = evaluate(model, tokenizer, rows, reward_fn, k=args.k, num_samples=args.num_samples,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, seed=args.seed, tools=tools or None)
    records = metrics.pop("records")
    print(_table(metrics))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "metrics": metrics, "records": records}, handle, indent=2, default=str)
        print(f"rlsd eval: wrote {args.out}")
    return 0


def _table(metrics: dict) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    for key, value in metrics.items():
        lines.append(f"{key.ljust(width)}  {value:.4f}" if isinstance(value, float) else f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


def cmd_report(args) -> int:
    out = args.out or os.path.join(args.run_dirs[0], "report")
    report(args.run_dirs, out)
    print(f"rlsd report: wrote {out}")
    return 0


def cmd_inspect(args) -> int:
    written = inspect(args.run_dir, out=args.out, step=args.step, png=args.png)
    print(f"rlsd inspect: wrote {written['page']} and {written['png']}")
    return 0


def cmd_export(args) -> int:
    out = export(args.run_dir, args.out, merge_lora=args.merge_lora, dtype=args.dtype)
    print(f"rlsd export: wrote {out} (load it with from_pretrained: AutoModelForCausalLM, or "
          f"AutoModelForImageTextToText for a vision-language model)")
    return 0


def cmd_quickstart(args) -> int:
    summary_path = run_quickstart(task=args.task, steps=args.steps, seed=args.seed, output_dir=args.output_dir,
                                  fast=args.fast, retrain_warm_start=args.retrain_warm_start)
    print(f"rlsd quickstart: summary in {summary_path}")
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "eval": cmd_eval, "report": cmd_report,
            "inspect": cmd_inspect, "export": cmd_export, "quickstart": cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `rlsd train` repeats them in its resume hint
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.debug:
        return COMMANDS[args.command](args)
    user_errors: tuple[type[BaseException], ...] = (RunError, ValueError, FileNotFoundError, KeyError)
    try:
        return COMMANDS[args.command](args)
    except RunInterrupted as stop:  # compare/quickstart: a run stopped on SIGINT/SIGTERM after its checkpoint
        print(f"rlsd {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except user_errors as err:
        message = str(err).strip().strip('"') or type(err).__name__
        print(f"rlsd {args.command}: error: {message.splitlines()[0]}", file=sys.stderr)
        if len(message.splitlines()) > 1:
            print("\n".join(message.splitlines()[1:]), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

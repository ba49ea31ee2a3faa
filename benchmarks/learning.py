"""Learning curves: RLSD against its baselines from warm-started checkpoints, several seeds, equal budgets.

    python benchmarks/learning.py --quick          # CI smoke: arithmetic, grpo/rlsd/sdpo/grpo+opsd/rlcsd, 1 seed, 3 steps
    python benchmarks/learning.py                  # 2 tasks x grpo,rlsd,opsd,opd x 3 seeds, one warm start
    python benchmarks/learning.py --full           # issue 20's design: see FULL below (CPU core-hours; in parallel,
                                                   # over several sessions: learning_jobs.py --commit -- --full)
    python benchmarks/learning.py --full --only-finished   # summarise the committed results, train nothing
    python benchmarks/learning.py --ablation       # RLSD's open choices (SPEC.md) on the first task
    python benchmarks/learning.py --tasks chain --algorithms grpo,rlsd,rlsd+contrast --warm-starts 0,1 \\
        --seeds 0,1,2,3,4 --eval-size 500 --out ...

Every run uses the quickstart recipe (`rlsd.app.quickstart.quickstart_run`): same checkpoint, seed, data order,
rollouts and steps; only the variant differs. A variant is an algorithm (rlsd, grpo, opsd, opd, sdpo, grpo+opsd,
rlcsd, or your own 'file.py:Class'), `X+contrast` (teacher_contrast=wrong_reference) or `rlsd-A` for an ablation
A of RLSD's open choices (ABLATIONS below, e.g. `rlsd-eps_w=0.5`). `--warm-starts` lists
SFT seeds: each gives a separately warm-started student (a different checkpoint inside the accuracy band), and
every variant x seed runs from each, so the result does not rest on one starting point. OPD's teacher is a
larger tiny model with the same tokenizer, warm-started further on the same task. Finished runs are reused, so an
interrupted benchmark continues where it stopped. Outputs in `--out`: `runs.json` (every run's curve and teacher statistics),
`curves.json`, `summary.json` (means, 95% intervals, paired differences), `learning.png`, `table.md`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_stats import mean_curve, paired_differences, summarize, task_markdown  # noqa: E402

from rlsd.config import algorithm_variant  # noqa: E402
from rlsd.app.plotting import pyplot  # noqa: E402
from rlsd.app.quickstart import quickstart_run, self_teacher_accuracy  # noqa: E402
from rlsd.app.report import load_metrics, series  # noqa: E402
from rlsd.app.run import train  # noqa: E402
from rlsd.app.warmstart import load_result, machine_facts, save_result, warm_start  # noqa: E402

ABLATIONS = {
    "rlsd": {},
    "lambda=0.5": {"rlsd_lambda": 0.5},
    "linear_decay": {"rlsd_lambda_schedule": "linear_decay"},
    "eps_w=0.1": {"rlsd_eps_w": 0.1},
    "eps_w=0.5": {"rlsd_eps_w": 0.5},
    "teacher=ema": {"teacher_mode": "ema"},
    "teacher=base": {"teacher_mode": "base"},
    "contrast": {"teacher_contrast": "wrong_reference"},
}
# Issue 20's design (was issue 15's, sized for a GPU): the long-horizon task with every self-teacher method, the
# short task with rlsd vs grpo; 5 RL seeds; `name@0` runs a variant from the first warm start only. Warm starts are
# the committed checkpoints in benchmarks/warmstarts/ (same files on every machine, so every machine answers the
# same question); reference-aware students; 500 held-out problems per evaluation. Sized for 2-core CPUs: one
# thread per run, runs in parallel, each finished run's result a small committed JSON (results/), so the design
# completes over several sessions (`learning_jobs.py` runs only what is missing). Beyond the design:
# `rlsd-eps_w=0.5` (both chain warm starts) asks whether RLSD's small gain is held back by its weight clip (the
# token weights stay near 1 with about 7% at the default 0.2 bound), paired with GRPO and with default RLSD.
FULL = {
    "plan": {"chain": "grpo,rlsd,rlsd+contrast,opsd@0,sdpo@0,grpo+opsd@0,rlcsd@0,rlsd-eps_w=0.5",
             "arithmetic": "grpo,rlsd"},
    "seeds": "0,1,2,3,4", "warm_starts": "0,1", "eval_size": 500, "privileged_fraction": 0.5, "steps": 100,
    "out": "benchmarks/results/learning-full", "warm_start_dir": "benchmarks/warmstarts",
}
# SDPO as TRL's SDPOTrainer runs it by default: sampled-token reverse KL. (A 6-step GPU check on `chain`, one
# seed: full-vocabulary forward KL took held-out accuracy 0.62 -> 0.07, sampled-token 0.62 -> 0.40, GRPO
# 0.62 -> 0.70; RESULTS.md.) Explicit variant fields override these.
VARIANT_DEFAULTS = {"sdpo": {"distill_divergence": "sampled_token"}}
# Metrics averaged over training for the "what did the teacher's weights do" table.
TEACHER_METRICS = ("rlsd/delta_mean", "rlsd/delta_std", "rlsd/weight_mean", "rlsd/clip_low_frac",
                   "rlsd/clip_high_frac", "teacher/time_frac", "teacher/contrast_time_frac", "contrast/rows_frac",
                   "distill/divergence", "distill/sampled_advantage", "sdpo/peer_demo_frac",
                   "sdpo/reference_fallback_frac")


# Per-step teacher statistics kept in each run's result (about TRACE_POINTS points per run), for the "what did the
# teacher do over training" plot.
TRACE_METRICS = ("rlsd/delta_mean", "rlsd/clip_low_frac", "rlsd/clip_high_frac", "reward")
TRACE_POINTS = 20


def heldout_curve(run_dir: Path) -> list[tuple[float, float]]:
    steps, values = series(load_metrics(run_dir), "eval/accuracy")
    return list(zip(steps, values))


def training_means(run_dir: Path) -> dict[str, float]:
    records = load_metrics(run_dir)
    out = {}
    for name in TEACHER_METRICS:
        _, values = series(records, name)
        if values:
            out[name] = statistics.mean(values)
    return out


def training_traces(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """TRACE_METRICS at about TRACE_POINTS steps: what the teacher did over training, not only on average."""
    records = load_metrics(run_dir)
    traces = {}
    for name in TRACE_METRICS:
        steps, values = series(records, name)
        stride = max(1, len(steps) // TRACE_POINTS)
        kept = [(step, round(value, 5)) for step, value in list(zip(steps, values))[stride - 1::stride]]
        if kept:
            traces[name] = kept
    return traces


def result_path(out: Path, task: str, ws_name: str, name: str, seed: int) -> Path:
    """The committed record of one finished run (the run directory itself is not committed)."""
    return out / "results" / f"{task}-{ws_name}-{name.replace('=', '-')}-seed{seed}.json"


def run_once(run: dict, run_dir: Path, result_file: Path | None = None) -> dict:
    """Train one run unless its result exists; return its result (held-out curve, teacher statistics, cost).

    A run counts as finished when its result file exists (or, for benchmarks without result files, when the run
    directory holds `DONE`), so an interrupted benchmark reruns only unfinished runs, on any machine.
    """
    if result_file is not None and result_file.is_file():
        return json.loads(result_file.read_text())
    done = run_dir / "DONE"
    seconds = None
    if not done.exists():
        started = time.perf_counter()
        train(run, output_dir=run_dir)
        seconds = round(time.perf_counter() - started, 1)
        done.write_text("ok\n")
    result = {"curve": heldout_curve(run_dir), "training_means": training_means(run_dir),
              "traces": training_traces(run_dir), "seconds": seconds, "machine": machine_facts()}
    if result_file is not None:
        result_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, result_file)  # a stopped run never leaves half a result
    return result


def split_variant(name: str) -> tuple[str, set[int] | None]:
    """`opsd@0` -> ("opsd", {0}): the variant runs from those warm starts (SFT seeds) only; `rlsd` -> all."""
    name, _, only = name.strip().partition("@")
    return name, ({int(w) for w in only.split("+") if w} if only else None)


ABLATION_PREFIX = "rlsd-"  # `rlsd-eps_w=0.5`: RLSD with ABLATIONS["eps_w=0.5"], a variant in any plan


def variants_from(names: str, ablation: bool) -> dict[str, tuple[str, dict]]:
    """Variant name -> (algorithm, extra RLSDConfig fields); ValueError names an unknown variant."""
    if ablation:
        return {name: ("rlsd", fields) for name, fields in ABLATIONS.items()}
    variants = {}
    for name in (split_variant(n)[0] for n in names.split(",") if n.strip()):
        choice = name[len(ABLATION_PREFIX):] if name.startswith(ABLATION_PREFIX) else None
        if choice is not None and choice not in ABLATIONS:
            raise ValueError(f"unknown RLSD ablation {name!r}; choose from "
                             f"{', '.join(ABLATION_PREFIX + a for a in ABLATIONS if a != 'rlsd')}")
        algorithm, fields = ("rlsd", ABLATIONS[choice]) if choice is not None else algorithm_variant(name)
        variants[name] = (algorithm, {**VARIANT_DEFAULTS.get(algorithm, {}), **fields})
    return variants


def warm_start_subsets(names: str) -> dict[str, set[int] | None]:
    return dict(split_variant(n) for n in names.split(",") if n.strip())


def plot(panels: dict[str, dict[str, list]], out_png: Path) -> None:
    """One panel per (task, warm start): mean curve and min-max band over seeds for each variant."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    colors = variant_colors(plt, [name for curves in panels.values() for name in curves])
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for name, seeds in curves.items():
            curve = mean_curve(seeds)
            if not curve:
                continue
            steps, mean, low, high = zip(*curve)
            ax.plot(steps, mean, color=colors[name], label=f"{name} ({len(seeds)} seeds)")
            ax.fill_between(steps, low, high, color=colors[name], alpha=0.15)
        ax.set_title(f"{title}: held-out accuracy (mean, min-max)", fontsize=9)
        ax.set_ylabel("greedy accuracy")
    save_figure(plt, fig, axes, out_png, dpi=110)


def variant_colors(plt, names: list[str]) -> dict[str, str]:
    """One colour per variant, the same in every panel (matplotlib's cycle restarts in each axis otherwise)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(dict.fromkeys(names))}


def save_figure(plt, fig, axes, out_png: Path, dpi: int) -> None:
    """Every panel over RL steps, gridded, with its legend; written to `out_png` and closed."""
    for ax in axes.flat:
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=None, help="tasks (default arithmetic,linear; with --full: a subset of its plan)")
    parser.add_argument("--algorithms", default="grpo,rlsd,opsd,opd",
                        help="variants: rlsd, grpo, opsd, opd, sdpo, grpo+opsd, rlcsd, file.py:Class, X+contrast, "
                             "rlsd-ABLATION (e.g. rlsd-eps_w=0.5)")
    parser.add_argument("--teacher-contrast", choices=("none", "wrong_reference"), default="none",
                        help="apply this teacher_contrast to every variant that has a self-teacher")
    parser.add_argument("--seeds", default=None, help="RL seeds (data order, sampling; default 0,1,2)")
    parser.add_argument("--warm-starts", default=None,
                        help="SFT seeds: one warm-started student per seed (default 0; with --full a subset of its 0,1)")
    parser.add_argument("--eval-size", type=int, default=100, help="held-out problems per evaluation")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--teacher-steps", type=int, default=1500,
                        help="OPD teacher's SFT steps (step-budgeted so a busy machine does not weaken it)")
    parser.add_argument("--privileged-fraction", type=float, default=0.0,
                        help="warm start also on this share of rows with the reference in the prompt, so the tiny "
                             "model can use privileged context (as instruction-tuned LLMs can); 0: plain SFT")
    parser.add_argument("--student-budget-s", type=float, default=150.0,
                        help="student warm-start time limit (it stops earlier once in the accuracy band)")
    parser.add_argument("--student-max-steps", type=int, default=2000, help="student warm start's SFT step limit")
    parser.add_argument("--student-eval-every", type=int, default=100,
                        help="warm start evaluates every N SFT steps (chain's accuracy can jump 0.07 -> 0.6 in 100)")
    parser.add_argument("--band", default="0.3,0.5", help="warm-start target band of held-out accuracy")
    parser.add_argument("--reproducible-warm-start", action="store_true",
                        help="warm starts with deterministic torch kernels on --warm-start-threads threads: the same "
                             "command on the same kind of CPU gives the same checkpoint whatever the load (--full)")
    parser.add_argument("--warm-start-threads", type=int, default=1, help="torch threads of a reproducible warm start")
    parser.add_argument("--ablation", action="store_true", help="RLSD variants instead of algorithms (first task)")
    parser.add_argument("--quick", action="store_true", help="smoke: arithmetic, 4 variants, 1 seed, 3 steps")
    parser.add_argument("--full", action="store_true", help="issue 20's design (FULL in this file)")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: summarise the warm starts and runs already finished in --out "
                             "(what `learning_jobs.py` does after its parallel runs)")
    parser.add_argument("--warm-start-dir", default=None,
                        help="directory of committed warm starts, one `TASK-sftSEED` per (task, SFT seed): used as "
                             "they are, trained there only when missing (--full: benchmarks/warmstarts)")
    parser.add_argument("--warm-starts-only", action="store_true",
                        help="build (or check) the warm starts and their self-teacher's view, then stop")
    parser.add_argument("--out", default="benchmarks/results/learning")
    args = parser.parse_args(argv)
    args.plan = None
    if args.full:
        args.plan = {t: v for t, v in FULL["plan"].items() if args.tasks is None or t in args.tasks.split(",")}
        args.seeds, args.warm_starts = args.seeds or FULL["seeds"], args.warm_starts or FULL["warm_starts"]
        args.eval_size, args.privileged_fraction, args.steps = FULL["eval_size"], FULL["privileged_fraction"], FULL["steps"]
        args.student_budget_s = max(args.student_budget_s, 4 * 3600.0)  # a safety cap: one CPU thread is slow
        args.student_max_steps = max(args.student_max_steps, 6000)  # 8-step chains need more SFT than arithmetic
        args.student_eval_every = min(args.student_eval_every, 25)  # do not jump over the band
        args.reproducible_warm_start = True
        args.out = args.out if args.out != "benchmarks/results/learning" else FULL["out"]
        args.warm_start_dir = args.warm_start_dir or FULL["warm_start_dir"]
    if args.quick:
        args.tasks, args.algorithms, args.seeds, args.steps = "arithmetic", "grpo,rlsd,sdpo,grpo+opsd,rlcsd", "0", 3
        args.eval_size = 32
        args.out = args.out if args.out != "benchmarks/results/learning" else "benchmarks/results/learning-quick"
    args.seeds, args.warm_starts = args.seeds or "0,1,2", args.warm_starts or "0"
    if args.plan is None:
        tasks = [t for t in (args.tasks or "arithmetic,linear").split(",") if t]
        args.plan = {t: args.algorithms for t in (tasks[:1] if args.ablation else tasks)}
    return args


def student_for(task: str, sft_seed: int, args, out: Path, band: tuple[float, float], reproducible: dict):
    """The warm-started student for (task, SFT seed): a committed checkpoint used as it is, or one trained here.

    Returns (WarmStartResult, the self-teacher's view: held-out accuracy with the reference in the prompt), or
    (None, None) with --only-finished when it does not exist.
    """
    ws_name = f"sft{sft_seed}"
    if args.warm_start_dir:
        ws_dir = Path(args.warm_start_dir) / f"{task}-{ws_name}"
    else:  # SFT seed 0 keeps the directory name of the single-warm-start benchmark, so its runs are reused
        ws_dir = out / (f"warmstart-{task}" if sft_seed == 0 else f"warmstart-{task}-{ws_name}")
    student = load_result(ws_dir)
    if student is None and args.only_finished:
        return None, None
    if student is None or not args.warm_start_dir:  # committed warm starts are never retrained behind your back
        student = warm_start(task, ws_dir, seed=sft_seed, progress=not args.quick,
                             **({"time_budget_s": 30.0, "max_steps": 200, "num_eval_rows": 32} if args.quick
                                else {"target_accuracy": band, "time_budget_s": args.student_budget_s,
                                      "max_steps": args.student_max_steps, "eval_every": args.student_eval_every,
                                      "privileged_fraction": args.privileged_fraction, **reproducible}))
    if student.accuracy_with_reference is None:  # measured once, recorded beside the checkpoint's other facts
        student.accuracy_with_reference = self_teacher_accuracy(task, student.output_dir,
                                                                num_rows=32 if args.quick else 100)
        save_result(student)
    return student, student.accuracy_with_reference


def summary_entry(row: dict, pair: dict | None, warm_starts: list[str], eval_size: int,
                  rlsd_pair: dict | None = None) -> dict:
    """One (task, algorithm) entry of summary.json, in a fixed shape: a `summarize` row, its pair against GRPO
    (`paired_vs_grpo`) and, for a variant of RLSD itself, against plain RLSD (`paired_vs_rlsd`, the same keys)."""
    entry = {"n_seeds": row["seeds"], "n_runs": row["runs"], "warm_starts": warm_starts, "heldout_size": eval_size,
             "start_mean": _round(row["start"]), "final_mean": _round(row["final_mean"]),
             "final_ci95": _interval(row["final_mean"], row["final_ci"]),
             "best_mean": _round(row["best_mean"]), "late_mean": _round(row["late_mean"]),
             "late_ci95": _interval(row["late_mean"], row["late_ci"]),
             "final_min": _round(row["final_min"]), "final_max": _round(row["final_max"]),
             "steps_to_grpo_final": row["steps_to_baseline_final"]}
    for key, p in (("paired_vs_grpo", pair), ("paired_vs_rlsd", rlsd_pair)):
        if p is not None:
            entry[key] = {"mean": _round(p["final_diff"]), "ci95": _interval(p["final_diff"], p["final_ci"]),
                          "wins": p["final_wins"], "losses": p["final_losses"], "n": p["pairs"],
                          "late_mean": _round(p["late_diff"]), "late_ci95": _interval(p["late_diff"], p["late_ci"]),
                          "curve_mean": _round(p["curve_diff"]), "curve_ci95": _interval(p["curve_diff"], p["curve_ci"])}
    return entry


def _round(value):
    """Accuracies to 4 decimals (a 500-problem evaluation resolves 0.002): no float noise in summary.json."""
    return None if value is None else round(value, 4)


def _interval(mean, half):
    return None if mean is None or half is None else [round(mean - half, 4), round(mean + half, 4)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sft_seeds = [int(s) for s in args.warm_starts.split(",") if s]
    band = tuple(float(x) for x in args.band.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    records, sections, summaries, panels, fixed_shape = [], [], {}, {}, {}
    planned = finished = 0
    machine_seconds = 0.0
    # Deterministic training and evaluations: the warm start enters the band at the same step on any load.
    reproducible = (dict(deterministic=True, num_threads=args.warm_start_threads)
                    if args.reproducible_warm_start else {})
    for task, names in args.plan.items():
        variants = variants_from(names, args.ablation)
        subsets = {} if args.ablation else warm_start_subsets(names)
        if args.teacher_contrast != "none":
            from rlsd.config import CONTRAST_ALGORITHMS

            variants = {n: (a, {**f, "teacher_contrast": args.teacher_contrast} if a in CONTRAST_ALGORITHMS else f)
                        for n, (a, f) in variants.items()}
        warm_starts, runs, per_ws_runs, teacher_stats, traces = [], {}, {}, {}, {}
        teacher_dir = None
        if any(algorithm == "opd" for algorithm, _ in variants.values()) and not args.only_finished:
            teacher = warm_start(task, out / f"teacher-{task}", seed=0, hidden_size=256, num_layers=4,
                                 target_accuracy=(0.6, 0.95), max_steps=args.teacher_steps,
                                 time_budget_s=60.0 if args.quick else 4 * 3600.0)
            teacher_dir = teacher.output_dir
            print(f"[{task}] OPD teacher ({teacher.num_parameters} params): accuracy {teacher.accuracy:.2f}")
        for sft_seed in sft_seeds:
            ws_name = f"sft{sft_seed}"
            student, with_reference = student_for(task, sft_seed, args, out, band, reproducible)
            if student is None:  # its runs still count as planned
                planned += len(seeds) * sum(subsets.get(n) is None or sft_seed in subsets[n] for n in variants)
                print(f"[{task}/{ws_name}] no finished warm start: skipped", flush=True)
                continue
            warm_starts.append({"name": ws_name, "accuracy": student.accuracy, "in_band": student.in_band,
                                "steps": student.steps, "with_reference": with_reference,
                                "params": student.num_parameters, "dir": student.output_dir})
            print(f"[{task}/{ws_name}] warm start: held-out accuracy {student.accuracy:.2f} "
                  f"({'in' if student.in_band else 'OUTSIDE'} the band) after {student.steps} SFT steps; with the "
                  f"reference in its prompt (the self-teacher's view): {with_reference:.2f}", flush=True)
            if args.warm_starts_only:
                continue
            for name, (algorithm, fields) in variants.items():
                if subsets.get(name) is not None and sft_seed not in subsets[name]:
                    continue
                for seed in seeds:
                    planned += 1
                    run = quickstart_run(task, student.output_dir, algorithm, args.steps, seed, fast=args.quick)
                    run["task_eval_size"] = args.eval_size
                    run["training"].update(copy.deepcopy(fields))
                    run["training"]["disable_tqdm"] = True
                    if algorithm == "opd":
                        run["training"]["teacher_model"] = teacher_dir
                    sub = f"{task}/{name.replace('=', '-')}/seed{seed}" if sft_seed == 0 else \
                        f"{task}/{ws_name}/{name.replace('=', '-')}/seed{seed}"
                    result_file = result_path(out, task, ws_name, name, seed) if args.warm_start_dir else None
                    if args.only_finished and not ((result_file and result_file.is_file())
                                                   or (out / sub / "DONE").exists()):
                        continue
                    print(f"[{task}/{ws_name}] {name} seed {seed}", flush=True)
                    result = run_once(run, out / sub, result_file)
                    finished += 1
                    machine_seconds += result.get("seconds") or 0.0
                    curve, means = [tuple(point) for point in result["curve"]], result["training_means"]
                    records.append({"task": task, "warm_start": ws_name, "variant": name, "seed": seed,
                                    "curve": curve, "training_means": means, "seconds": result.get("seconds")})
                    runs.setdefault(name, {})[(ws_name, seed)] = curve
                    per_ws_runs.setdefault(ws_name, {}).setdefault(name, {})[seed] = curve
                    for metric, value in means.items():
                        teacher_stats.setdefault(name, {}).setdefault(metric, []).append(value)
                    for metric, trace in result.get("traces", {}).items():
                        traces.setdefault(name, {}).setdefault(metric, []).append(trace)
            panels[f"{task} / {ws_name} ({student.accuracy:.2f})"] = {
                n: list(by_seed.values()) for n, by_seed in per_ws_runs.get(ws_name, {}).items()}
        if not runs:
            print(f"[{task}] no finished runs: skipped", flush=True)
            continue
        baseline = "grpo" if "grpo" in runs else next(iter(runs))
        summary = summarize(runs, baseline)
        per_ws = {ws: summarize(r, baseline) for ws, r in per_ws_runs.items()}
        pairs = [p for name in runs if name != baseline and (p := paired_differences(runs, name, baseline))]
        # A variant of RLSD itself (+contrast, an ablation) is also paired with plain RLSD: what the change adds.
        rlsd_pairs = [p for name in runs if name != "rlsd" and baseline != "rlsd" and variants[name][0] == "rlsd"
                      and (p := paired_differences(runs, name, "rlsd"))]
        rlsd_like = {n: {k: statistics.mean(v) for k, v in s.items()} for n, s in teacher_stats.items()
                     if any(k.startswith("rlsd/") for k in s)}
        notes = [f"Student: {warm_starts[0]['params'] / 1e6:.2f}M params; {args.steps} RL steps; RL seeds {seeds}; "
                 f"{args.eval_size} held-out problems per evaluation."]
        sections.append(task_markdown(task, warm_starts, summary, per_ws, pairs + rlsd_pairs, rlsd_like, baseline,
                                      notes))
        summaries[task] = {"warm_starts": warm_starts, "summary": summary, "per_warm_start": per_ws,
                           "paired": pairs + rlsd_pairs, "training_means": {n: {k: statistics.mean(v) for k, v in s.items()}
                                                               for n, s in teacher_stats.items()},
                           "training_traces": {n: {m: mean_trace(t) for m, t in by_metric.items()}
                                               for n, by_metric in traces.items()}}
        for row in summary:
            name = row["variant"]
            row["seeds"] = len({seed for _, seed in runs[name]})
            pair = next((p for p in pairs if p["variant"] == name), None)
            fixed_shape.setdefault(task, {})[name] = summary_entry(
                row, pair, sorted({ws for ws, _ in runs[name]}), args.eval_size,
                next((p for p in rlsd_pairs if p["variant"] == name), None))
        print(sections[-1], flush=True)

    curves = {}
    for r in records:
        curves.setdefault(r["task"], {}).setdefault(r["variant"], []).append(r["curve"])
    (out / "runs.json").write_text(json.dumps(records, indent=1))
    (out / "curves.json").write_text(json.dumps(curves, indent=1))
    details = out / ("details.json" if args.warm_start_dir else "summary.json")
    details.write_text(json.dumps(summaries, indent=1, default=str))
    if args.warm_start_dir:  # the fixed shape: task -> algorithm -> n_seeds, warm_starts, final_mean, ...
        (out / "summary.json").write_text(json.dumps(fixed_shape, indent=1) + "\n")
    if any(panels.values()):
        plot(panels, out / "learning.png")
    if any(s.get("training_traces") for s in summaries.values()):
        plot_traces(summaries, out / "teacher.png")
    elapsed = time.perf_counter() - started
    command = "python benchmarks/learning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    progress = (f"{finished} of {planned} planned runs finished; their training took {machine_seconds / 3600:.2f} "
                f"machine-hours (sum of run wall times, one CPU thread each where run in parallel jobs)")
    header = (f"Held-out greedy accuracy. Command: `{command}`. {args.steps} RL steps; RL seeds {seeds}; warm starts "
              f"(SFT seeds) {sft_seeds}; privileged_fraction={args.privileged_fraction}; {progress}; this invocation "
              f"took {elapsed:.0f}s (runs finished earlier are reused, not rerun).\n\n")
    (out / "table.md").write_text(header + "\n".join(sections))
    print(progress)
    print(f"wrote {out}/runs.json, curves.json, summary.json, learning.png, table.md ({elapsed:.0f}s)")
    return 0


def mean_trace(traces: list[list]) -> list[tuple[float, float]]:
    """Mean over runs of a per-step trace, at the steps every run logged."""
    return [(step, mean) for step, mean, _, _ in mean_curve([[tuple(p) for p in t] for t in traces])]


def plot_traces(summaries: dict, out_png: Path) -> None:
    """What the teacher did over training: RLSD's delta mean and clip fractions per variant (mean over runs)."""
    plt = pyplot()
    metrics = TRACE_METRICS[:3]
    fig, axes = plt.subplots(len(summaries), len(metrics), figsize=(5 * len(metrics), 3.2 * len(summaries)),
                             squeeze=False)
    colors = variant_colors(plt, [name for summary in summaries.values() for name in summary.get("training_traces", {})])
    for row, (task, summary) in zip(axes, summaries.items()):
        for ax, metric in zip(row, metrics):
            for name, by_metric in summary.get("training_traces", {}).items():
                if by_metric.get(metric):
                    steps, values = zip(*by_metric[metric])
                    ax.plot(steps, values, color=colors[name], label=name)
            ax.set_title(f"{task}: {metric}", fontsize=9)
    save_figure(plt, fig, axes, out_png, dpi=100)


if __name__ == "__main__":
    sys.exit(main())

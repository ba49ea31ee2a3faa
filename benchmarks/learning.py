"""Learning curves: GRPO vs RLSD vs OPSD vs OPD from one warm-started checkpoint, several seeds, equal budgets.

    python benchmarks/learning.py --quick                 # CI smoke: 1 task, grpo+rlsd, 1 seed, a few steps
    python benchmarks/learning.py                         # 2 tasks x 4 algorithms x 3 seeds
    python benchmarks/learning.py --ablation              # RLSD's open choices (SPEC.md) on the first task
    python benchmarks/learning.py --privileged-fraction 0.5 --out ...   # a student that can read a reference

Every run uses the quickstart recipe (`rlsd.quickstart.quickstart_run`): same checkpoint, seed, data order,
rollouts and steps; only `algorithm` (or the ablated field) differs. OPD's teacher is a larger tiny model
with the same tokenizer, warm-started further on the same task. Finished runs are reused, so an interrupted
benchmark continues where it stopped. Outputs: `curves.json`, `learning.png`, `table.md` in `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from rlsd.quickstart import quickstart_run, self_teacher_accuracy
from rlsd.report import load_metrics, series
from rlsd.run import train
from rlsd.tasks.warmstart import warm_start

ABLATIONS = {
    "rlsd": {},
    "lambda=0.5": {"rlsd_lambda": 0.5},
    "linear_decay": {"rlsd_lambda_schedule": "linear_decay"},
    "eps_w=0.1": {"rlsd_eps_w": 0.1},
    "eps_w=0.5": {"rlsd_eps_w": 0.5},
    "teacher=ema": {"teacher_mode": "ema"},
    "teacher=base": {"teacher_mode": "base"},
}


def heldout_curve(run_dir: Path) -> list[tuple[float, float]]:
    steps, values = series(load_metrics(run_dir), "eval/accuracy")
    return list(zip(steps, values))


def run_once(run: dict, out: Path) -> list[tuple[float, float]]:
    done = out / "DONE"
    if not done.exists():
        train(run, output_dir=out)
        done.write_text("ok\n")
    return heldout_curve(out)


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float, float, float]]:
    """(step, mean, min, max) over seeds, at the steps every seed logged."""
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    return [(s, statistics.mean(v), min(v), max(v)) for s, v in sorted(by_step.items()) if len(v) == len(curves)]


def steps_to_reach(curve: list[tuple[float, float, float, float]], target: float) -> float | None:
    return next((step for step, mean, _, _ in curve if mean >= target - 1e-9), None)


def summarize(curves: dict[str, list[list[tuple[float, float]]]], baseline: str = "grpo") -> list[dict]:
    means = {name: mean_curve(c) for name, c in curves.items()}
    target = means[baseline][-1][1] if baseline in means and means[baseline] else None
    rows = []
    for name, seeds in curves.items():
        finals = [c[-1][1] for c in seeds if c]
        bests = [max(v for _, v in c) for c in seeds if c]
        # Means over a stretch of the curve are less noisy than its last point.
        lates = [statistics.mean(v for step, v in c if step >= 0.6 * c[-1][0]) for c in seeds if c]
        overall = [statistics.mean(v for step, v in c if step > 0) for c in seeds if c and c[-1][0] > 0]
        reach = steps_to_reach(means[name], target) if target is not None else None
        base_reach = steps_to_reach(means[baseline], target) if target is not None else None
        rows.append({
            "algorithm": name, "seeds": len(seeds),
            "start": means[name][0][1] if means[name] else None,
            "final_mean": statistics.mean(finals) if finals else None,
            "final_std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
            "best_mean": statistics.mean(bests) if bests else None,
            "late_mean": statistics.mean(lates) if lates else None,
            "all_mean": statistics.mean(overall) if overall else None,
            "steps_to_grpo_final": reach,
            "steps_ratio_vs_grpo": (reach / base_reach) if reach and base_reach else None,
        })
    return rows


def table_markdown(task: str, rows: list[dict], diagnostics: dict | None = None, baseline: str = "grpo") -> str:
    def fmt(v, spec=".3f"):
        return "—" if v is None else format(v, spec)

    notes = []
    if diagnostics:
        notes.append(f"Student ({diagnostics['student_params'] / 1e6:.2f}M params) after warm start: "
                     f"{diagnostics['student_accuracy']:.2f}; the same model with answer + solution in its prompt "
                     f"(the self-teacher's view): {diagnostics['student_with_privileged_context']:.2f}.")
        if "opd_teacher_accuracy" in diagnostics:
            notes.append(f"OPD teacher ({diagnostics['opd_teacher_params'] / 1e6:.2f}M params, "
                         f"{diagnostics['opd_teacher_sft_steps']} SFT steps): "
                         f"{diagnostics['opd_teacher_accuracy']:.2f}.")
    header = ("| algorithm | seeds | held-out acc. at start | final (mean ± std) | best (mean) "
              "| last 40% of steps (mean) | all steps after 0 (mean) "
              f"| steps to {baseline}'s final | ratio vs {baseline} |")
    lines = [f"### {task}", "", *([" ".join(notes), ""] if notes else []), header,
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['seeds']} | {fmt(r['start'])} | {fmt(r['final_mean'])} ± "
                     f"{fmt(r['final_std'])} | {fmt(r['best_mean'])} | {fmt(r['late_mean'])} | {fmt(r['all_mean'])} "
                     f"| {fmt(r['steps_to_grpo_final'], '.0f')} "
                     f"| {fmt(r['steps_ratio_vs_grpo'], '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(all_curves: dict[str, dict[str, list]], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_curves), figsize=(6 * len(all_curves), 4), squeeze=False)
    for ax, (task, curves) in zip(axes[0], all_curves.items()):
        for name, seeds in curves.items():
            curve = mean_curve(seeds)
            if not curve:
                continue
            steps, mean, low, high = zip(*curve)
            ax.plot(steps, mean, label=f"{name} ({len(seeds)} seeds)")
            ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_title(f"{task}: held-out accuracy (mean, min-max over seeds)")
        ax.set_xlabel("RL step")
        ax.set_ylabel("greedy accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="arithmetic,linear")
    parser.add_argument("--algorithms", default="grpo,rlsd,opsd,opd")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--teacher-steps", type=int, default=1500,
                        help="OPD teacher's SFT steps (step-budgeted so a busy machine does not weaken it)")
    parser.add_argument("--privileged-fraction", type=float, default=0.0,
                        help="warm start also on this share of rows with the reference in the prompt, so the tiny "
                             "model can use privileged context (as instruction-tuned LLMs can); 0: plain SFT")
    parser.add_argument("--student-budget-s", type=float, default=150.0,
                        help="student warm-start time limit (it stops earlier once in the 0.3-0.5 accuracy band)")
    parser.add_argument("--ablation", action="store_true", help="RLSD variants instead of algorithms (first task)")
    parser.add_argument("--quick", action="store_true", help="smoke: 1 task, grpo+rlsd, 1 seed, 4 steps")
    parser.add_argument("--out", default="benchmarks/results/learning")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.algorithms, args.seeds, args.steps = "arithmetic", "grpo,rlsd", "0", 4
        args.out = args.out if args.out != "benchmarks/results/learning" else "benchmarks/results/learning-quick"
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = {name: ("rlsd", fields) for name, fields in ABLATIONS.items()} if args.ablation else \
        {name: (name, {}) for name in args.algorithms.split(",") if name}
    if args.ablation:
        tasks = tasks[:1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    all_curves: dict[str, dict[str, list]] = {}
    diagnostics: dict[str, dict] = {}
    tables = []
    for task in tasks:
        student = warm_start(task, out / f"warmstart-{task}", seed=0, progress=not args.quick,
                             **({"time_budget_s": 30.0, "max_steps": 200, "num_eval_rows": 32} if args.quick
                                else {"target_accuracy": (0.3, 0.5), "time_budget_s": args.student_budget_s,
                                      "privileged_fraction": args.privileged_fraction}))
        print(f"[{task}] student warm start: held-out accuracy {student.accuracy:.2f}", flush=True)
        diagnostics[task] = {"student_accuracy": student.accuracy, "student_params": student.num_parameters,
                             "student_with_privileged_context": self_teacher_accuracy(task, student.output_dir)}
        print(f"[{task}] the same model with answer + solution in its prompt (the self-teacher's view): "
              f"{diagnostics[task]['student_with_privileged_context']:.2f}", flush=True)
        teacher_dir = None
        if any(algorithm == "opd" for algorithm, _ in variants.values()):
            teacher = warm_start(task, out / f"teacher-{task}", seed=0, hidden_size=256, num_layers=4,
                                 target_accuracy=(0.6, 0.95), max_steps=args.teacher_steps,
                                 time_budget_s=60.0 if args.quick else 4 * 3600.0)
            teacher_dir = teacher.output_dir
            print(f"[{task}] OPD teacher ({teacher.num_parameters} params): accuracy {teacher.accuracy:.2f}")
            diagnostics[task].update(opd_teacher_accuracy=teacher.accuracy, opd_teacher_params=teacher.num_parameters,
                                     opd_teacher_sft_steps=teacher.steps)
        curves: dict[str, list] = {}
        for name, (algorithm, fields) in variants.items():
            for seed in seeds:
                run = quickstart_run(task, student.output_dir, algorithm, args.steps, seed, fast=args.quick)
                run["training"].update(copy.deepcopy(fields))
                run["training"]["disable_tqdm"] = True
                if algorithm == "opd":
                    run["training"]["teacher_model"] = teacher_dir
                print(f"[{task}] {name} seed {seed}", flush=True)
                curves.setdefault(name, []).append(run_once(run, out / task / name.replace("=", "-") / f"seed{seed}"))
        all_curves[task] = curves
        baseline = "grpo" if "grpo" in curves else next(iter(curves))
        tables.append(table_markdown(task, summarize(curves, baseline=baseline), diagnostics[task], baseline))
        print(tables[-1], flush=True)

    (out / "curves.json").write_text(json.dumps(all_curves, indent=1))
    (out / "diagnostics.json").write_text(json.dumps(diagnostics, indent=1))
    plot(all_curves, out / "learning.png")
    header = (f"Held-out greedy accuracy; {args.steps} RL steps; seeds {seeds}; student warm start with "
              f"privileged_fraction={args.privileged_fraction}; "
              f"this invocation took {time.perf_counter() - started:.0f}s "
              "(runs finished earlier are reused, not rerun).\n\n")
    (out / "table.md").write_text(header + "\n".join(tables))
    print(f"wrote {out}/curves.json, learning.png, table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

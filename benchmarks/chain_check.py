"""Functional check of the long-horizon design on a GPU (about 3 minutes on one H200): not a result.

    python benchmarks/chain_check.py [--out /tmp/chain-check]

Warm-starts the tiny student on `chain` for SFT seeds 0 and 1 (reference-aware, band 0.3-0.5) and reports
where each landed and its self-teacher's view; then trains every variant of the comparison (and SDPO's
divergence/wording combinations) for 6 RL steps from the seed-0 warm start and prints held-out accuracy
before/after, step time and the teacher statistics, one JSON line per run. One seed and 6 steps: this shows
the design runs and the teacher signals have the expected sign, nothing about which method wins.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from rlsd.config import algorithm_variant
from rlsd.app.quickstart import quickstart_run, self_teacher_accuracy
from rlsd.app.report import load_metrics
from rlsd.app.run import train
from rlsd.app.warmstart import warm_start

KEYS = ("step_time", "reward", "teacher/time_frac", "teacher/contrast_time_frac", "rlsd/delta_mean",
        "rlsd/clip_high_frac", "distill/divergence", "distill/sampled_advantage", "sdpo/peer_demo_frac")
TRL_WORDING, REFERENCE_WORDING = None, "{prompt}\n\nA reference solution (for grading, do not copy): {demonstration}"
RUNS = [(name, {}) for name in ("grpo", "rlsd", "rlsd+contrast", "opsd", "grpo+opsd")] + [
    (f"sdpo/{divergence}/{'trl' if wording is None else 'reference'}-wording",
     {"distill_divergence": divergence, "sdpo_template": wording})
    for divergence in ("forward_kl", "sampled_token") for wording in (TRL_WORDING, REFERENCE_WORDING)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/chain-check")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    for sft_seed in (0, 1):
        started = time.perf_counter()
        ws = warm_start("chain", f"{args.out}/warmstart-sft{sft_seed}", seed=sft_seed, time_budget_s=300,
                        max_steps=6000, eval_every=25, target_accuracy=(0.3, 0.5), privileged_fraction=0.5,
                        progress=False)
        view = self_teacher_accuracy("chain", ws.output_dir)
        print(json.dumps({"warm_start": sft_seed, "accuracy": ws.accuracy, "in_band": ws.in_band, "sft_steps": ws.steps,
                          "seconds": round(time.perf_counter() - started), "with_reference": view}), flush=True)
    for name, extra in RUNS:
        algorithm, fields = algorithm_variant(name.split("/")[0])
        run = quickstart_run("chain", f"{args.out}/warmstart-sft0", algorithm, args.steps, 0, fast=False)
        run.update(task_eval_size=100, eval_every=args.steps)
        run["training"].update(fields, **extra, disable_tqdm=True, logging_steps=1)
        out = f"{args.out}/{name.replace('/', '-')}"
        train(run, output_dir=out)
        records = load_metrics(out)
        logs = [r for r in records if "loss" in r]
        means = {k: round(statistics.mean(r[k] for r in logs if k in r), 4) for k in KEYS if any(k in r for r in logs)}
        print(json.dumps({"run": name, "heldout": [r["eval/accuracy"] for r in records if "eval/accuracy" in r],
                          **means}), flush=True)


if __name__ == "__main__":
    main()

"""The learning benchmark's statistics: intervals, paired differences, steps to the baseline's final."""

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from learning_stats import (  # noqa: E402
    baseline_target, mean_ci, paired_differences, steps_to_reach, summarize, task_markdown, mean_curve)


def test_mean_ci_is_the_t_interval():
    mean, half = mean_ci([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and half == pytest.approx(4.303 * 0.1 / 3 ** 0.5)
    assert mean_ci([0.3]) == (0.3, None) and mean_ci([]) == (None, None)


def test_steps_to_baseline_final_is_none_when_grpo_never_improved():
    flat = [[(0, 0.3), (10, 0.3), (20, 0.3)], [(0, 0.3), (10, 0.2), (20, 0.3)]]
    assert baseline_target(flat) is None, "GRPO ended where it started: nothing to reach (it used to read 0)"
    rising = [[(0, 0.3), (10, 0.35), (20, 0.4)]]
    assert baseline_target(rising) == pytest.approx(0.4)
    assert steps_to_reach(mean_curve([[(0, 0.5), (10, 0.45), (20, 0.6)]]), 0.4) == 10, "step 0 never counts"
    rows = summarize({"grpo": {("a", 0): flat[0]}, "rlsd": {("a", 0): [(0, 0.3), (10, 0.5), (20, 0.4)]}})
    assert [r["steps_to_baseline_final"] for r in rows] == [None, None]
    rows = summarize({"grpo": {("a", 0): rising[0]}, "rlsd": {("a", 0): [(0, 0.3), (10, 0.45), (20, 0.5)]}})
    assert [r["steps_to_baseline_final"] for r in rows] == [20, 10]


def test_paired_differences_pair_by_warm_start_and_seed():
    runs = {
        "grpo": {("sft0", 0): [(0, 0.3), (10, 0.40)], ("sft0", 1): [(0, 0.3), (10, 0.50)], ("sft1", 0): [(0, 0.3), (10, 0.30)]},
        "rlsd": {("sft0", 0): [(0, 0.3), (10, 0.45)], ("sft0", 1): [(0, 0.3), (10, 0.48)], ("sft1", 0): [(0, 0.3), (10, 0.40)]},
    }
    pair = paired_differences(runs, "rlsd")
    diffs = [0.05, -0.02, 0.10]
    assert pair["pairs"] == 3 and pair["final_wins"] == 2 and pair["final_losses"] == 1
    assert pair["final_diff"] == pytest.approx(statistics.mean(diffs))
    assert pair["final_ci"] == pytest.approx(4.303 * statistics.stdev(diffs) / 3 ** 0.5)
    summary = summarize(runs)
    assert summary[1]["final_min"] == pytest.approx(0.40) and summary[1]["final_max"] == pytest.approx(0.48)
    table = task_markdown("chain", [{"name": "sft0", "accuracy": 0.3, "in_band": True, "steps": 5}], summary,
                          {"sft0": summary, "sft1": summary}, [pair], {})
    assert "| rlsd | 3 | +" not in table and "0.043 ± " in table and "| sft0 | sft1 |" in table


def test_full_design_is_one_command_and_variants_resolve():
    import learning

    args = learning.parse_args(["--full"])
    assert args.plan == {"chain": "grpo,rlsd,opsd,sdpo,grpo+opsd,rlsd+contrast", "arithmetic": "grpo,rlsd"}
    assert (args.seeds, args.warm_starts, args.eval_size, args.privileged_fraction) == ("0,1,2,3,4", "0,1", 500, 0.5)
    assert args.student_eval_every == 25 and args.out == "benchmarks/results/learning-full"
    variants = learning.variants_from(args.plan["chain"], ablation=False)
    assert variants["rlsd+contrast"] == ("rlsd", {"teacher_contrast": "wrong_reference"})
    assert variants["sdpo"] == ("sdpo", {"distill_divergence": "sampled_token"}), "SDPO as TRL runs it"
    assert variants["grpo+opsd"] == ("grpo+opsd", {})
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        learning.variants_from("grpo,ppo", ablation=False)


def test_parallel_jobs_keep_every_warm_start_setting():
    """learning_jobs.py hands each job the parent's warm-start settings (eval interval, reproducible mode):
    a dropped flag would give each job a different warm start than the one asked for."""
    import learning
    import learning_jobs

    args = learning.parse_args(["--full", "--warm-start-threads", "2"])
    assert args.reproducible_warm_start
    child = learning.parse_args(learning_jobs.child_args(args, "chain", "rlsd", "0", "1"))
    for field in ("student_eval_every", "student_budget_s", "student_max_steps", "band", "eval_size",
                  "privileged_fraction", "reproducible_warm_start", "warm_start_threads", "steps"):
        assert getattr(child, field) == getattr(args, field), field
    plain = learning.parse_args(learning_jobs.child_args(learning.parse_args([]), "arithmetic", "grpo", "0", "0"))
    assert not plain.reproducible_warm_start

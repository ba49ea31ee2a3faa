"""The learning benchmark's statistics: intervals, paired differences, steps to the baseline's final."""

import json
import shutil
import signal
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
    assert pair["curve_diff"] == pytest.approx(statistics.mean(diffs))  # one evaluation after step 0: the final
    faster = {"grpo": {("a", 0): [(0, 0.3), (10, 0.3), (20, 0.6)]}, "rlsd": {("a", 0): [(0, 0.3), (10, 0.5), (20, 0.6)]}}
    early = paired_differences(faster, "rlsd")
    assert early["final_diff"] == 0 and early["curve_diff"] == pytest.approx(0.1) and early["curve_wins"] == 1
    summary = summarize(runs)
    assert summary[1]["final_min"] == pytest.approx(0.40) and summary[1]["final_max"] == pytest.approx(0.48)
    table = task_markdown("chain", [{"name": "sft0", "accuracy": 0.3, "in_band": True, "steps": 5}], summary,
                          {"sft0": summary, "sft1": summary}, [pair], {})
    assert "| rlsd | 3 | +" not in table and "0.043 ± " in table and "| sft0 | sft1 |" in table


def test_full_design_is_one_command_and_variants_resolve():
    import learning

    args = learning.parse_args(["--full"])
    assert args.plan == {"chain": "grpo,rlsd,rlsd+contrast,opsd@0,sdpo@0,grpo+opsd@0,rlcsd@0,rlsd-eps_w=0.5",
                         "arithmetic": "grpo,rlsd"}
    assert (args.seeds, args.warm_starts, args.eval_size, args.privileged_fraction) == ("0,1,2,3,4", "0,1", 500, 0.5)
    assert args.student_eval_every == 25 and args.out == "benchmarks/results/learning-full"
    assert args.warm_start_dir == "benchmarks/warmstarts", "the committed warm starts, the same on every machine"
    variants = learning.variants_from(args.plan["chain"], ablation=False)
    assert variants["rlsd+contrast"] == ("rlsd", {"teacher_contrast": "wrong_reference"})
    assert variants["sdpo"] == ("sdpo", {"distill_divergence": "sampled_token"}), "SDPO as TRL runs it"
    assert variants["grpo+opsd"] == ("grpo+opsd", {})
    assert variants["rlsd-eps_w=0.5"] == ("rlsd", {"rlsd_eps_w": 0.5}), "an ablation of RLSD as a plan variant"
    assert learning.warm_start_subsets(args.plan["chain"]) == {
        "grpo": None, "rlsd": None, "rlsd+contrast": None, "opsd": {0}, "sdpo": {0}, "grpo+opsd": {0}, "rlcsd": {0},
        "rlsd-eps_w=0.5": None}
    assert learning.parse_args(["--full", "--tasks", "chain"]).plan == {"chain": args.plan["chain"]}
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        learning.variants_from("grpo,ppo", ablation=False)
    with pytest.raises(ValueError, match="unknown RLSD ablation 'rlsd-eps_w=9'.*rlsd-eps_w=0.5"):
        learning.variants_from("rlsd-eps_w=9", ablation=False)


def recording_pool(started: list, builder_running=lambda name: False):
    """learning_jobs.Pool that records the runs it is asked to start (name, argv, result) instead of starting them;
    `builder_running(name)` plays a warm-start builder that is still at work."""
    import learning_jobs

    class RecordingPool(learning_jobs.Pool):
        def start(self, name, argv, result=None):
            if self.launching():
                started.append((name, argv, result))

        def wait(self):
            pass

        def is_running(self, name):
            return builder_running(name)

    return RecordingPool


def summary_is_skipped(monkeypatch):
    import learning_jobs

    monkeypatch.setattr(learning_jobs.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 0})())


def test_parallel_jobs_run_the_design_grid_and_only_what_has_no_result(tmp_path, monkeypatch):
    """learning_jobs.py launches one job per (task, warm start, variant, seed) of the design (name@0 variants from
    the first warm start only), skips runs whose result file exists, and commits nothing unless asked."""
    import learning
    import learning_jobs

    started = []
    monkeypatch.setattr(learning_jobs, "Pool", recording_pool(started))
    summary_is_skipped(monkeypatch)
    out = tmp_path / "full"
    done = learning.result_path(out, "chain", "sft1", "rlsd+contrast", 4)
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    assert learning_jobs.main(["--jobs", "2", "--", "--full", "--out", str(out)]) == 0
    names = {name for name, _, _ in started}
    assert len(names) == len(started) == 4 * 5 * 2 + 4 * 5 + 2 * 5 * 2 - 1  # the design, less the finished run
    assert "chain-sft1-rlsd-eps_w=0.5-seed0" in names
    assert "chain-sft1-rlsd+contrast-seed4" not in names and "chain-sft0-opsd-seed3" in names
    assert not any("-sft1-opsd-" in n or "-sft1-sdpo-" in n or "-sft1-grpo+opsd-" in n for n in names)
    name, argv, result = next(item for item in started if item[0] == "chain-sft1-rlsd-seed2")
    child = learning.parse_args(argv)
    assert child.warm_start_dir == "benchmarks/warmstarts" and child.eval_size == 500
    assert (child.tasks, child.algorithms, child.seeds, child.warm_starts) == ("chain", "rlsd", "2", "1")
    assert result == learning.result_path(out, "chain", "sft1", "rlsd", 2)


def test_first_variants_get_every_seed_before_the_others(tmp_path, monkeypatch):
    """--first grpo,rlsd runs the paired comparison over all seeds and warm starts before any other method, so a
    session that stops early leaves whole seeds of the headline question rather than one seed of every method."""
    import learning_jobs

    records = []
    monkeypatch.setattr(learning_jobs, "Pool", recording_pool(records))
    summary_is_skipped(monkeypatch)
    argv = ["--first", "grpo,rlsd", "--", "--full", "--out", str(tmp_path / "full"),
            "--warm-start-dir", str(tmp_path / "warmstarts")]
    assert learning_jobs.main(argv) == 0
    started = [name for name, _, _ in records]
    # phase 1: one builder per missing warm start (chain 0/1, arithmetic 0/1: all missing here), then the rest
    variants = [name.split("-", 2)[2].rsplit("-seed", 1)[0] for name in started[4:]]
    assert len(started) == 4 * 5 * 2 + 4 * 5 + 2 * 5 * 2
    assert {name.split("-")[2] for name in started[:4]} <= {"grpo", "rlsd"}
    paired = 2 * 5 * 2 + 2 * 5 * 2 - 4  # grpo and rlsd on both tasks, less the 4 started as warm-start builders
    assert set(variants[:paired]) == {"grpo", "rlsd"} and "rlsd" not in variants[paired:]
    assert "grpo" not in variants[paired:] and variants[paired:].count("rlsd+contrast") == 10


def test_runs_wait_only_for_their_own_missing_warm_start(tmp_path, monkeypatch):
    """A missing warm start is built by one run; the runs that need it wait for that run, the others start beside it
    (a 25-minute build must not leave the second core idle)."""
    import learning_jobs

    records = []

    def builder_running(name):
        return name == "arithmetic-sft1-grpo-seed0" and len(records) < 12  # the build ends after 11 other starts

    monkeypatch.setattr(learning_jobs, "Pool", recording_pool(records, builder_running))
    monkeypatch.setattr(learning_jobs, "warm_start_exists", lambda args, task, ws: (task, ws) != ("arithmetic", "1"))
    summary_is_skipped(monkeypatch)
    assert learning_jobs.main(["--first", "grpo,rlsd", "--", "--full", "--out", str(tmp_path / "full")]) == 0
    started = [name for name, _, _ in records]
    assert started[0] == "arithmetic-sft1-grpo-seed0" and len(started) == 80
    assert not any(name.startswith("arithmetic-sft1-") for name in started[1:12])
    assert started[12].startswith("arithmetic-sft1-")  # first in line once its warm start exists


def test_a_signal_starts_nothing_new_and_lets_the_running_runs_finish(tmp_path, monkeypatch):
    """The first SIGTERM/Ctrl-C drains: no run starts after it, the running ones are waited for (not killed), and the
    summary is still written; the handlers are the caller's again afterwards."""
    import learning_jobs

    started, events = [], []

    class SignalledPool(recording_pool(started)):
        def start(self, name, argv, result=None):
            super().start(name, argv, result)
            if len(started) == 5 and not self.draining:
                signal.raise_signal(signal.SIGTERM)  # as a cluster's preemption notice would

        def wait(self):
            events.append(("wait", len(started)))

        def stop(self):
            events.append("stop")

    monkeypatch.setattr(learning_jobs, "Pool", SignalledPool)
    monkeypatch.setattr(learning_jobs, "warm_start_exists", lambda args, task, ws: True)
    monkeypatch.setattr(learning_jobs.subprocess, "run", lambda *a, **k: events.append("summary") or
                        type("Done", (), {"returncode": 0})())
    before = signal.getsignal(signal.SIGTERM)
    assert learning_jobs.main(["--", "--full", "--out", str(tmp_path / "full")]) == 0
    assert len(started) == 5 and events == [("wait", 5), "summary"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_finished_run_is_its_result_file(tmp_path, monkeypatch):
    """run_once trains only when the run has no result; the result file alone (no run directory: another machine,
    an earlier session) is enough to count the run and summarise it."""
    import learning

    calls = []

    def fake_train(run, output_dir):
        calls.append(output_dir)
        output_dir.mkdir(parents=True)
        (output_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
            {"step": 0, "eval/accuracy": 0.3}, {"step": 5, "rlsd/delta_mean": -0.2, "rlsd/clip_high_frac": 0.1,
                                                "reward": 0.4}, {"step": 10, "eval/accuracy": 0.4}]))

    monkeypatch.setattr(learning, "train", fake_train)
    result_file = learning.result_path(tmp_path, "chain", "sft0", "rlsd", 0)
    first = learning.run_once({}, tmp_path / "run", result_file)
    assert calls == [tmp_path / "run"] and first["curve"] == [(0, 0.3), (10, 0.4)]
    assert first["training_means"]["rlsd/delta_mean"] == -0.2 and first["traces"]["reward"] == [(5, 0.4)]
    assert first["seconds"] is not None and first["machine"]["threads"] >= 1
    import shutil

    shutil.rmtree(tmp_path / "run")
    again = learning.run_once({}, tmp_path / "run", result_file)
    assert len(calls) == 1 and again["curve"] == [[0, 0.3], [10, 0.4]]  # read back from the JSON file


def test_summary_entry_has_the_fixed_shape():
    import learning

    runs = {"grpo": {("sft0", 0): [(0, 0.3), (100, 0.4)], ("sft0", 1): [(0, 0.3), (100, 0.44)]},
            "rlsd": {("sft0", 0): [(0, 0.3), (100, 0.46)], ("sft0", 1): [(0, 0.3), (100, 0.42)]}}
    rows = summarize(runs)
    pair = paired_differences(runs, "rlsd")
    rlsd_row = next(r for r in rows if r["variant"] == "rlsd")
    rlsd_row["seeds"] = 2
    entry = learning.summary_entry(rlsd_row, pair, ["sft0"], 500)
    assert entry["n_seeds"] == 2 and entry["warm_starts"] == ["sft0"] and entry["heldout_size"] == 500
    assert entry["final_mean"] == pytest.approx(0.44) and len(entry["final_ci95"]) == 2
    assert entry["final_ci95"][0] < 0.44 < entry["final_ci95"][1]
    paired = entry["paired_vs_grpo"]
    assert paired["mean"] == pytest.approx(0.02) and paired["wins"] == 1 and paired["n"] == 2
    assert paired["ci95"][0] < 0.02 < paired["ci95"][1]
    assert "paired_vs_rlsd" not in entry
    runs["rlsd-eps_w=0.5"] = {("sft0", 0): [(0, 0.3), (100, 0.50)], ("sft0", 1): [(0, 0.3), (100, 0.40)]}
    ablation_row = next(r for r in summarize(runs) if r["variant"] == "rlsd-eps_w=0.5")
    ablation_row["seeds"] = 2
    ablation = learning.summary_entry(ablation_row,
                                      paired_differences(runs, "rlsd-eps_w=0.5"), ["sft0"], 500,
                                      paired_differences(runs, "rlsd-eps_w=0.5", "rlsd"))
    assert ablation["paired_vs_rlsd"]["mean"] == pytest.approx(0.01) and ablation["paired_vs_rlsd"]["wins"] == 1
    assert set(ablation["paired_vs_rlsd"]) == set(ablation["paired_vs_grpo"])


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


def test_a_finished_result_is_committed_alone(tmp_path, monkeypatch):
    """learning_jobs.py --commit: each finished run's result file is committed by itself (whatever else is staged
    or changed in the checkout), so a stopped session loses nothing finished."""
    import subprocess

    import learning_jobs

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "other.txt").write_text("work in progress\n")
    git("add", "other.txt")
    result = tmp_path / "results" / "chain-sft0-rlsd-seed0.json"
    result.parent.mkdir()
    result.write_text('{"seconds": 12.5}\n')
    monkeypatch.chdir(tmp_path)
    learning_jobs.commit(result.relative_to(tmp_path), "learning-full: chain-sft0-rlsd-seed0 finished")
    assert git("log", "--format=%s").strip() == "learning-full: chain-sft0-rlsd-seed0 finished"
    assert git("show", "--name-only", "--format=").split() == ["results/chain-sft0-rlsd-seed0.json"]
    assert "A  other.txt" in git("status", "--short"), "what else was staged stays staged, uncommitted"


def test_committed_summary_is_what_the_committed_results_give(tmp_path):
    """The committed summary.json holds issue 20's whole design (5 seeds, 500 held-out problems, the warm starts
    listed, every algorithm but grpo paired with it), and rebuilding it from the committed per-run result files gives
    the same file: no number in it is written by hand."""
    import learning

    repo = Path(__file__).resolve().parents[1]
    committed = repo / "benchmarks/results/learning-full"
    summary = json.loads((committed / "summary.json").read_text())
    design = {"chain": {"grpo": 2, "rlsd": 2, "rlsd+contrast": 2, "opsd": 1, "sdpo": 1, "grpo+opsd": 1, "rlcsd": 1},
              "arithmetic": {"grpo": 2, "rlsd": 2}}
    for task, algorithms in design.items():
        for algorithm, n_warm_starts in algorithms.items():
            entry = summary[task][algorithm]
            assert entry["n_seeds"] == 5 and entry["heldout_size"] >= 500, (task, algorithm)
            assert entry["warm_starts"] == ["sft0", "sft1"][:n_warm_starts], (task, algorithm)
            assert entry["final_ci95"][0] <= entry["final_mean"] <= entry["final_ci95"][1]
            if algorithm != "grpo":
                assert entry["paired_vs_grpo"]["n"] == 5 * n_warm_starts, (task, algorithm)
    shutil.copytree(committed / "results", tmp_path / "results")
    argv = ["--full", "--only-finished", "--out", str(tmp_path), "--warm-start-dir", str(repo / "benchmarks/warmstarts")]
    assert learning.main(argv) == 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

"""Run reports from synthetic metrics.jsonl files: figures are real PNGs, the numbers are the hand-computed ones."""

import json

import pytest

from rlsd.app import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path, lines, config=None, truncated_tail=None):
    path.mkdir(parents=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if truncated_tail is not None:
        text += truncated_tail  # a run killed mid-write
    (path / "metrics.jsonl").write_text(text)
    if config is not None:
        (path / "run_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def runs(tmp_path):
    rlsd_lines = []
    for step in range(1, 7):
        rlsd_lines.append({
            "step": step, "epoch": step / 6, "loss": 0.1, "reward": 0.1 * step, "accuracy": 0.1 * step,
            "rlsd/weight_mean": 1.0 + 0.01 * step, "rlsd/clip_low_frac": 0.02, "rlsd/clip_high_frac": 0.03,
            "rlsd/sign_flips": 0, "teacher/time_frac": 0.1 * (step % 2 + 1), "completions/mean_length": 10 + step,
            "step_time": float(step), "memory/peak_mb": 100.0 + step,
        })
        if step % 2 == 0:
            rlsd_lines.append({"step": step, "eval/accuracy": {2: 0.2, 4: 0.5, 6: 0.4}[step]})
    rlsd = write_run(tmp_path / "run-rlsd", rlsd_lines, config={"algorithm": "rlsd", "rlsd_lambda": 1.0},
                     truncated_tail='{"step": 7, "reward": 99.0, "eval/acc')
    grpo_lines = [{"step": s, "reward": r, "step_time": 2.0, "memory/peak_mb": m}
                  for s, r, m in [(1, 0.0, 90.0), (2, 0.5, 95.0), (3, 1.0, 80.0)]]
    grpo_lines.insert(1, {"step": 1, "eval_accuracy": 0.3})  # HF Trainer's eval_ prefix is read too
    grpo = tmp_path / "grpo-dir"
    write_run(grpo, grpo_lines)
    (grpo / "config.yaml").write_text("model: tiny\ntraining:\n  algorithm: grpo\n")
    return rlsd, grpo


def is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


def test_load_metrics_skips_the_truncated_line(runs):
    rlsd, grpo = runs
    records = report.load_metrics(rlsd)
    assert len(records) == 9 and records[-1]["step"] == 6
    assert report.load_metrics(rlsd / "metrics.jsonl") == records
    assert report.load_metrics(rlsd.parent / "missing") == []
    assert report.run_label(rlsd) == "rlsd" and report.run_label(grpo) == "grpo"


def test_run_label_falls_back_to_the_directory_and_disambiguates(tmp_path):
    a = write_run(tmp_path / "a", [{"step": 1, "reward": 1.0}], config={"algorithm": "rlsd"})
    b = write_run(tmp_path / "b", [{"step": 1, "reward": 1.0}], config={"algorithm": "rlsd"})
    c = write_run(tmp_path / "plain", [{"step": 1, "reward": 1.0}])
    (c / "run_config.json").write_text("{not json")
    assert report.run_label(c) == "plain"
    assert report.run_labels([a, b, c]) == ["rlsd (a)", "rlsd (b)", "plain"]


def test_summary_numbers(runs):
    rlsd, grpo = runs
    summary = {row["run"]: row for row in report.summarize([rlsd, grpo])}
    r = summary["rlsd"]
    assert r["algorithm"] == "rlsd" and r["steps"] == 6 and r["num_logs"] == 9
    assert r["first_heldout_accuracy"] == pytest.approx(0.2)
    assert r["final_heldout_accuracy"] == pytest.approx(0.4)
    assert r["best_heldout_accuracy"] == pytest.approx(0.5)
    assert r["final_reward"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5)  # mean of the last 5 logs
    assert r["mean_step_time"] == pytest.approx(3.5)  # (1 + ... + 6) / 6
    assert r["peak_memory_mb"] == pytest.approx(106.0)
    assert r["mean_teacher_time_frac"] == pytest.approx((0.2 + 0.1) * 3 / 6)
    g = summary["grpo"]
    assert g["steps"] == 3 and g["final_reward"] == pytest.approx(0.5)
    assert g["first_heldout_accuracy"] == g["final_heldout_accuracy"] == g["best_heldout_accuracy"] == 0.3
    assert g["peak_memory_mb"] == 95.0 and g["mean_teacher_time_frac"] is None


def test_plots_are_png_files(runs, tmp_path):
    rlsd, grpo = runs
    out = report.plot_curves([rlsd, grpo], tmp_path / "figs" / "curves.png",
                             metrics=("eval/accuracy", "reward", "never/logged"))
    assert is_png(out)
    plots = report.plot_report([rlsd, grpo], tmp_path / "report")
    assert set(plots) == {"reward", "heldout_accuracy", "rlsd_weights", "teacher_time", "response_length"}
    assert all(is_png(p) for p in plots.values())
    assert report.plot_report([grpo], tmp_path / "grpo-only").keys() == {"reward", "heldout_accuracy"}


def test_report_writes_markdown_with_table_and_relative_links(runs, tmp_path):
    rlsd, grpo = runs
    result = report.report([rlsd, grpo], tmp_path / "out")
    text = result["markdown"].read_text()
    assert "| run | steps |" in text
    assert "| rlsd | 6 | 0.200 | 0.400 | 0.500 | 0.400 | 3.500 | 106 | 15.0% |" in text
    assert "| grpo | 3 | 0.300 | 0.300 | 0.300 | 0.500 | 2.000 | 95 | — |" in text
    assert "![curves](curves.png)" in text and "![rlsd_weights](rlsd_weights.png)" in text
    for path in result["plots"].values():
        assert is_png(path) and path.parent == tmp_path / "out"
    assert json.loads(result["summary_json"].read_text())[0]["run"] == "rlsd"
    # A page in another folder links the same figures by a relative path.
    page = report.write_markdown_summary([rlsd], tmp_path / "pages" / "r.md", title="One run",
                                         images=[result["plots"]["reward"]])
    assert "# One run" in page.read_text() and "](../out/reward.png)" in page.read_text()


def test_moving_average_is_a_trailing_mean_of_the_same_length():
    from rlsd.app.report import moving_average

    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([], 3) == []

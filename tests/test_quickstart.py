"""`rlsd quickstart --fast` end to end: warm start, RLSD and GRPO from it, plot and summary."""

import json

import pytest

from rlsd.app.cli import main


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a safety net for a loaded machine
def test_quickstart_fast_writes_parseable_outputs(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["algorithm"] for row in summary["runs"]] == ["rlsd", "grpo"]
    assert 0.0 <= summary["warm_start"]["accuracy"] <= 1.0
    assert 0.0 <= summary["warm_start"]["accuracy_with_reference"] <= 1.0
    settings = json.loads((out / "warmstart" / "warmstart.json").read_text())["settings"]
    assert settings["privileged_fraction"] == 0.5  # the self-teacher learned to read a reference
    for row in summary["runs"]:
        assert row["first_heldout_accuracy"] is not None and row["final_heldout_accuracy"] is not None
        assert row["steps"] == summary["steps"]
    rlsd_row = summary["runs"][0]
    assert 0.0 < rlsd_row["mean_teacher_time_frac"] < 1.0
    for algorithm in ("rlsd", "grpo"):
        lines = (out / algorithm / "metrics.jsonl").read_text().splitlines()
        assert all(isinstance(json.loads(line), dict) for line in lines)
    assert (out / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "warmstart" / "config.json").exists()
    text = (out / "summary.md").read_text()
    assert "| rlsd" in text and "| grpo" in text and "report/curves.png" in text
    assert "with the reference in the prompt" in text
    assert summary["credit_pages"] == ["report/credit-rlsd.html", "report/credit-grpo.html"]  # `rlsd inspect` pages
    assert "(report/credit-rlsd.html)" in text and (out / "report" / "credit-rlsd.html").is_file()
    assert "summary in" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a safety net for a loaded machine
def test_visual_quickstart_fast_trains_a_tiny_vlm(tmp_path):
    out = tmp_path / "qs"
    assert main(["quickstart", "--task", "shapes", "--fast", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["algorithm"] for row in summary["runs"]] == ["rlsd", "grpo"]
    assert all(row["steps"] == summary["steps"] == 3 for row in summary["runs"])
    config = json.loads((out / "warmstart" / "config.json").read_text())
    assert config["model_type"] == "llava"  # the warm start built a VLM with its processor
    assert (out / "warmstart" / "processor_config.json").exists()
    assert (out / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_full_quickstart_warm_start_is_a_fixed_deterministic_step_count():
    """The full arithmetic quickstart trains exactly WARM_START_STEPS steps, deterministically, on fixed threads;
    the time limit is only the safety cap; --fast keeps its short band-stopped warm start."""
    from rlsd.app.quickstart import QUICKSTART_THREADS, WARM_START_CAP_S, WARM_START_STEPS, reproducible_warm_start

    full = reproducible_warm_start("arithmetic", fast=False)
    assert full == {"num_threads": QUICKSTART_THREADS, "deterministic": True, "time_budget_s": WARM_START_CAP_S,
                    "fixed_steps": WARM_START_STEPS["arithmetic"]}
    assert "fixed_steps" not in reproducible_warm_start("arithmetic", fast=True)
    assert "fixed_steps" not in reproducible_warm_start("linear", fast=False)  # no count chosen: band-stopped
    assert reproducible_warm_start("shapes", fast=False) == {}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_starts_from_the_shipped_warm_start_and_can_retrain_it(tmp_path, monkeypatch, capsys):
    """With a shipped checkpoint for the task, the quickstart copies it (no SFT) and its record (accuracy, the
    self-teacher's view) is what the summary reports; --retrain-warm-start retrains it from the recorded settings
    and gets the same weights. A tiny stand-in replaces the real shipped checkpoint to keep this fast."""
    import torch
    from transformers import AutoModelForCausalLM

    import rlsd.app.quickstart as quickstart
    from rlsd.app.warmstart import load_result, save_result, warm_start

    shipped_root = tmp_path / "shipped"
    recipe = dict(seed=0, fixed_steps=4, num_threads=1, deterministic=True, privileged_fraction=0.5,
                  num_train_rows=64, num_eval_rows=4, hidden_size=32, num_layers=1, num_heads=2, batch_size=8,
                  max_new_tokens=8, warmup_steps=1, progress=False)
    warm_start("arithmetic", shipped_root / "arithmetic", **recipe)
    record = load_result(shipped_root / "arithmetic")
    record.accuracy_with_reference = 0.5
    save_result(record)
    monkeypatch.setattr(quickstart, "SHIPPED_WARM_STARTS", shipped_root)
    small = quickstart.budget("arithmetic", fast=True)
    monkeypatch.setattr(quickstart, "budget", lambda task, fast: small)

    out = tmp_path / "qs"
    assert main(["quickstart", "--steps", "1", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warm_start"]["origin"] == "shipped checkpoint"
    assert summary["warm_start"]["accuracy_with_reference"] == 0.5, "the recorded view, not measured again"
    assert (summary["warm_start"]["accuracy"], summary["warm_start"]["steps"]) == (record.accuracy, 4)
    assert (out / "warmstart" / "model.safetensors").read_bytes() == \
        (shipped_root / "arithmetic" / "model.safetensors").read_bytes()
    assert "warm start (shipped checkpoint)" in capsys.readouterr().out

    again = tmp_path / "qs-retrained"
    assert main(["quickstart", "--steps", "1", "--retrain-warm-start", "--output-dir", str(again)]) == 0
    retrained = load_result(again / "warmstart")
    assert retrained.settings == record.settings and not retrained.reused
    weights = [AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (shipped_root / "arithmetic",
                                                                               again / "warmstart")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "the recorded recipe reproduces it"
    assert json.loads((again / "summary.json").read_text())["warm_start"]["origin"] == "trained"

"""The committed warm starts: the quickstart's (shipped in the package) and the learning benchmark's.

Each is an ordinary HF directory plus `warmstart.json`: the settings that trained it, its held-out accuracy
(plain and with the reference in the prompt), the machine that trained it. Same files on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlsd.app.quickstart import SHIPPED_WARM_STARTS, shipped_warm_start  # noqa: E402
from rlsd.app.warmstart import FORMAT_VERSION, load_result, recorded_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_WARM_STARTS = ROOT / "benchmarks" / "warmstarts"
# The learning benchmark's design (issue 20): two warm starts (SFT seeds) per task.
BENCHMARK_NAMES = ("arithmetic-sft0", "arithmetic-sft1", "chain-sft0", "chain-sft1")


def _check_record(path: Path, task: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = load_result(path)
    assert record is not None, f"{path}: no finished warm start"
    assert record.task == task and record.settings["version"] == FORMAT_VERSION
    assert record.settings.get("privileged_fraction") == 0.5, "a self-teacher that can read a reference"
    assert record.settings.get("deterministic") and record.machine.get("cpu") and record.machine.get("torch")
    assert 0.0 < record.accuracy < 1.0 and record.accuracy_with_reference is not None
    assert record.accuracy_with_reference > record.accuracy, "the reference must help the self-teacher"
    assert recorded_arguments(record.settings)["seed"] == record.settings["seed"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.num_parameters() == record.num_parameters
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_the_quickstart_warm_start_is_shipped_with_the_package():
    path = shipped_warm_start("arithmetic")
    assert path == SHIPPED_WARM_STARTS / "arithmetic"
    _check_record(path, "arithmetic")
    record = load_result(path)
    assert record.in_band and record.settings["fixed_steps"] == record.steps, "the quickstart's fixed-step recipe"
    assert shipped_warm_start("linear") is None  # tasks without one train their warm start as before


@pytest.mark.slow
def test_the_shipped_warm_start_scores_what_it_records():
    """Re-evaluated here, the shipped checkpoint scores its recorded held-out accuracy (100 problems, greedy).
    Another kind of CPU may round a near-tie differently, hence one problem of slack."""
    from rlsd.app.evaluate import evaluate, load_model
    from rlsd.tasks import get_task

    path = shipped_warm_start("arithmetic")
    record = load_result(path)
    task = get_task("arithmetic")
    rows = task.make_rows(record.settings["num_eval_rows"], record.settings["seed"], record.settings["difficulty"],
                          "test")
    model, tokenizer = load_model(str(path))
    accuracy = evaluate(model, tokenizer, rows, task.reward, max_new_tokens=record.settings["max_new_tokens"],
                        batch_size=len(rows), progress=False)["accuracy"]
    assert abs(accuracy - record.accuracy) <= 1 / len(rows) + 1e-9


def test_the_learning_benchmark_warm_starts_are_committed():
    """Every committed benchmark warm start loads and carries its record. The design needs BENCHMARK_NAMES; the
    ones still training when a session ended are listed by `learning_jobs.py` and built by its next run."""
    committed = sorted(p.name for p in BENCHMARK_WARM_STARTS.iterdir() if (p / "warmstart.json").is_file())
    assert "arithmetic-sft0" in committed and set(committed) <= set(BENCHMARK_NAMES)
    for name in committed:
        _check_record(BENCHMARK_WARM_STARTS / name, name.rsplit("-", 1)[0])
        assert load_result(BENCHMARK_WARM_STARTS / name).in_band, f"{name}: inside the benchmark's accuracy band"

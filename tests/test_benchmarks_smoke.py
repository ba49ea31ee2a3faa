"""The cost benchmark runs end to end (tiny model, one measured step) and writes the ratios it promises."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cost_benchmark_smoke(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cost.py"), "--smoke", "--jobs", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1780,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("rlsd_vs_grpo/step_time", "rlsd_vs_grpo/peak_mb", "rlsd_vs_opd2x/step_time", "rlsd_vs_opd2x/peak_mb",
                "rlsd_vs_opd4x/step_time", "rlsd_vs_opd4x/peak_mb", "rlsd_vs_trl/step_time", "rlsd_vs_trl/peak_mb",
                "rlsd/teacher_time_frac"):
        assert isinstance(result["ratios"][key], float) and result["ratios"][key] > 0, key
    assert set(result["per_config"]) == {"grpo", "rlsd", "opd2x", "opd4x", "trl"}
    assert result["per_config"]["rlsd"]["phases_mean"]["teacher_forward"] > 0
    assert "teacher_forward" not in result["per_config"]["grpo"]["phases_mean"]
    assert "rlsd_vs_grpo/step_time" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cost_benchmark_smoke_with_a_lora_student(tmp_path):
    out = tmp_path / "cost-lora.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cost.py"), "--smoke", "--lora", "--configs",
         "grpo,rlsd,opd2x,noshare", "--jobs", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1780,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["meta"]["lora"]["r"] == 16 and "LoRA r=16" in proc.stdout
    student_params = result["meta"]["models"]["student"]["params"]
    for run in result["raw"]:  # only the adapters train; the base (and OPD's teacher) stay frozen
        assert 0 < run["trainable_params"] < student_params, run["name"]
    assert isinstance(result["ratios"]["rlsd_vs_opd2x/peak_mb"], float)
    assert result["ratios"]["rlsd_vs_noshare/step_time"] > 0  # shared-prefix teacher pass vs one forward per row


@pytest.mark.slow
@pytest.mark.timeout(3000)  # a safety net for a loaded machine (about 4 minutes alone), not an assertion
def test_learning_benchmark_quick(tmp_path):
    """The smoke runs the --full design's machinery: a warm-start directory (built here since it is empty), one
    result file per run, the fixed-shape summary.json; a second invocation reuses every finished run."""
    out, warm_starts = tmp_path / "learning", tmp_path / "warmstarts"
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick", "--out", str(out),
               "--warm-start-dir", str(warm_starts)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=2000, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves["arithmetic"]) == {"grpo", "rlsd", "sdpo", "grpo+opsd", "rlcsd"}
    for seeds in curves["arithmetic"].values():
        steps = [step for step, _ in seeds[0]]
        assert steps[0] == 0 and steps[-1] == 3, "held-out accuracy before RL and after the last step"
    assert (out / "learning.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "teacher.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "table.md").read_text()
    assert "| rlsd | 1 |" in table and "| sdpo | 1 |" in table and "| grpo+opsd | 1 |" in table
    assert "| rlcsd | 1 |" in table
    assert "5 of 5 planned runs finished" in table
    summary = json.loads((out / "summary.json").read_text())["arithmetic"]
    assert set(summary) == {"grpo", "rlsd", "sdpo", "grpo+opsd", "rlcsd"} and "paired_vs_grpo" not in summary["grpo"]
    for name in ("rlsd", "sdpo", "grpo+opsd", "rlcsd"):
        entry = summary[name]
        assert entry["n_seeds"] == 1 and entry["warm_starts"] == ["sft0"] and entry["heldout_size"] == 32
        assert 0.0 <= entry["final_mean"] <= 1.0 and entry["paired_vs_grpo"]["n"] == 1
    details = json.loads((out / "details.json").read_text())["arithmetic"]
    assert details["warm_starts"][0]["with_reference"] is not None
    runs = json.loads((out / "runs.json").read_text())
    sdpo_means = next(r["training_means"] for r in runs if r["variant"] == "sdpo")
    assert "sdpo/peer_demo_frac" in sdpo_means and "distill/sampled_advantage" in sdpo_means
    results = sorted(p.name for p in (out / "results").iterdir())
    variants = ("grpo", "grpo+opsd", "rlsd", "sdpo", "rlcsd")
    assert results == sorted(f"arithmetic-sft0-{v}-seed0.json" for v in variants)
    assert json.loads((warm_starts / "arithmetic-sft0" / "warmstart.json").read_text())["accuracy_with_reference"] \
        is not None, "the self-teacher's view is recorded beside the warm start"

    for run_dir in out.glob("arithmetic*"):  # another machine: only the committed files are there
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (out / "arithmetic").exists(), "finished runs are read from their result files, not retrained"
    assert json.loads((out / "summary.json").read_text())["arithmetic"] == summary


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_gpu_check_vlm_smoke(tmp_path):
    """The Qwen3-VL GPU check's CPU variant, so that the script cannot rot between GPU runs."""
    out = tmp_path / "vlm"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check_vlm.py"), "--smoke",
                             "--algorithms", "grpo,rlsd", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=2880,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "gpu_check_vlm.json").read_text())
    assert [r["algorithm"] for r in summary["results"]] == ["grpo", "rlsd"]
    assert all(r["pixel_values_in_batch"] and r["steps"] == 2 for r in summary["results"])
    assert summary["results"][1]["teacher_time_frac"] > 0


@pytest.mark.slow
@pytest.mark.timeout(2000)
def test_gpu_check_smoke_runs_every_part_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --smoke: the GPU check's code path on a tiny model, so it cannot rot before a GPU run."""
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1880,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    teacher = result["teacher_pass"]
    assert teacher["max_abs_logp_diff"] < 1e-4 and teacher["shared_seconds"] > 0 and teacher["unshared_seconds"] > 0
    assert result["train"]["all_finite"] and len(result["train"]["steps"]) == 2
    assert result["train_vllm"].startswith("skipped")
    assert set(result["cost"]["per_config"]) == {"grpo", "rlsd", "opd2x"}
    assert result["cost"]["per_config"]["rlsd"]["student_prompt_tokens"] == 64, "prompts sized to --prompt tokens"
    for key in ("rlsd_vs_grpo/step_time", "rlsd_vs_grpo/peak_mb", "rlsd_vs_opd2x/step_time", "rlsd/teacher_time_frac"):
        assert result["cost"]["ratios"][key] > 0, key
    assert "shared prefix" in (out / "gpu_check.txt").read_text()


def _credit_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("credit_benchmark", ROOT / "benchmarks" / "credit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_credit_benchmark_corrupts_exactly_one_intermediate_step():
    import random

    corrupt = _credit_benchmark().corrupt
    solution = "36+38=74\n74-14=60\n60-41=19\nAnswer: 19"
    rng = random.Random(0)
    for _ in range(20):
        text, span, after = corrupt(solution, rng)
        wrong_lines, right_lines = text.split("\n"), solution.split("\n")
        k = text[:span[0]].count("\n")
        assert k < 2, "never the last step"
        assert wrong_lines[:k] == right_lines[:k], "lines before the error are the reference's"
        assert text[span[0]:span[1]] == wrong_lines[k].split("=")[1] != right_lines[k].split("=")[1]
        assert text[after[0]:].startswith("\n") and wrong_lines[-1] != right_lines[-1], "the error reaches the answer"
        for line in wrong_lines[k + 1:-1]:  # later steps are computed correctly from the wrong value
            left, result = line.split("=")
            assert eval(left) == int(result)
    assert corrupt("3+4=7\nAnswer: 7", rng) is None  # no intermediate step to corrupt


@pytest.mark.timeout(1800)
def test_credit_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "credit.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1780,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "credit.json").read_text())
    assert result["meta"]["reward_check"] == {"wrong": 0.0, "right": 1.0}
    for version in ("wrong", "right"):
        summary = result["summary"][version]
        assert summary["examples"] == 16 and 0 < summary["span_token_share_mean"] < 1
        token_shares = sum(summary["regions"][r]["token_share_mean"] for r in ("before", "span", "after"))
        assert abs(token_shares - 1.0) < 1e-6
    for picture in ("credit.png", "credit-example.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_data_load_benchmark_smoke(tmp_path):
    out = tmp_path / "data_load.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_load.py"), "--rows", "2000", "--repeats", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1780, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {r["kind"]: r["rows"] for r in result["runs"]} == {"datasets": 2000, "rlsd": 2000}
    assert result["files_written_next_to_data"] == [] and result["time_ratio"] > 0
    assert "targets:" in proc.stdout

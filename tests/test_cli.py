"""The `rlsd` command line and run directories: configs, overrides, errors, resume, compare and report."""

import json
import re

import pytest
import yaml
from transformers import TrainerCallback

from rlsd.app.cli import main
from rlsd.app.run_config import load_run_config
from rlsd.app.run import train


REWARD_FILE = """
def digit_share(prompts, completions, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
"""


def write_config(path, model_dir, **training):
    rewards = path.parent / "my_rewards.py"
    rewards.write_text(REWARD_FILE)
    config = {
        "model": model_dir,
        "task": "arithmetic",
        "rewards": [f"{rewards}:digit_share"],  # dense, so that a random tiny model gets a learning signal
        "task_train_size": 32,
        "task_eval_size": 4,
        "eval_every": 2,
        "eval_max_new_tokens": 16,
        "samples_every": 1,
        "training": {
            "algorithm": "rlsd",
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "num_generations": 4,
            "max_completion_length": 16,
            "learning_rate": 1e-3,
            "save_strategy": "no",
            "report_to": [],
            "seed": 0,
            "disable_tqdm": True,
            **training,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_overrides_reach_every_layer(tmp_path):
    config = write_config(tmp_path / "run.yaml", "m")
    run = load_run_config(str(config), ["learning_rate=3e-4", "rlsd_eps_w=0.1", "lora.r=8", "task=linear",
                                        "training.max_steps=7", "gradient_checkpointing=true"])
    assert run["task"] == "linear" and run["lora"] == {"r": 8}
    training = run["training"]
    assert training["learning_rate"] == 3e-4 and training["rlsd_eps_w"] == 0.1 and training["max_steps"] == 7
    assert training["gradient_checkpointing"] is True
    assert training["algorithm"] == "rlsd", "keys not overridden stay as the file says"


def test_yaml_scientific_notation_becomes_a_number(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nlearning_rate: 1e-5\ntraining:\n  warmup_steps: '10'\n")
    training = load_run_config(str(path))["training"]
    assert training["learning_rate"] == 1e-5 and training["warmup_steps"] == 10


def test_train_writes_a_complete_run_directory(tiny_model_dir, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--output-dir", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_logs] == [1, 2]
    assert all(m["rlsd/sign_flips"] == 0 for m in train_logs)
    assert "rewards/digit_share/mean" in train_logs[0], "the custom reward from a file path is used"
    assert any("eval/accuracy" in m for m in metrics), "held-out accuracy is logged during training"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all({"step", "source", "prompt", "completion", "reward"} <= s.keys() for s in samples)
    assert {s["source"] for s in samples} == {"train", "held_out"}
    credit = [json.loads(line) for line in (out / "credit.jsonl").read_text().splitlines()]
    assert [r["step"] for r in credit] == [1, 2] and credit[0]["reference"]["answer"]  # for `rlsd inspect`
    assert yaml.safe_load((out / "config.yaml").read_text())["task"] == "arithmetic"
    assert json.loads((out / "run_config.json").read_text())["algorithm"] == "rlsd"
    card = (out / "README.md").read_text()
    assert "rlsd" in card
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "learnin_rate=1e-3"], "unknown key 'learnin_rate'; did you mean learning_rate"),
        (["--set", "rewards=[maths]"], "unknown reward 'maths'"),
        (["--model", "/no/such/model"], "model path not found: /no/such/model"),
        (["--output-dir", "/proc/rlsd-not-writable"], "is not writable"),
        (["--set", "algorithm=ppo"], "RLSDConfig.algorithm: unknown algorithm 'ppo'"),
    ],
)
def test_user_errors_are_one_clear_line(tiny_model_dir, tmp_path, capsys, args, message):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir)
    code = main(["train", "--config", str(config), "--output-dir", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(capsys):
    assert main(["train", "--config", "/no/such.yaml"]) == 2
    assert "config file not found: /no/such.yaml" in capsys.readouterr().err


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("teacher_mode", ["ema"])
def test_resumed_run_matches_an_uninterrupted_one(tiny_model_dir, tmp_path, teacher_mode):
    run = load_run_config(str(write_config(tmp_path / "run.yaml", tiny_model_dir, max_steps=4, save_strategy="steps",
                                           save_steps=2, teacher_mode=teacher_mode)), ["eval_every=0"])
    straight = train(run, output_dir=tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    train(run, output_dir=interrupted, extra_callbacks=[StopAfter(2)])
    assert (interrupted / "checkpoint-2" / "rlsd_teacher.pt").exists()
    resumed = train(run, output_dir=interrupted, resume=True)

    def losses(trainer):
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}

    resumed_losses = losses(resumed.trainer)
    straight_losses = losses(straight.trainer)
    assert set(resumed_losses) == {1, 2, 3, 4}
    assert all(loss != 0 for loss in straight_losses.values()), "a zero loss would make this comparison vacuous"
    for step in (1, 2, 3, 4):
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-5, abs=1e-7), step
    metrics = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4], "one metrics file across the resume"


def test_resume_without_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir)
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "new"), "--resume"]) == 2
    assert "no checkpoint-N directory" in capsys.readouterr().err


def test_compare_and_report_produce_their_files(tiny_model_dir, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir)
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--algorithms", "rlsd,grpo", "--output-dir", str(out)]) == 0
    report = out / "report"
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert [row["algorithm"] for row in summary] == ["rlsd", "grpo"]
    assert "| rlsd" in (report / "report.md").read_text()
    assert main(["report", str(out / "rlsd"), "--out", str(tmp_path / "single")]) == 0
    assert (tmp_path / "single" / "report.md").exists()


def test_eval_command_writes_metrics(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", tiny_model_dir, "--task", "arithmetic", "--limit", "4", "--k", "2",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"accuracy", "pass@1", "pass@2", "maj@2"} <= result["metrics"].keys()
    assert len(result["records"]) == 4
    assert "pass@2" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["quickstart-cpu.yaml", "gpu-lora-vllm.yaml", "multi-gpu-zero3.yaml",
                                  "paper-qwen3-vl-8b.yaml", "gpu-lora-qwen-vl.yaml"])
def test_shipped_configs_use_only_known_keys(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    run = load_run_config(str(path))
    assert run["model"] and run["training"]["algorithm"] == "rlsd"
    first_lines = path.read_text().splitlines()[:3]
    assert any(line.startswith("# Hardware:") for line in first_lines), "each config says what hardware it expects"


def test_train_on_a_users_file_reports_bad_rows_then_skips_them(tiny_model_dir, tmp_path, capsys):
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(8)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, json.dumps({"question": "", "answer": "1"}))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, max_steps=1)
    common = ["train", "--config", str(config), "--output-dir", str(tmp_path / "o"), "--set", "task=null",
              "--set", f"data.train={data}", "--set", "eval_every=0"]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "1 of 9 rows are invalid" in err and f"{data}:4: field 'question': empty" in err
    assert "Traceback" not in err
    assert main([*common, "--skip-bad-rows"]) == 0


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_resume_logs_every_step_once(tiny_model_dir, tmp_path, signame):
    """A preempted `rlsd train` (SIGTERM, as SLURM/Kubernetes send; or Ctrl-C) with save_strategy "no" finishes
    its step, saves a complete checkpoint, exits 128+signal with the resume command; `--resume` goes on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = write_config(tmp_path / "run.yaml", tiny_model_dir, max_steps=100000, lr_scheduler_type="constant")
    out = tmp_path / "interrupted"
    command = ["train", "--config", str(config), "--output-dir", str(out), "--set", "eval_every=0",
               "--set", "samples_every=0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlsd", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 900  # a safety net for a loaded machine, not the assertion
    while time.time() < deadline and proc.poll() is None \
            and not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    output, _ = proc.communicate(timeout=900)
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, output[-3000:]
    assert f"{signame} received; saving a checkpoint after this step" in output
    stopped = re.search(r"stopped by \w+ after step (\d+); checkpoint saved in (\S+)\. Resume with: (.+)", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert stopped.group(3).startswith("rlsd train --config") and stopped.group(3).endswith("--resume")
    assert (out / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert not (out / "model.safetensors").exists(), "a stopped run leaves the final-model slot empty"

    resumed = subprocess.run([sys.executable, "-m", "rlsd", *command, "--set", f"max_steps={step + 2}", "--resume"],
                             capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, step + 3)), logged


def test_eval_with_reference_scores_the_self_teachers_view(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", tiny_model_dir, "--task", "arithmetic", "--limit", "3", "--max-new-tokens", "4",
                 "--with-reference", "answer,solution", "--out", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    for record in records:  # the rendered prompt the model saw carries the reference inside the user turn
        assert "A reference solution (for grading, do not copy):" in record["prompt"]
        assert f"Final answer: {record['answer']}" in record["prompt"]
    capsys.readouterr()
    assert main(["eval", "--model", tiny_model_dir, "--task", "arithmetic", "--limit", "2",
                 "--with-reference", "hint"]) == 2
    assert "row 1 has no value in field 'hint'" in capsys.readouterr().err

"""Crash-safe checkpoints: `kill -9` at any point of a run (mid-save included), then `--resume`, until it ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rlsd.runlog import drop_records_after_step
from rlsd.checkpoints import COMPLETE_MARKER, CheckpointNotFoundError, checkpoint_problem, find_resume_checkpoint

REWARD_FILE = """
def digit_share(prompts, completions, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
"""


def _fake_checkpoint(path, files, marker=True):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    if marker:
        (path / COMPLETE_MARKER).write_text(json.dumps({"files": {n: len(t) for n, t in files.items()}}))
    return path


def test_resume_picks_the_newest_complete_checkpoint_and_says_why(tmp_path):
    complete = {"model.safetensors": "w" * 10, "trainer_state.json": "{}"}
    _fake_checkpoint(tmp_path / "checkpoint-2", complete)
    _fake_checkpoint(tmp_path / "checkpoint-3", {"trainer_state.json": "{}", "model.safetensors": "w"}, marker=False)
    torn = _fake_checkpoint(tmp_path / "checkpoint-4", complete)
    (torn / "model.safetensors").write_text("w")  # cut short after the marker was written (e.g. a bad copy)
    _fake_checkpoint(tmp_path / "checkpoint-6", {"README.md": "card"}, marker=False)  # the reported bug
    _fake_checkpoint(tmp_path / "tmp-checkpoint-8" / "checkpoint-8", complete)
    (tmp_path / "checkpoint-10").mkdir()
    messages = []
    assert find_resume_checkpoint(tmp_path, log=messages.append) == str(tmp_path / "checkpoint-3")
    text = "\n".join(messages)
    assert "skipping checkpoint-10/" in text and "is empty" in text
    assert "skipping checkpoint-6/" in text and "holds only README.md" in text
    assert "skipping checkpoint-4/: model.safetensors has 1 bytes, 10 expected" in text
    assert "tmp-checkpoint-8/ is an unfinished save" in text
    assert messages[-1].startswith("rlsd: resuming from checkpoint-3/")
    assert checkpoint_problem(tmp_path / "checkpoint-2") is None, "a marker listing present files is complete"
    assert (tmp_path / "checkpoint-6" / "README.md").exists() and (tmp_path / "checkpoint-10").is_dir(), \
        "nothing is deleted"


def test_resume_with_only_incomplete_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint-N directory"):
        find_resume_checkpoint(tmp_path, log=None)
    _fake_checkpoint(tmp_path / "checkpoint-4", {"README.md": "card"}, marker=False)
    with pytest.raises(CheckpointNotFoundError, match=r"no complete checkpoint .*checkpoint-4/: an interrupted save"):
        find_resume_checkpoint(tmp_path, log=None)


def test_rewinding_a_log_keeps_earlier_records_and_drops_later_and_torn_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": s / 10}) for s in (1, 2, 2, 3, 4)]
    path.write_text("\n".join(lines[:3]) + "\nnot json\n" + "\n".join(lines[3:]) + '\n{"step": 5, "lo')
    assert drop_records_after_step(path, 2) == 3
    assert path.read_text() == "\n".join(lines[:3]) + "\nnot json\n"
    assert drop_records_after_step(path, 2) == 0 and drop_records_after_step(tmp_path / "none.jsonl", 1) == 0


# ---- a real `rlsd train` process, killed with SIGKILL again and again --------------------------------------------
def _config(tmp_path, model_dir):
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    config = {
        "model": model_dir, "task": "arithmetic", "task_train_size": 32, "task_eval_size": 4, "eval_every": 0,
        "samples_every": 1, "rewards": [f"{tmp_path / 'rewards.py'}:digit_share"],
        "training": {"algorithm": "rlsd", "teacher_mode": "ema", "max_steps": 6, "per_device_train_batch_size": 4,
                     "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3,
                     "save_strategy": "steps", "save_steps": 2, "save_total_limit": 2, "report_to": [], "seed": 0,
                     "disable_tqdm": True},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(config, out, resume=True, kill_at=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RLSD_TEST_KILL_AT", None)
    if kill_at:
        env["RLSD_TEST_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "rlsd", "train", "--config", str(config), "--output-dir", str(out)]
    return subprocess.Popen(command + (["--resume"] if resume else []), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc):
    output, _ = proc.communicate(timeout=1200)
    return proc.returncode, output


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _losses(out):
    return [(r["step"], r["loss"]) for r in _records(out / "metrics.jsonl") if "loss" in r]


def test_sigkill_anywhere_then_resume_finishes_the_run_as_if_never_killed(tiny_model_dir, tmp_path):
    config = _config(tmp_path, tiny_model_dir)
    ref = tmp_path / "straight"
    code, output = _finish(_start(config, ref, resume=False))
    assert code == 0, output[-3000:]
    assert sorted(p.name for p in ref.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"], "rotation still runs"
    assert not list(ref.glob("tmp-*")) and (ref / "checkpoint-6" / COMPLETE_MARKER).is_file()
    assert (ref / "checkpoint-6" / "rlsd_teacher.pt").is_file() and (ref / "checkpoint-6" / "rng_state.pth").is_file()

    out = tmp_path / "killed"
    # 1. Killed in the middle of writing checkpoint-4 (model written, optimizer not yet).
    code, output = _finish(_start(config, out, resume=False, kill_at="model-saved:4"))
    assert code == -signal.SIGKILL, output[-3000:]
    assert checkpoint_problem(out / "checkpoint-2") is None
    assert not (out / "checkpoint-4").exists(), "a half-written checkpoint is never visible"
    assert (out / "tmp-checkpoint-4" / "checkpoint-4" / "model.safetensors").is_file()
    # What an older version left behind in the reported crash: a checkpoint-4/ holding only its model card.
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "README.md").write_text("model card")

    # 2. Resume; killed after checkpoint-4 is written and marked complete, but before its rename.
    code, output = _finish(_start(config, out, kill_at="marked:4"))
    assert code == -signal.SIGKILL, output[-3000:]
    assert "skipping checkpoint-4/: an interrupted save" in output and "holds only README.md; left in place" in output
    assert "resuming from checkpoint-2/ (step 2" in output
    assert (out / "checkpoint-4" / "README.md").read_text() == "model card"

    # 3. Resume; SIGKILL from outside as soon as the save of step 6 begins (or, at the latest, once it is done).
    proc = _start(config, out)
    deadline = time.time() + 1200  # a safety net for a loaded machine
    while proc.poll() is None and time.time() < deadline:
        if (out / "tmp-checkpoint-6").exists() or (out / "checkpoint-6").exists():
            proc.kill()
            break
        time.sleep(0.001)
    code, output = _finish(proc)
    assert code == -signal.SIGKILL, output[-3000:]
    assert "removing tmp-checkpoint-4/, an unfinished save of step 4" in output
    assert "moved it aside to incomplete-checkpoint-4/" in output
    assert (out / "incomplete-checkpoint-4" / "README.md").read_text() == "model card", "the user's files are kept"
    assert checkpoint_problem(out / "checkpoint-4") is None

    # 4. Resume; killed right after checkpoint-6 is published, before old checkpoints are rotated.
    code, output = _finish(_start(config, out, kill_at="renamed:6"))
    assert code in (-signal.SIGKILL, 0), output[-3000:]  # 0 only if step 3's kill came after checkpoint-6 was whole

    # 5. Resume; the run finishes.
    code, output = _finish(_start(config, out))
    assert code == 0, output[-3000:]
    assert "resuming from checkpoint-6/ (step 6" in output
    assert (out / "model.safetensors").is_file()
    assert all(checkpoint_problem(p) is None for p in out.glob("checkpoint-*"))

    straight, resumed = _losses(ref), _losses(out)
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6], "every step logged once across five processes"
    assert any(loss != 0 for _, loss in straight), "a zero loss would make the comparison vacuous"
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], rel=1e-5, abs=1e-7)
    samples = [r["step"] for r in _records(out / "samples.jsonl")]
    assert samples == [r["step"] for r in _records(ref / "samples.jsonl")], "no duplicated samples"
    credit = [(r["step"], r["group"]) for r in _records(out / "credit.jsonl")]
    assert credit and credit == [(r["step"], r["group"]) for r in _records(ref / "credit.jsonl")]

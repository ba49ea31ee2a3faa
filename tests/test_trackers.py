"""`report_to: [trackio, wandb]` from a run config: both trackers get the rlsd metrics under metrics.jsonl names.

One 3-step `rlsd train` subprocess (a fresh interpreter: Trackio fixes its directory at import) with both
trackers; W&B in offline mode, which must write its run files locally without any network.
"""

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

RLSD_NAMES = {"rlsd/weight_mean", "rlsd/clip_low_frac", "rlsd/delta_mean", "reward", "accuracy"}


def _missing(*modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, tmp_path_factory):
    trackers = [name for name in ("trackio", "wandb") if not _missing(name)]
    if not trackers:
        pytest.skip("neither trackio nor wandb installed (pip install -e '.[trackio,wandb]')")
    tmp = tmp_path_factory.mktemp("trackers")
    rewards = tmp / "my_rewards.py"
    rewards.write_text("def digits(prompts, completions, **kw):\n"
                       "    t = [c[0]['content'] if isinstance(c, list) else c for c in completions]\n"
                       "    return [sum(ch.isdigit() for ch in s) / max(len(s), 1) for s in t]\n")
    config = {"model": tiny_model_dir, "task": "arithmetic", "rewards": [f"{rewards}:digits"], "task_train_size": 32,
              "task_eval_size": 4, "eval_every": 0, "samples_every": 0, "wandb_mode": "offline",
              "training": {"algorithm": "rlsd", "max_steps": 3, "per_device_train_batch_size": 4, "num_generations": 4,
                           "max_completion_length": 8, "learning_rate": 1e-3, "save_strategy": "no", "seed": 0,
                           "disable_tqdm": True, "report_to": trackers, "project": "rlsd-test", "run_name": "tiny"}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(TRACKIO_DIR=str(tmp / "trackio"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", WANDB_SILENT="true",
               # any attempt to reach a server fails at once instead of hanging: offline means offline
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    out = tmp / "run"
    result = subprocess.run([sys.executable, "-m", "rlsd", "train", "--config", str(tmp / "run.yaml"),
                             "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, tmp / "trackio", trackers


def test_trackio_run_directory_holds_rlsd_metrics_under_jsonl_names(tracked_run):
    out, trackio_dir, trackers = tracked_run
    if "trackio" not in trackers:
        pytest.skip("trackio not installed (pip install -e '.[trackio]')")
    databases = list(trackio_dir.glob("rlsd-test*.db"))  # one database per `project`
    assert databases, f"no Trackio database under {trackio_dir}"
    names, steps = set(), set()
    with sqlite3.connect(databases[0]) as db:
        for (metrics, step) in db.execute("SELECT metrics, step FROM metrics"):
            names |= set(json.loads(metrics))
            steps.add(step)
    assert RLSD_NAMES <= names, sorted(names)
    assert not any(n.startswith("train/rlsd") for n in names)  # not transformers' renamed copies
    jsonl = {k for line in (out / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert {n for n in names if n.startswith("rlsd/")} <= jsonl
    assert len(steps) >= 3


def test_wandb_offline_writes_its_run_files_with_rlsd_metrics(tracked_run):
    out, _, trackers = tracked_run
    if "wandb" not in trackers:
        pytest.skip("wandb not installed (pip install -e '.[wandb]')")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb dir"
    logs = list(runs[0].glob("run-*.wandb"))
    assert logs, "the offline run log (synced later with `wandb sync`)"
    # The log is a sequence of protobuf records; metric names are stored in it as plain UTF-8 keys.
    data = logs[0].read_bytes()
    for name in RLSD_NAMES:
        assert f'"{name}"'.encode() in data or name.encode() in data, name
    assert b"train/rlsd/weight_mean" not in data  # transformers' renamed copy is not logged


def test_tensorboard_logs_every_step_once_after_a_resume(tiny_model_dir, tmp_path):
    """A run checkpointed at step 2 and killed after logging step 3, then resumed to step 5: TensorBoard's own
    reader sees steps 1..5 once each, and step 3 carries the resumed run's value (the one in metrics.jsonl)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlsd.app.run import train

    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def digits(prompts, completions, **kw):\n"
                       "    t = [c[0]['content'] if isinstance(c, list) else c for c in completions]\n"
                       "    return [sum(ch.isdigit() for ch in s) / max(len(s), 1) for s in t]\n")

    def run(max_steps, resume):
        config = {"model": tiny_model_dir, "task": "arithmetic", "rewards": [f"{rewards}:digits"],
                  "task_train_size": 32, "task_eval_size": 4, "eval_every": 0, "samples_every": 0,
                  "training": {"algorithm": "rlsd", "max_steps": max_steps, "per_device_train_batch_size": 4,
                               "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3,
                               "lr_scheduler_type": "constant", "save_strategy": "steps", "save_steps": 2,
                               "seed": 0, "disable_tqdm": True, "report_to": ["tensorboard"]}}
        train(config, output_dir=tmp_path / "run", resume=resume)

    run(3, resume=False)  # logs steps 1-3, newest checkpoint: 2
    first = EventAccumulator(str(tmp_path / "run" / "runs" / "tensorboard"))
    first.Reload()
    assert [e.step for e in first.Scalars("train/loss")] == [1, 2, 3]
    run(5, resume=True)  # resumes from checkpoint-2: logs steps 3-5 again from there
    events = EventAccumulator(str(tmp_path / "run" / "runs" / "tensorboard"))
    events.Reload()
    for tag in ("train/loss", "train/rlsd/weight_mean", "train/reward"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4, 5], tag
    logged = {json.loads(line)["step"]: json.loads(line)["loss"]
              for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line}
    assert [round(e.value, 6) for e in events.Scalars("train/loss")] == [round(logged[s], 6) for s in range(1, 6)]
    assert len(list((tmp_path / "run" / "runs").iterdir())) == 1, "one event folder per run directory"

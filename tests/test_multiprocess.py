"""Two-process RLSD on CPU (gloo) with `accelerate launch --multi_gpu --num_processes 2`.

What must hold when `rlsd train` is scaled out by accelerate:
- the run completes and the run directory is written once (rank 0), with `rlsd/*` metrics;
- logged rewards are gathered over both ranks, not rank 0's share;
- EMA/snapshot teachers stay bit-identical across ranks and follow the recurrence from the student;
- with rollouts fixed (a `rollout_func` that is a pure function of the prompt and its occurrence in the global
  batch), 2 processes x B rows give the same loss curve as 1 process x 2B rows.

`--multi_gpu` is accelerate's torchrun launcher; with `use_cpu=true` the trainer's PartialState(cpu=True) picks
MULTI_CPU/gloo from the torchrun environment (`--cpu` alone would start a single process). About 40 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.multiprocess

HELPERS = Path(__file__).resolve().parent / "multiprocess"
PER_DEVICE_BATCH, NUM_GENERATIONS, MAX_STEPS = 6, 4, 4  # 3 prompts per step; the 2nd group is split over ranks
# Observed on 2-core CPU, float32: |loss(2 proc) - loss(1 proc)| <= 4.5e-8 over 12 steps, final weights <= 8e-7.
# The two setups differ only in float32 rounding: each rank pads its 6 rows to its own longest sequence (other
# matmul shapes than 12 rows in one batch) and gloo sums the two ranks' gradients in another order than one
# process sums 12 rows. That is a few ulp per step (float32 eps 1.2e-7 relative), so 1e-6 absolute (~20x the
# observed gap, far below the 1e-2 step-to-step changes of the loss) catches any real mismatch.
LOSS_ATOL = 1e-6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               TRL_EXPERIMENTAL_SILENCE="1", WANDB_DISABLED="true")
    env.update(extra)
    return env


def _accelerate(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)  # safety net
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _records(record_dir: Path, world_size: int) -> list[list[dict]]:
    """Per rank, the reward calls recorded by tests/multiprocess/rewards.py, in call order."""
    return [[json.loads(line) for line in (record_dir / f"rewards-rank{r}.jsonl").read_text().splitlines()]
            for r in range(world_size)]


def _train_logs(history: list[dict]) -> list[dict]:
    return [h for h in history if "loss" in h]


# ---- fixtures: three launches, shared by the tests below ---------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """`accelerate launch ... -m rlsd train --config RUN.yaml --set use_cpu=true`, real sampling."""
    root = tmp_path_factory.mktemp("mp-cli")
    config = {
        "model": tiny_model_dir,
        "task": "arithmetic",
        "rewards": [f"{HELPERS / 'rewards.py'}:digit_share"],
        "task_train_size": 32,
        "task_eval_size": 4,
        "eval_every": 0,  # held-out eval also calls the reward (on every rank); keep the records to training
        "samples_every": 1,
        "training": {"algorithm": "rlsd", "teacher_mode": "live", "max_steps": 2, "per_device_train_batch_size": 4,
                     "num_generations": 4, "max_completion_length": 16, "learning_rate": 1e-3,
                     "save_strategy": "no", "report_to": [], "seed": 0, "disable_tqdm": True},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    records = root / "records"
    records.mkdir()
    _run(_accelerate("-m", "rlsd", "train", "--config", str(root / "run.yaml"), "--set", "use_cpu=true",
                     "--output-dir", str(root / "run")), _env(RLSD_MP_RECORD_DIR=str(records)), cwd=root)
    return {"run": root / "run", "records": records}


@pytest.fixture(scope="module")
def ddp_runs(tiny_model_dir, tmp_path_factory) -> dict[int, Path]:
    """tests/multiprocess/ddp_run.py with fixed rollouts: 2 processes x 6 rows and 1 process x 12 rows."""
    root = tmp_path_factory.mktemp("mp-ddp")
    common = ["--model", tiny_model_dir, "--teacher-modes", "ema,snapshot", "--num-generations",
              str(NUM_GENERATIONS), "--max-steps", str(MAX_STEPS)]
    _run(_accelerate(str(HELPERS / "ddp_run.py"), "--out", str(root / "two"), "--per-device-batch",
                     str(PER_DEVICE_BATCH), *common), _env(), cwd=root)
    _run([sys.executable, str(HELPERS / "ddp_run.py"), "--out", str(root / "one"), "--per-device-batch",
          str(2 * PER_DEVICE_BATCH), *common], _env(), cwd=root)
    return {2: root / "two", 1: root / "one"}


def _rank_records(out: Path, mode: str, world_size: int) -> list[dict]:
    return [json.loads((out / mode / f"rank{r}.json").read_text()) for r in range(world_size)]


# ---- (a) the run completes and writes its run directory --------------------------------------------------------
def test_two_process_cli_run_writes_its_run_directory(cli_run):
    run = cli_run["run"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_logs = _train_logs(metrics)
    assert [m["step"] for m in train_logs] == [1, 2], "rank 0 alone writes metrics.jsonl, one line per step"
    assert all(m["rlsd/sign_flips"] == 0 for m in train_logs)
    assert all({"rlsd/delta_mean", "rlsd/weight_mean", "rlsd/adv_abs_after", "teacher/time_frac"} <= m.keys()
               for m in train_logs)
    assert (run / "config.yaml").exists() and (run / "run_config.json").exists()
    assert (run / "model.safetensors").exists() and (run / "README.md").exists()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [1, 2] and len(samples) == 2 * 8, "8 global samples per step"
    assert not list(run.glob(".rlsd-write-test*")), "no write probe left behind"


# ---- (b) metrics are gathered across processes -------------------------------------------------------------------
def test_logged_reward_is_the_mean_over_both_ranks(cli_run):
    per_rank = _records(cli_run["records"], 2)
    assert len(per_rank[0]) == len(per_rank[1]) == 2, "one reward call per step on each rank"
    train_logs = _train_logs([json.loads(line) for line in (cli_run["run"] / "metrics.jsonl").read_text().splitlines()])
    for step, log in enumerate(train_logs):
        local = [per_rank[r][step]["rewards"] for r in range(2)]
        both = local[0] + local[1]
        assert log["reward"] == pytest.approx(sum(both) / len(both), abs=1e-6)
        if sum(local[0]) / len(local[0]) != pytest.approx(sum(local[1]) / len(local[1]), abs=1e-4):
            assert log["reward"] != pytest.approx(sum(local[0]) / len(local[0]), abs=1e-6), "not rank 0's mean"


def test_fixed_rollouts_split_a_group_across_ranks_and_match_one_process(ddp_runs):
    """The 2-process completions are the 1-process ones cut in two; a prompt group straddles the ranks."""
    two, one = _records(ddp_runs[2] / "ema" / "records", 2), _records(ddp_runs[1] / "ema" / "records", 1)[0]
    assert len(one) == MAX_STEPS
    for step in range(MAX_STEPS):
        assert two[0][step]["completions"] + two[1][step]["completions"] == one[step]["completions"]
        assert two[0][step]["rewards"] + two[1][step]["rewards"] == one[step]["rewards"]
        assert set(two[0][step]["prompts"]) & set(two[1][step]["prompts"]), "a group is split over both ranks"
    logs = _train_logs(_rank_records(ddp_runs[2], "ema", 2)[0]["log_history"])
    for step, log in enumerate(logs):
        both = two[0][step]["rewards"] + two[1][step]["rewards"]
        assert log["reward"] == pytest.approx(sum(both) / len(both), abs=1e-6)


# ---- (c) EMA and snapshot teachers stay identical across ranks ---------------------------------------------------
@pytest.mark.parametrize("mode", ["ema", "snapshot"])
def test_teacher_state_is_identical_across_ranks(ddp_runs, mode):
    ranks = _rank_records(ddp_runs[2], mode, 2)
    assert {r["distributed_type"] for r in ranks} == {"DistributedType.MULTI_CPU"}
    assert ranks[0]["teacher_sha256"] == ranks[1]["teacher_sha256"], "teacher weights diverged across ranks"
    assert ranks[0]["student_sha256"] == ranks[1]["student_sha256"]
    for record in ranks:
        # The EMA/snapshot recurrence recomputed from the student after every step, with TRL's own ops.
        assert record["teacher_vs_expected_max_abs"] <= 1e-6
        assert record["teacher_vs_student_max_abs"] > 1e-5, "the teacher lags the student (the check is not vacuous)"


# ---- (d) 2 processes x B == 1 process x 2B ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["ema", "snapshot"])
def test_loss_curve_matches_one_process_with_the_same_global_batch(ddp_runs, mode):
    two = _train_logs(_rank_records(ddp_runs[2], mode, 2)[0]["log_history"])
    one = _train_logs(_rank_records(ddp_runs[1], mode, 1)[0]["log_history"])
    assert [h["step"] for h in two] == [h["step"] for h in one] == list(range(1, MAX_STEPS + 1))
    for a, b in zip(two, one, strict=True):
        assert a["reward"] == b["reward"] and a["reward_std"] == b["reward_std"], "same completions, same rewards"
        assert a["rlsd/sign_flips"] == b["rlsd/sign_flips"] == 0
        assert abs(a["loss"] - b["loss"]) <= LOSS_ATOL, (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    student_two = torch.load(ddp_runs[2] / mode / "student.pt")
    student_one = torch.load(ddp_runs[1] / mode / "student.pt")
    assert max((x - y).abs().max().item() for x, y in zip(student_two, student_one, strict=True)) <= 1e-5
    teacher_two = torch.load(ddp_runs[2] / mode / "teacher.pt")
    teacher_one = torch.load(ddp_runs[1] / mode / "teacher.pt")
    assert max((x - y).abs().max().item() for x, y in zip(teacher_two, teacher_one, strict=True)) <= 1e-5


def test_rlsd_diagnostics_do_not_depend_on_the_process_count(ddp_runs):
    two = _train_logs(_rank_records(ddp_runs[2], "ema", 2)[0]["log_history"])
    one = _train_logs(_rank_records(ddp_runs[1], "ema", 1)[0]["log_history"])
    for a, b in zip(two, one, strict=True):
        for name in ("rlsd/delta_mean", "rlsd/weight_mean", "rlsd/adv_abs_before", "rlsd/adv_abs_after"):
            assert a[name] == pytest.approx(b[name], abs=1e-5), name


# ---- DeepSpeed ZeRO-2/3 on CPU (only where deepspeed is installed) ----------------------------------------------
# Recipe verified on CPU with deepspeed 0.19.8: configs/accelerate/zero{2,3}.yaml with num_processes=2 and
# mixed_precision=no, plus `use_cpu=true` (DeepSpeed's CPU accelerator, gloo). Without use_cpu (and without
# ddp_backend=gloo) accelerate finds no device backend and every process thinks it is alone.
def _deepspeed_config(root: Path, stage: int) -> Path:
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"zero{stage}.yaml")
                            .read_text())
    config.update(num_processes=2, mixed_precision="no")
    path = root / f"zero{stage}-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _deepspeed_launch(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(_free_port()), str(HELPERS / "ddp_run.py"), *args]


def _skip_without_cpu_deepspeed() -> None:
    pytest.importorskip("deepspeed")
    if torch.cuda.is_available():
        pytest.skip("the CPU DeepSpeed recipe; on GPUs use configs/accelerate/zero*.yaml as they are")


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def deepspeed_run(request, tiny_model_dir, tmp_path_factory) -> tuple[int, Path]:
    _skip_without_cpu_deepspeed()
    stage = request.param
    root = tmp_path_factory.mktemp(f"mp-zero{stage}")
    _run(_deepspeed_launch(_deepspeed_config(root, stage), "--model", tiny_model_dir, "--out", str(root / "out"),
                           "--teacher-modes", "ema,snapshot", "--per-device-batch", str(PER_DEVICE_BATCH),
                           "--num-generations", str(NUM_GENERATIONS), "--max-steps", str(MAX_STEPS)),
         _env(), cwd=root)
    return stage, root / "out"


@pytest.mark.parametrize("mode", ["ema", "snapshot"])
def test_deepspeed_teacher_and_loss_match_one_process(deepspeed_run, ddp_runs, mode):
    stage, out = deepspeed_run
    ranks = _rank_records(out, mode, 2)
    assert {r["distributed_type"] for r in ranks} == {"DistributedType.DEEPSPEED"}
    assert all(r["zero3_partitioned"] == (stage == 3) for r in ranks)
    assert ranks[0]["teacher_sha256"] == ranks[1]["teacher_sha256"]
    assert all(r["teacher_vs_expected_max_abs"] <= 1e-6 for r in ranks)
    one = _train_logs(_rank_records(ddp_runs[1], mode, 1)[0]["log_history"])
    for a, b in zip(_train_logs(ranks[0]["log_history"]), one, strict=True):
        assert a["reward"] == b["reward"]
        assert abs(a["loss"] - b["loss"]) <= LOSS_ATOL, (a["step"], a["loss"], b["loss"])


def test_deepspeed_teacher_checkpoint_holds_the_full_teacher(deepspeed_run, request):
    stage, out = deepspeed_run
    for record in _rank_records(out, "ema", 2):
        assert record["teacher_state_tensors"] > 0 and record["teacher_state_empty"] == 0


def test_deepspeed_zero3_lora_ema_teacher(tiny_model_dir, tmp_path):
    _skip_without_cpu_deepspeed()
    _run(_deepspeed_launch(_deepspeed_config(tmp_path, 3), "--model", tiny_model_dir, "--out", str(tmp_path / "out"),
                           "--teacher-modes", "ema", "--lora", "--max-steps", "1"), _env(), cwd=tmp_path)
    ranks = _rank_records(tmp_path / "out", "ema", 2)
    assert ranks[0]["teacher_uses_adapter"] and ranks[0]["teacher_sha256"] == ranks[1]["teacher_sha256"]
    assert all(r["teacher_vs_expected_max_abs"] <= 1e-6 for r in ranks)


def test_sigterm_to_every_process_stops_both_ranks_after_one_step_with_a_checkpoint(tiny_model_dir, tmp_path):
    """A preemption (SIGTERM to the job's process group, as SLURM sends it) of a 2-process run: both ranks finish
    the same step, one complete checkpoint is saved, and a 2-process `--resume` logs every step once."""
    import signal
    import time

    config = {"model": tiny_model_dir, "task": "arithmetic", "rewards": [f"{HELPERS / 'rewards.py'}:digit_share"],
              "task_train_size": 32, "task_eval_size": 4, "eval_every": 0, "samples_every": 0,
              "training": {"algorithm": "rlsd", "max_steps": 100000, "per_device_train_batch_size": 4,
                           "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3,
                           "lr_scheduler_type": "constant", "save_strategy": "no", "report_to": [], "seed": 0,
                           "disable_tqdm": True}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    command = ["-m", "rlsd", "train", "--config", str(tmp_path / "run.yaml"), "--set", "use_cpu=true",
               "--output-dir", str(out)]
    proc = subprocess.Popen(_accelerate(*command), env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 900  # a safety net for a loaded machine, not the assertion
    while time.time() < deadline and proc.poll() is None \
            and not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode != 0, output[-3000:]
    assert output.count("SIGTERM received; saving a checkpoint after this step") >= 2, output[-3000:]
    steps = {int(s) for s in re.findall(r"stopped by SIGTERM after step (\d+)", output)}
    assert len(steps) == 1, output[-3000:]  # both ranks stopped after the same step
    step = steps.pop()
    assert (out / f"checkpoint-{step}" / "rlsd_complete.json").is_file()
    _run(_accelerate(*command, "--set", f"max_steps={step + 2}", "--resume"), _env(), cwd=tmp_path)
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, step + 3)), logged

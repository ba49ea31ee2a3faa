"""Callbacks inside a real TRL GRPOTrainer run on a tiny local model (a few CPU steps)."""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlsd.app.callbacks import HeldOutEvalCallback, JsonlMetricsCallback  # noqa: E402
from rlsd.tasks import get_task  # noqa: E402
from rlsd.tasks.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_jsonl_callback_appends_flushed_json_lines(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    cb = JsonlMetricsCallback(tmp_path / "run")
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState(), TrainerControl()
    state.global_step = 3
    cb.on_log(args, state, control, logs={"loss": 1.5, "bad": float("nan")})
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")  # readable before training ends: flushed
    assert lines[0]["step"] == 3 and lines[0]["loss"] == 1.5 and lines[0]["bad"] is None
    assert "time" in lines[0] and "elapsed_s" in lines[0]
    cb.on_log(args, state, control, logs={"loss": 1.0})
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 2


def grpo_trainer(tmp_path, callbacks, max_steps=3):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    task = get_task("arithmetic")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    config = GRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=8, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
        use_cpu=True, disable_tqdm=True, learning_rate=1e-3, activation_checkpointing=False,
    )
    train = Dataset.from_list(task.make_rows(8, seed=0, split="train"))
    return GRPOTrainer(
        model=model, reward_funcs=task.reward, args=config, train_dataset=train, processing_class=tokenizer,
        callbacks=callbacks,
    ), task


@pytest.mark.parametrize("bound", [False, True])
def test_held_out_eval_in_grpo_trainer(tmp_path, bound):
    task = get_task("arithmetic")
    held_out = task.make_rows(3, seed=0, split="test")
    eval_cb = HeldOutEvalCallback(
        held_out, task.reward, every_n_steps=2, max_new_tokens=6, samples_path=tmp_path / "samples.jsonl"
    )
    jsonl_cb = JsonlMetricsCallback(tmp_path)
    trainer, _ = grpo_trainer(tmp_path, [eval_cb, jsonl_cb])
    if bound:
        eval_cb.bind(trainer)
    trainer.train()

    assert trainer.model.training
    assert [h["eval/step"] for h in eval_cb.history] == [0, 2, 3]  # start, every 2 steps, end
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    evals = [line for line in lines if "eval/accuracy" in line]
    assert [e["eval/step"] for e in evals] == [0, 2, 3]
    assert all(0.0 <= e["eval/accuracy"] <= 1.0 for e in evals)
    # GRPO's own training metrics are still logged every step, not swallowed by the eval lines.
    train_lines = [line for line in lines if "loss" in line]
    assert len(train_lines) == 3 and all("reward" in line for line in train_lines)
    assert any("eval/accuracy" in h for h in trainer.state.log_history)
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert {s["step"] for s in samples} == {0, 2, 3} and all("completion" in s for s in samples)
    if bound:  # own log lines, at the step they were measured
        assert [e["step"] for e in evals] == [0, 2, 3]
        assert not any(math.isnan(e["eval/accuracy"]) for e in evals)

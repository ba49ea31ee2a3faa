"""Trainer callbacks: metrics to JSONL as they happen, held-out accuracy during training.

Both work with any `transformers.Trainer`, including TRL's `GRPOTrainer` and
`RLSDTrainer`. Put `HeldOutEvalCallback` before `JsonlMetricsCallback` in
`callbacks=[...]`, or bind the trainer (`callback.bind(trainer)`) so eval
metrics go through `trainer.log` and reach every logger (TensorBoard, W&B,
`trainer_state.json`) in their own log line.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from transformers import TrainerCallback

from ..runlog import rewind_on_resume
from .evaluate import evaluate


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors/numpy scalars as numbers, NaN/inf as null (strict JSON readers choke on NaN)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class JsonlMetricsCallback(TrainerCallback):
    """Append every log dict (plus `step`, wall time) to `metrics.jsonl`, one flushed line each.

    `path` is the file, or a directory to hold `metrics.jsonl`. Lines are
    appended (a resumed run continues the same file) and flushed at once,
    so an interrupted run loses nothing it logged. Only the main process writes.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path / "metrics.jsonl" if path.suffix == "" or path.is_dir() else path
        self._start = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.time()
        rewind_on_resume(self.path, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        record = {"step": state.global_step, "time": round(now, 3), "elapsed_s": round(now - self._start, 3)}
        record.update(_jsonable(dict(logs)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


class HeldOutEvalCallback(TrainerCallback):
    """Greedy held-out accuracy at train begin, every `every_n_steps` steps and at the end.

    Metrics are logged as `{prefix}accuracy` and `{prefix}reward_mean` (plus
    `{prefix}step`, the step they were measured at). With a bound trainer they
    are logged through `trainer.log` as their own line; without one they are
    added to the next log line the trainer writes (this callback forces one at
    each eval step), which callbacks listed after this one and
    `state.log_history` see; an extra eval at train end (after an early stop)
    then only reaches `state.log_history`. Sample completions are appended to
    `samples_path` (JSONL) when given. The model is put back in train mode.
    """

    def __init__(
        self,
        rows: Sequence[dict],
        reward_fn: Callable[..., list[float]],
        every_n_steps: int,
        tokenizer: Any = None,
        *,
        trainer: Any = None,
        prefix: str = "eval/",
        max_new_tokens: int = 128,
        batch_size: int = 64,
        num_logged_samples: int = 4,
        samples_path: str | os.PathLike | None = None,
        eval_on_start: bool = True,
        eval_on_end: bool = True,
        progress: bool = False,
        **evaluate_kwargs: Any,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.rows = list(rows)
        self.reward_fn = reward_fn
        self.every_n_steps = every_n_steps
        self.tokenizer = tokenizer
        self.trainer = trainer
        self.prefix = prefix
        self.num_logged_samples = num_logged_samples
        self.samples_path = Path(samples_path) if samples_path else None
        self.eval_on_start = eval_on_start
        self.eval_on_end = eval_on_end
        self.evaluate_kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
        self.evaluate_kwargs.update(evaluate_kwargs)
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, float] | None = None
        self._last_step: int | None = None

    def bind(self, trainer: Any) -> "HeldOutEvalCallback":
        """Log through `trainer.log` so every reporting integration sees the eval metrics."""
        self.trainer = trainer
        return self

    # -- events -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        rewind_on_resume(self.samples_path, state)
        # A resumed run's first step was evaluated before its checkpoint was saved: do not log it twice.
        final = 0 < state.max_steps <= state.global_step
        if state.global_step > 0 and (state.global_step % self.every_n_steps == 0 or final):
            self._last_step = state.global_step
        elif self.eval_on_start:
            self._run(state, control, kwargs)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        final = state.max_steps > 0 and state.global_step >= state.max_steps
        if state.global_step % self.every_n_steps == 0 or (final and self.eval_on_end):
            self._run(state, control, kwargs)
        if self._pending is not None:
            control.should_log = True  # make the trainer write a line for the pending metrics now
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is not None and logs is not None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.eval_on_end and self._last_step != state.global_step:
            self._run(state, control, kwargs)
        # Without a trainer no log line follows train end: record it in the history at least.
        if self._pending is not None:
            state.log_history.append({**self._pending, "step": state.global_step})
            self._pending = None

    # -- work -------------------------------------------------------------------------------------------------
    def _run(self, state, control, kwargs: dict[str, Any]) -> None:
        if self._last_step == state.global_step:
            return
        model = kwargs.get("model") or getattr(self.trainer, "model", None)
        tokenizer = self.tokenizer or kwargs.get("processing_class") or kwargs.get("tokenizer")
        if model is None or tokenizer is None:
            raise ValueError("HeldOutEvalCallback needs a model and a tokenizer (pass tokenizer=...)")
        # a VLM processor stays whole: evaluate() feeds image rows through it, text through its tokenizer
        result = evaluate(model, tokenizer, self.rows, self.reward_fn, greedy=True, **self.evaluate_kwargs)
        metrics = {
            f"{self.prefix}accuracy": result["accuracy"],
            f"{self.prefix}reward_mean": result["reward_mean"],
            f"{self.prefix}step": state.global_step,
        }
        if "tool_calls_per_episode" in result:  # agent tasks
            metrics[f"{self.prefix}tool_calls_per_episode"] = result["tool_calls_per_episode"]
        self._last_step = state.global_step
        self.history.append(dict(metrics))
        if state.is_world_process_zero:
            self._write_samples(state.global_step, result["records"])
        if self.trainer is not None:
            # GRPOTrainer.log folds its buffered training metrics into whatever is logged in train mode; logging
            # while the model is still in eval mode keeps those for the trainer's own next line.
            # Trainer.log resets control.should_log; keep the flag so the trainer's own line for this step survives.
            should_log = control.should_log
            model.eval()
            try:
                self.trainer.log(dict(metrics))
            finally:
                model.train()
                control.should_log = should_log
        else:
            self._pending = metrics
        model.train()

    def _write_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if self.samples_path is None or self.num_logged_samples <= 0:
            return
        self.samples_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for rec in records[: self.num_logged_samples]:
                keep = {k: rec.get(k) for k in ("prompt", "completion", "answer", "reward")}
                f.write(json.dumps(_jsonable({"step": step, "source": "held_out", **keep})) + "\n")
            f.flush()

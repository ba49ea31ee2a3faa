"""A compact terminal progress line instead of the Trainer's full log dictionary on every step.

TRL logs ~40 metrics per step; printed raw they bury the progress. `CompactProgressCallback` prints one line
every few steps (step, reward, held-out accuracy when measured, teacher share, step time). It only changes what
the terminal shows: every metric still reaches `metrics.jsonl`, TensorBoard and `trainer_state.json`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from transformers import TrainerCallback

HELDOUT_KEYS = ("eval/accuracy", "eval_accuracy")


def progress_line(label: str, step: int, max_steps: int, values: dict[str, float | None]) -> str:
    """`[rlsd] step 20/100 | reward 0.231 | held-out 0.35 | teacher 18% | 0.45 s/step` (missing values left out)."""
    parts = [f"[{label}] step {step}/{max_steps}" if max_steps > 0 else f"[{label}] step {step}"]
    if values.get("reward") is not None:
        parts.append(f"reward {values['reward']:.3f}")
    if values.get("heldout") is not None:
        parts.append(f"held-out {values['heldout']:.2f}")
    if values.get("teacher") is not None:
        parts.append(f"teacher {values['teacher']:.0%}")
    if values.get("step_time") is not None:
        parts.append(f"{values['step_time']:.2f} s/step")
    return " | ".join(parts)


class CompactProgressCallback(TrainerCallback):
    """Print `progress_line` every `every` optimizer steps, on the last step, and when held-out accuracy arrives.

    Reward and step time are means over the steps since the last line. `build_trainer` removes the Trainer's
    own log printers when this callback is passed in `extra_callbacks` (`replaces_log_printer`).
    """

    replaces_log_printer = True

    def __init__(self, label: str, every: int = 10, stream: TextIO | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.label, self.every, self.stream = label, every, stream
        self._rewards: list[float] = []
        self._step_times: list[float] = []
        self._teacher: float | None = None
        self._heldout: float | None = None
        self._new_heldout = False
        self._started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if isinstance(logs.get("reward"), (int, float)):
            self._rewards.append(float(logs["reward"]))
        if isinstance(logs.get("step_time"), (int, float)):
            self._step_times.append(float(logs["step_time"]))
        if isinstance(logs.get("teacher/time_frac"), (int, float)):
            self._teacher = float(logs["teacher/time_frac"])
        for key in HELDOUT_KEYS:
            if isinstance(logs.get(key), (int, float)):
                self._heldout, self._new_heldout = float(logs[key]), True
        if "reward" not in logs:  # held-out metrics are logged just before the step's own line: wait for it
            return
        step = state.global_step
        last = state.max_steps > 0 and step >= state.max_steps
        if step % self.every == 0 or last or self._new_heldout:
            self._print(step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        if self._rewards or self._new_heldout:  # e.g. the final held-out evaluation
            self._print(state.global_step, state.max_steps)

    def _print(self, step: int, max_steps: int) -> None:
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        line = progress_line(self.label, step, max_steps, {
            "reward": mean(self._rewards), "heldout": self._heldout, "teacher": self._teacher,
            "step_time": mean(self._step_times)})
        print(line, file=self.stream or sys.stdout, flush=True)
        self._rewards, self._step_times, self._new_heldout = [], [], False


__all__ = ["CompactProgressCallback", "progress_line"]

"""Experiment trackers (`report_to: [trackio]`, `[wandb]`) with the metric names of `metrics.jsonl`.

transformers' own Trackio and W&B callbacks rename every training metric to `train/<name>`
(`rlsd/weight_mean` becomes `train/rlsd/weight_mean`). `RLSDTrainer` swaps them for the subclasses below,
which log each metric under the name it has in `metrics.jsonl`, so a dashboard, a report and a script reading
the JSONL agree. Trackio keeps one local database per `project` (a training field) under `TRACKIO_DIR`
(default `~/.cache/huggingface/trackio`; TRL imports Trackio as soon as it is imported, so export the variable
before starting Python); `trackio show --project NAME` opens the dashboard. W&B files go to the run directory
(`RUN_DIR/wandb`, unless `WANDB_DIR` is set); `wandb_mode: offline` in the run config (or `WANDB_MODE=offline`)
makes W&B write locally and never connect.

Both are optional dependencies: `pip install "rlsd[trackio]"` / `"rlsd[wandb]"`.

TensorBoard (the default `report_to`) writes one folder per run directory, `RUN_DIR/runs/tensorboard` (unless
`TENSORBOARD_LOGGING_DIR` is set), instead of a new timestamped folder per process start; a resumed run reopens
it with `purge_step` = the resumed step + 1, so TensorBoard drops what the interrupted run logged after its
checkpoint and every step appears once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

TRACKERS = {"trackio": "trackio", "wandb": "wandb"}  # report_to name -> module it needs

# Logged once at the end as run summaries by transformers; not time series.
_SINGLE_VALUE = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def _report_to(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def prepare_environment(report_to: Any, run_dir: str | os.PathLike, wandb_mode: str | None = None) -> None:
    """Check the trackers a run asks for are installed; W&B's mode from the run config, its files in the run dir.

    Call before the trainer is built. A `WANDB_DIR` the user exported wins.
    """
    wanted = _report_to(report_to)
    missing = [name for name in wanted if name in TRACKERS and importlib.util.find_spec(TRACKERS[name]) is None]
    if missing:
        extras = ",".join(missing)
        raise ValueError(f"training.report_to: {missing} not installed; pip install \"rlsd[{extras}]\" "
                         f"(or drop them from report_to)")
    if wandb_mode is not None:
        if wandb_mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb_mode: expected online, offline or disabled, got {wandb_mode!r}")
        os.environ["WANDB_MODE"] = wandb_mode
    if "wandb" in wanted:
        os.environ.setdefault("WANDB_DIR", str(Path(run_dir).resolve()))


def _plain(logs: dict[str, Any], step: int) -> dict[str, Any]:
    return {**{k: v for k, v in logs.items() if k not in _SINGLE_VALUE}, "train/global_step": step}


def use_plain_metric_names(trainer) -> None:
    """Replace transformers' Trackio/W&B callbacks on `trainer` by ones that keep `metrics.jsonl` names, and its
    TensorBoard callback by one that logs every step once across resumes."""
    from transformers.integrations import integration_utils as hf

    swaps = []
    if hf.is_tensorboard_available():
        swaps.append((hf.TensorBoardCallback, _tensorboard_callback(hf.TensorBoardCallback)))
    if hf.is_trackio_available():
        swaps.append((hf.TrackioCallback, _trackio_callback(hf.TrackioCallback)))
    if hf.is_wandb_available():
        swaps.append((hf.WandbCallback, _wandb_callback(hf.WandbCallback)))
    for original, plain in swaps:
        callbacks = trainer.callback_handler.callbacks
        if any(type(cb) is original for cb in callbacks):
            trainer.remove_callback(original)
            trainer.add_callback(plain)


def _trackio_callback(base):
    class PlainNamesTrackioCallback(base):
        """transformers' TrackioCallback, logging metrics under their `metrics.jsonl` names."""

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero and logs:
                self._trackio.log(_plain(logs, state.global_step))

    return PlainNamesTrackioCallback


def _wandb_callback(base):
    class PlainNamesWandbCallback(base):
        """transformers' WandbCallback, logging metrics under their `metrics.jsonl` names."""

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if self._wandb is None:
                return
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero and logs:
                for key in _SINGLE_VALUE:
                    if key in logs:
                        self._wandb.run.summary[key] = logs[key]
                self._wandb.log(_plain(logs, state.global_step))

    return PlainNamesWandbCallback


def _tensorboard_callback(base):
    class ResumableTensorBoardCallback(base):
        """transformers' TensorBoardCallback: one event folder per run; a resume purges the steps after it."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.tb_writer is None and not state.is_hyper_param_search:
                self.logging_dir = self.logging_dir or os.path.join(args.output_dir, "runs", "tensorboard")
                # A SessionLog START at purge_step: readers drop the earlier events at or after that step.
                purge = state.global_step + 1 if state.global_step > 0 else None
                self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=purge)
            super().on_train_begin(args, state, control, **kwargs)

    return ResumableTensorBoardCallback


__all__ = ["prepare_environment", "use_plain_metric_names"]

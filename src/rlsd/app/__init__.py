"""The application layer: what a user runs, built on the trainer and never imported by it.

- `cli`: the `rlsd` command (train, compare, eval, report, inspect, export, quickstart).
- `run`: one training run from a run dict (data, rewards, model, trainer, run directory); `run_config`: the
  YAML run files and `--set` overrides that make that dict.
- `quickstart`: warm start, then RLSD vs GRPO on a built-in task; `warmstart`: SFT of a tiny local model on a
  task's worked solutions until held-out accuracy enters a target band.
- `evaluate`: accuracy, pass@k, maj@k (agent episodes too); `callbacks`: held-out accuracy and metrics.jsonl
  during training; `progress`: the compact terminal line.
- `report`: curves and Markdown reports from metrics.jsonl; `inspect`: per-token credit pages (`rlsd inspect`);
  `export`: a plain Hugging Face model directory from a run; `plotting`: matplotlib for files.
"""

"""The application layer: what a user runs, built on the trainer and never imported by it.

- `warmstart`: SFT of a tiny local model on a built-in task's worked solutions until held-out accuracy
  enters a target band, so RL starts from a model that earns some reward (quickstart, benchmarks).
"""

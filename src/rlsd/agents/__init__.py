"""Agents: RLSD and every teacher-pass method over multi-turn, tool-using rollouts.

- `glue`: what rlsd adds to TRL's tool loop in training (teacher rows as rolled out, tool-call token masks,
  per-kind metrics, tools and environments loaded by path).
- `rollout`: multi-turn episodes outside the trainer (greedy evaluation, SFT examples), in TRL's layout.
"""

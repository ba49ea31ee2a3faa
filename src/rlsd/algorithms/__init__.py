"""Per-algorithm teacher contexts and losses; `RLSDTrainer` only dispatches here.

- `sdpo`: the self-teacher re-prompted with a successful peer rollout (SDPO, arXiv 2601.20802).
- `grpo_opsd`: TRL's GRPO loss plus `opsd_coef` x the OPSD divergence.
- `blend`: the policy + distillation mix those two share (sampled-token and full-vocabulary forms).
- `contrast`: a second teacher pass under a wrong reference (`teacher_contrast="wrong_reference"`).
- `common`: tokenising and padding teacher prompts.

RLSD, GRPO, OPSD and OPD live in `trainer.py` and `credit.py`.
"""

from __future__ import annotations

BLENDED_ALGORITHMS = ("sdpo", "grpo+opsd")


def loss_weights(args) -> tuple[float, float]:
    """(policy weight, distillation weight) of a blended algorithm's loss/advantage."""
    from . import grpo_opsd, sdpo

    if args.algorithm == "sdpo":
        return sdpo.loss_weights(args)
    if args.algorithm == "grpo+opsd":
        return grpo_opsd.loss_weights(args)
    raise ValueError(f"algorithm {args.algorithm!r} does not blend a policy loss with distillation")


__all__ = ["BLENDED_ALGORITHMS", "loss_weights"]

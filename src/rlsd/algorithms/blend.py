"""Policy loss + distillation, shared by `sdpo` and `grpo+opsd` (weights from `algorithms.loss_weights`).

- sampled-token (`distill_divergence="sampled_token"`): one token advantage
  `A_t = w_policy * A_GRPO + w_distill * (q_t - b_t)` into TRL's clipped surrogate
  (`credit.blended_token_advantages`; `b_t` is s_old_t, or q_wrong_t with a contrast).
- full vocabulary: `w_policy * TRL's GRPO loss + w_distill * mean_t D(teacher || student)`; the GRPO term is
  skipped when its weight is 0 (pure SDPO), the divergence is the trainer's `_distillation_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import agents, credit
from . import contrast, loss_weights


def token_advantages(trainer, inputs: dict[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
    """(B, T) blended token advantages for TRL's surrogate."""
    policy_weight, distill_weight = loss_weights(trainer.args)
    mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
    advantages = inputs["sequence_advantages"]
    rows = inputs.get("teacher_rows", torch.ones_like(advantages))
    teacher_logps = inputs["teacher_per_token_logps"]
    baseline = contrast.baseline_logps(inputs, old_logps)
    token_adv = credit.blended_token_advantages(advantages, teacher_logps, baseline, mask, rows,
                                                policy_weight, distill_weight)
    acting = mask * rows.unsqueeze(1).to(mask.dtype)
    trainer._log_mean("distill/sampled_advantage", credit.masked_mean(teacher_logps - baseline, acting))
    agents.log_kind_split(trainer, inputs, teacher_logps - baseline, acting, "distill/sampled_advantage")
    trainer._record_credit(inputs, lambda: {"teacher_minus_student": (teacher_logps - baseline) * acting,
                                            "token_advantage": token_adv}, color="teacher_minus_student")
    return token_adv


def loss(trainer, model, inputs: dict[str, Any], policy_loss: Callable[[Any, dict[str, Any]], torch.Tensor]
         ) -> torch.Tensor:
    """Full-vocabulary blend; `policy_loss(model, inputs)` is TRL's GRPO loss on the sequence advantages."""
    policy_weight, distill_weight = loss_weights(trainer.args)
    distill = trainer._distillation_loss(model, inputs)
    if policy_weight == 0.0:
        return distill_weight * distill
    return policy_weight * policy_loss(model, inputs) + distill_weight * distill

"""Policy loss + distillation, shared by `sdpo` and `grpo+opsd` (their weights: `loss_weights`).

- sampled-token (`distill_divergence="sampled_token"`): one token advantage
  `A_t = w_policy * A_GRPO + w_distill * (q_t - b_t)` into TRL's clipped surrogate
  (`credit.blended_token_advantages`; `b_t` is s_old_t, or q_wrong_t with a contrast).
- full vocabulary: `w_policy * TRL's GRPO loss + w_distill * mean_t D(teacher || student)`; the GRPO term is
  skipped when its weight is 0 (pure SDPO), the divergence is `opsd.distillation_loss`.
Rows without a teacher context (`teacher_rows` = 0 in the batch, SDPO) carry the policy term only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..credit import maths as credit
from ..teacher.scoring import TeacherPass
from .base import Algorithm, PolicyLoss
from .opsd import distillation_loss


class BlendedDistillation(Algorithm):
    """A policy term and a distillation term over the same completions, one teacher pass."""

    supports_contrast = True

    def loss_weights(self) -> tuple[float, float]:
        """(policy weight, distillation weight) of the blend."""
        raise NotImplementedError

    def distills_full_vocab(self) -> bool:
        return self.args.distill_divergence != "sampled_token"

    def token_advantages(self, teacher: TeacherPass, inputs: Mapping[str, Any], old_logps: torch.Tensor
                         ) -> torch.Tensor:
        """(B, T) blended token advantages for TRL's surrogate."""
        policy_weight, distill_weight = self.loss_weights()
        mask = self.mask(inputs)
        advantages = inputs["sequence_advantages"]
        rows = inputs.get("teacher_rows", torch.ones_like(advantages))
        teacher_logps = inputs["teacher_per_token_logps"]
        baseline = self.baseline_logps(inputs, old_logps)
        token_adv = credit.blended_token_advantages(advantages, teacher_logps, baseline, mask, rows,
                                                    policy_weight, distill_weight)
        acting = mask * rows.unsqueeze(1).to(mask.dtype)
        teacher.log_mean("distill/sampled_advantage", credit.masked_mean(teacher_logps - baseline, acting))
        teacher.log_kind_split(inputs, teacher_logps - baseline, acting, "distill/sampled_advantage")
        teacher.record_credit(inputs, lambda: {"teacher_minus_student": (teacher_logps - baseline) * acting,
                                               "token_advantage": token_adv}, color="teacher_minus_student")
        return token_adv

    def loss(self, teacher: TeacherPass, model, inputs: dict[str, Any], policy_loss: PolicyLoss) -> torch.Tensor:
        """Sampled-token: one surrogate with the blended advantages. Full vocabulary: `w_policy * GRPO loss +
        w_distill * divergence` (TRL's GRPO loss on the sequence advantages)."""
        if not self.distills_full_vocab():
            return super().loss(teacher, model, inputs, policy_loss)
        policy_weight, distill_weight = self.loss_weights()
        distill = distillation_loss(self, teacher, model, inputs, rows=inputs.get("teacher_rows"))
        if policy_weight == 0.0:
            return distill_weight * distill
        return policy_weight * policy_loss(model, inputs) + distill_weight * distill


__all__ = ["BlendedDistillation"]

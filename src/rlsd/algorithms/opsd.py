"""OPSD (SPEC.md "OPSD"): on-policy self-distillation from the privileged teacher, no reward in the loss.

`loss = mean_t D(pi_teacher(. | x, r, y_<t) || pi_theta(. | x, y_<t))` over the student's own completions, `D` a
full-vocabulary divergence (`distill_divergence`: forward/reverse KL, JSD, optionally on the student's top-K,
pointwise-clipped by `opsd_token_clip`), or the sampled-token signal `A_t = q_t - s_t` as a token advantage in
TRL's surrogate (`distill_divergence="sampled_token"`). `distillation_loss` is shared with OPD, SDPO and GRPO+OPSD.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..credit import maths as credit
from ..teacher.scoring import TeacherPass
from .base import Algorithm, PolicyLoss


class OPSD(Algorithm):
    name = "opsd"
    supports_contrast = True

    def distills_full_vocab(self) -> bool:
        return self.args.distill_divergence != "sampled_token"

    @classmethod
    def divergence_only(cls, args) -> str | None:
        return None if args.distill_divergence == "sampled_token" else f"algorithm={args.algorithm!r}"

    def token_advantages(self, teacher: TeacherPass, inputs: Mapping[str, Any], old_logps: torch.Tensor
                         ) -> torch.Tensor:
        """Sampled-token form: `A_t = q_t - b_t` (b_t = s_old_t, or q_wrong_t with a contrast)."""
        mask = self.mask(inputs)
        token_adv = credit.sampled_token_advantages(inputs["teacher_per_token_logps"],
                                                    self.baseline_logps(inputs, old_logps), mask)
        teacher.log_mean("distill/sampled_advantage", credit.masked_mean(token_adv, mask))
        teacher.log_kind_split(inputs, token_adv, mask, "distill/sampled_advantage")
        teacher.record_credit(inputs, {"teacher_minus_student": token_adv}, color="teacher_minus_student")
        return token_adv

    def loss(self, teacher: TeacherPass, model, inputs: dict[str, Any], policy_loss: PolicyLoss) -> torch.Tensor:
        if self.distills_full_vocab():
            return distillation_loss(self, teacher, model, inputs)
        return super().loss(teacher, model, inputs, policy_loss)


def distillation_loss(algorithm: Algorithm, teacher: TeacherPass, model, inputs: Mapping[str, Any],
                      rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over completion tokens of D(teacher || student), full vocabulary; `rows` (B,) 0/1 limits it to rows
    that have a teacher (SDPO). Scaled for gradient accumulation like TRL's loss."""
    args = algorithm.args
    mask = algorithm.mask(inputs)
    if rows is not None:
        mask = mask * rows.unsqueeze(1).to(mask.dtype)
    student_logits = teacher.student_logits(model, inputs)
    with teacher.module() as teacher_module:
        teacher_logits = teacher.logits(teacher_module, inputs)
        if algorithm.contrast is not None:
            teacher_logits = algorithm.contrast.target_logits(teacher, teacher_module, student_logits,
                                                              teacher_logits, inputs)
    vocab = min(student_logits.size(-1), teacher_logits.size(-1), teacher.vocab_size)
    per_token = credit.distillation_divergence(
        student_logits[..., :vocab], teacher_logits[..., :vocab], kind=args.distill_divergence,
        jsd_beta=args.distill_jsd_beta, token_clip=args.opsd_token_clip, top_k=args.distill_top_k)
    loss = credit.masked_mean(per_token, mask)
    teacher.log_mean("distill/divergence", loss.detach())
    teacher.log_kind_split(inputs, per_token, mask, "distill/divergence")
    teacher.record_credit(inputs, {"divergence": per_token}, color="divergence")
    return loss / teacher.loss_scale


__all__ = ["OPSD", "distillation_loss"]

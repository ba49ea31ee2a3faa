"""RLSD (SPEC.md "RLSD"; arXiv 2604.03128): the reward gives the direction, the teacher the magnitude.

```
delta_t = stopgrad(q_t - s_old_t)                  # q_wrong_t in place of s_old_t with teacher_contrast
w_t     = clip(exp(sign(A) * delta_t), 1 - eps_w, 1 + eps_w)
A_t     = A * ((1 - lambda) + lambda * w_t)
```
then TRL's clipped surrogate with A_t (`credit.rlsd_token_advantages`). Rows with A = 0 are not scored by the
teacher: their A_t is 0 whatever it says. lambda follows `rlsd_lambda_schedule` (`credit.linear_decay_lambda`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import credit, credit_records
from ..teacher_scoring import TeacherPass
from .base import Algorithm, config_error

LAMBDA_SCHEDULES = ("constant", "linear_decay")


class RLSD(Algorithm):
    name = "rlsd"
    supports_contrast = True

    @classmethod
    def check_config(cls, args) -> None:
        if not 0.0 <= args.rlsd_lambda <= 1.0:
            raise config_error("rlsd_lambda", f"must be in [0, 1], got {args.rlsd_lambda}")
        if args.rlsd_lambda_schedule not in LAMBDA_SCHEDULES:
            raise config_error("rlsd_lambda_schedule",
                               f"must be one of {LAMBDA_SCHEDULES}, got {args.rlsd_lambda_schedule!r}")
        if args.rlsd_lambda_decay_steps is not None and args.rlsd_lambda_decay_steps <= 0:
            raise config_error("rlsd_lambda_decay_steps", f"must be positive, got {args.rlsd_lambda_decay_steps}")
        if not 0.0 < args.rlsd_eps_w < 1.0:
            raise config_error("rlsd_eps_w", f"must be in (0, 1), got {args.rlsd_eps_w}")

    def rows_to_score(self, teacher: TeacherPass, output: Mapping[str, Any]) -> torch.Tensor:
        return output["advantages"] != 0

    def current_lambda(self, teacher: TeacherPass) -> float:
        args = self.args
        if args.rlsd_lambda_schedule == "constant":
            return args.rlsd_lambda
        decay_steps = args.rlsd_lambda_decay_steps or teacher.max_steps or 1
        return credit.linear_decay_lambda(args.rlsd_lambda, teacher.global_step, decay_steps)

    def token_advantages(self, teacher: TeacherPass, inputs: Mapping[str, Any], old_logps: torch.Tensor
                         ) -> torch.Tensor:
        mask = self.mask(inputs)
        teacher_logps = inputs["teacher_per_token_logps"]
        baseline = self.baseline_logps(inputs, old_logps)  # q_wrong with teacher_contrast, else s_old
        lam, eps_w = self.current_lambda(teacher), self.args.rlsd_eps_w
        advantages = inputs["sequence_advantages"]
        token_adv, stats = credit.rlsd_token_advantages(advantages, teacher_logps, baseline, mask, lam=lam,
                                                        eps_w=eps_w)
        log_rlsd_stats(teacher, stats, lam)
        teacher.record_credit(inputs, lambda: credit_records.rlsd_signals(
            advantages, teacher_logps, baseline, token_adv, mask, eps_w),
            color="weight", center=1.0, params={"lambda": lam, "eps_w": eps_w})
        teacher.log_weight_split(inputs, token_adv, mask)
        return token_adv


def log_rlsd_stats(teacher: TeacherPass, stats: dict[str, torch.Tensor], lam: float) -> None:
    """`rlsd/*` metrics: token-weighted means over all processes, so they do not depend on how the batch was split."""
    acting, valid = stats["num_acting_tokens"], stats["num_tokens"]
    delta_sq = stats["delta_std"] ** 2 + stats["delta_mean"] ** 2  # E[delta^2] over acting tokens
    local = torch.stack([
        stats["delta_mean"] * acting, delta_sq * acting, stats["weight_mean"] * acting,
        stats["clip_low_frac"] * acting, stats["clip_high_frac"] * acting, acting,
        stats["adv_abs_before"] * valid, stats["adv_abs_after"] * valid, valid, stats["sign_flips"],
    ])
    (delta, delta_sq, weight, clip_low, clip_high, acting, before, after, valid, flips) = teacher.reduce_sum(local)
    acting, valid = max(acting, 1.0), max(valid, 1.0)
    teacher.log_value("rlsd/lambda", lam)
    teacher.log_value("rlsd/sign_flips", flips)
    teacher.log_value("rlsd/delta_mean", delta / acting)
    teacher.log_value("rlsd/delta_std", max(delta_sq / acting - (delta / acting) ** 2, 0.0) ** 0.5)
    teacher.log_value("rlsd/weight_mean", weight / acting)
    teacher.log_value("rlsd/clip_low_frac", clip_low / acting)
    teacher.log_value("rlsd/clip_high_frac", clip_high / acting)
    teacher.log_value("rlsd/adv_abs_before", before / valid)
    teacher.log_value("rlsd/adv_abs_after", after / valid)


__all__ = ["LAMBDA_SCHEDULES", "RLSD", "log_rlsd_stats"]

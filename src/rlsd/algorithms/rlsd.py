"""RLSD (SPEC.md "RLSD"; arXiv 2604.03128): the reward gives the direction, the teacher the magnitude.

```
delta_t = stopgrad(q_t - s_old_t)                  # q_wrong_t in place of s_old_t with teacher_contrast
w_t     = clip(exp(sign(A) * delta_t), 1 - eps_w, 1 + eps_w)
A_t     = A * ((1 - lambda) + lambda * w_t)
```
then TRL's clipped surrogate with A_t (`credit.rlsd_token_advantages`). Rows with A = 0 are not scored by the
teacher: their A_t is 0 whatever it says.

Options, as the authors' code (github iie-ycx/RLSD, `dp_opsd_actor._build_stgca_advantages` and
`opsd_trainer`) and ms-swift (PR 9758, `swift/rl_core/advantage.apply_rlsd_reweight`) define them; each keeps
sign(A_t) = sign(A), |A_t|/|A| in [1 - lambda*eps_w, 1 + lambda*eps_w] and lambda = 0 == GRPO:
- `rlsd_negative_only`: the weight applies on rollouts with A < 0 only; every other row keeps A exactly
  (`reweight = 1`). The teacher then scores only those rows.
- `rlsd_thought_only`: the weight applies only to tokens strictly inside the reasoning span
  (`rlsd_thought_markers`, default `<think>`...`</think>`; the authors use `<thought>`...`</thought>`); the
  markers, the answer and format tokens keep A. Ours differs in two ways: a completion with no span gets the
  weight on every token instead of none (SPEC: the option must not silently turn RLSD off on models that do not
  think aloud), logged as `rlsd/thought_fallback_frac`; and the span is found on the decoded text, not by
  matching the markers' token ids, so a marker merged into a neighbouring token is still found.
- `rlsd_lambda_warmup_steps`: lambda rises linearly 0 -> `rlsd_lambda` over N steps, then holds, or with
  `rlsd_lambda_schedule="linear_decay"` decays to 0 over `rlsd_lambda_decay_steps` (default: the rest of the
  run) -- the authors' warmup -> hold -> decay (`credit.scheduled_lambda`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..credit import maths as credit, records as credit_records
from ..teacher.scoring import TeacherPass
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
        if isinstance(args.rlsd_lambda_warmup_steps, bool) or args.rlsd_lambda_warmup_steps < 0:
            raise config_error("rlsd_lambda_warmup_steps", f"must be >= 0, got {args.rlsd_lambda_warmup_steps!r}")
        markers = args.rlsd_thought_markers
        if isinstance(markers, str) or len(markers) != 2 or not all(isinstance(m, str) for m in markers) \
                or not any(markers):
            raise config_error("rlsd_thought_markers", f"must be [start, end] strings, not both empty, got {markers!r}")

    def rows_to_score(self, teacher: TeacherPass, output: Mapping[str, Any]) -> torch.Tensor:
        advantages = output["advantages"]
        return advantages < 0 if self.args.rlsd_negative_only else advantages != 0

    def current_lambda(self, teacher: TeacherPass) -> float:
        args = self.args
        warmup = args.rlsd_lambda_warmup_steps
        decay = None
        if args.rlsd_lambda_schedule == "linear_decay":
            decay = args.rlsd_lambda_decay_steps or max((teacher.max_steps or 1) - warmup, 1)
        return credit.scheduled_lambda(args.rlsd_lambda, teacher.global_step, warmup, decay)

    def score(self, teacher: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]) -> None:
        super().score(teacher, rows, output)
        if self.args.rlsd_thought_only:  # found once per batch; the loss sees it per micro-batch
            start, end = self.args.rlsd_thought_markers
            mask = self.mask(output).bool()
            inside, found = credit.thought_span_mask(teacher.token_texts(output), start, end, mask.size(1))
            inside, found = inside.to(mask.device), found.to(mask.device)
            output["rlsd_thought_mask"] = torch.where(found.unsqueeze(1), inside, torch.ones_like(inside)) & mask
            teacher.log_mean("rlsd/thought_fallback_frac", (~found).float().mean())
            teacher.log_mean("rlsd/thought_token_frac", inside.float().sum() / mask.float().sum().clamp(min=1))

    def active_tokens(self, inputs: Mapping[str, Any]) -> torch.Tensor | None:
        """(B, T) bool: where the teacher's weight applies (the options); None: every token."""
        active = None
        if self.args.rlsd_negative_only:
            active = (inputs["sequence_advantages"] < 0).unsqueeze(1).expand_as(inputs["completion_mask"])
        if self.args.rlsd_thought_only:
            thought = inputs["rlsd_thought_mask"].bool()
            active = thought if active is None else active & thought
        return active

    def token_advantages(self, teacher: TeacherPass, inputs: Mapping[str, Any], old_logps: torch.Tensor
                         ) -> torch.Tensor:
        mask = self.mask(inputs)
        teacher_logps = inputs["teacher_per_token_logps"]
        baseline = self.baseline_logps(inputs, old_logps)  # q_wrong with teacher_contrast, else s_old
        lam, eps_w = self.current_lambda(teacher), self.args.rlsd_eps_w
        advantages = inputs["sequence_advantages"]
        token_adv, stats = credit.rlsd_token_advantages(advantages, teacher_logps, baseline, mask, lam=lam,
                                                        eps_w=eps_w, active=self.active_tokens(inputs))
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

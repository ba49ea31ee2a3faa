"""GRPO+OPSD (a baseline of the RLSD paper): `loss = loss_GRPO + opsd_coef * mean_t D(teacher || student)`.

The teacher is the privileged self-teacher of OPSD (`teacher_template` over `privileged_fields`), scored over
the same completions in one teacher pass; there is no extra generation. `distill_divergence` picks D as for
OPSD: full vocabulary (forward/reverse KL, JSD, optionally on the student's top-K) adds the divergence to TRL's
GRPO loss; `sampled_token` adds `opsd_coef * (q_t - s_t)` to every token's GRPO advantage instead, which has
the same gradient as adding the sampled reverse KL. `opsd_coef = 0` is GRPO exactly (loss and gradients).
The mixing itself is `algorithms.blend`; this module only says how the two terms are weighted.
"""

from __future__ import annotations

from .base import config_error
from .blend import BlendedDistillation


class GRPOOPSD(BlendedDistillation):
    name = "grpo+opsd"

    @classmethod
    def check_config(cls, args) -> None:
        if not args.opsd_coef >= 0.0:
            raise config_error("opsd_coef", f"must be >= 0, got {args.opsd_coef}")

    def loss_weights(self) -> tuple[float, float]:
        """(policy, distillation) weights: GRPO at full weight, the divergence at `opsd_coef`."""
        return 1.0, float(self.args.opsd_coef)


__all__ = ["GRPOOPSD"]

"""GRPO / RLVR (SPEC.md "GRPO"): TRL's `GRPOTrainer` step unchanged, no teacher pass.

`A = (R - mean_group(R)) / (std_group(R) + eps)` for every token, in TRL's clipped surrogate. The backbone every
other method changes; `rlsd` with lambda = 0 must give exactly this loss and these gradients.
"""

from __future__ import annotations

from typing import Any

import torch

from ..teacher.scoring import TeacherPass
from .base import Algorithm, PolicyLoss


class GRPO(Algorithm):
    name = "grpo"
    uses_teacher = False

    def loss(self, teacher: TeacherPass, model, inputs: dict[str, Any], policy_loss: PolicyLoss) -> torch.Tensor:
        return policy_loss(model, inputs)


__all__ = ["GRPO"]

"""OPD (SPEC.md "OPD"): OPSD's loss with an external teacher (`teacher_model`, same tokenizer), loaded once.

The teacher sees the plain prompt `x` (the student's own prompt tensors and images), or `x` with the privileged
text when `opd_teacher_sees_privileged`. Exists to measure what RLSD saves: a second model's memory and time.
"""

from __future__ import annotations

from typing import Any

import torch

from ..teacher.scoring import TeacherPass
from .base import config_error
from .opsd import OPSD


class OPD(OPSD):
    name = "opd"
    external_teacher = True
    supports_contrast = False  # the external teacher is not the model shown a reference

    @classmethod
    def check_config(cls, args) -> None:
        if not args.teacher_model:
            raise config_error("teacher_model",
                               f"algorithm={args.algorithm!r} needs an external teacher model (hub id or local path)")

    @classmethod
    def privileged_fields(cls, args) -> list[str]:
        return list(args.privileged_fields) if args.opd_teacher_sees_privileged else []

    def teacher_prompts(self, teacher: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.args.opd_teacher_sees_privileged:
            return teacher.privileged_prompts(rows, output)
        return teacher.plain_prompts(output)


__all__ = ["OPD"]

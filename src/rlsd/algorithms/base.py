"""`Algorithm`: what differs between methods, as one class the trainer dispatches to.

The trainer runs the same step for every method: TRL samples and scores G completions per prompt, then
(if `uses_teacher`) `score` runs the teacher pass and fills the batch, then `loss` turns the batch into the
loss (TRL's clipped surrogate with this method's token advantages, or a loss of its own). An algorithm decides:
- the teacher's prompt for a row (`teacher_prompts`) and which rows the teacher scores (`rows_to_score`);
- the token advantages (`token_advantages`, fed to TRL's clipped surrogate) or the whole loss (`loss`);
- its own metrics (log through the `TeacherPass` it is handed) and the validation of its config fields
  (`check_config`);
- what it supports (`supports_images`, `supports_tools`, `supports_multiprocess`, `supports_contrast`).
It never reaches into the trainer: everything it may ask for is on `rlsd.teacher.scoring.TeacherPass`.
The maths stays in pure functions (`rlsd.credit`); an algorithm wires them to the batch.

Batch keys an algorithm reads (B rows, T completion tokens): `completion_ids`, `completion_mask`, `prompt_ids`,
`prompt_mask`, `advantages` (B,) (after `score`: `sequence_advantages`, GRPO's), `tool_mask` (agent runs),
`teacher_per_token_logps` (B, T) when `score` computed them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from ..teacher.scoring import TeacherPass, loss_mask
from .contrast import contrast_for

PolicyLoss = Callable[..., torch.Tensor]  # policy_loss(model, inputs, token_advantages=None) -> TRL's loss


def config_error(field: str, message: str) -> ValueError:
    """The one-line error of a bad config field: `RLSDConfig.<field>: <message>`."""
    return ValueError(f"RLSDConfig.{field}: {message}")


class Algorithm:
    """Base of every method. Subclass it, set `name`, override `token_advantages` or `loss` (and what else differs).

    One instance per trainer, built from the config (`self.args`). The defaults are RLSD's teacher pass: the
    privileged prompt (`teacher_template` over `privileged_fields`), every row scored, q_t kept in the batch.
    """

    name: ClassVar[str] = ""
    # Capabilities. A method that cannot do one of these is refused up front, with the field to change.
    uses_teacher: ClassVar[bool] = True  # False: no teacher pass at all (GRPO)
    external_teacher: ClassVar[bool] = False  # True: the teacher is `teacher_model`, loaded once (OPD)
    supports_images: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True
    supports_multiprocess: ClassVar[bool] = True
    supports_contrast: ClassVar[bool] = False  # `teacher_contrast="wrong_reference"` applies (see `contrast`)
    default_teacher_mode: ClassVar[str] = "live"

    def __init__(self, args):
        self.args = args
        self.contrast = contrast_for(args)

    # ---- config -----------------------------------------------------------------------------------------------
    @classmethod
    def unsupported(cls, args, images: bool = False, tools: bool = False, processes: int = 1) -> str | None:
        """Why this algorithm (with its contrast) cannot train on these rows / this launch, or None."""
        contrast = contrast_for(args)
        if images and not cls.supports_images:
            return f"RLSDConfig.algorithm={args.algorithm!r} does not support image rows"
        if images and contrast is not None and not contrast.supports_images:
            return f"RLSDConfig.teacher_contrast={args.teacher_contrast!r} does not support image rows"
        if tools and not cls.supports_tools:
            return f"RLSDConfig.algorithm={args.algorithm!r} does not support tools or environments"
        if processes > 1 and not cls.supports_multiprocess:
            return f"RLSDConfig.algorithm={args.algorithm!r} does not support more than one process"
        return None

    @classmethod
    def check_config(cls, args) -> None:
        """Validate this method's own config fields; raise `config_error(field, message)`. Called by RLSDConfig."""

    @classmethod
    def divergence_only(cls, args) -> str | None:
        """If the loss is a distillation divergence alone (TRL's surrogate never runs, so its options cannot act):
        a phrase saying which setting makes it so, e.g. "algorithm='opsd'"; else None."""
        return None

    @classmethod
    def privileged_fields(cls, args) -> list[str]:
        """Dataset columns the teacher pass reads (checked up front): `privileged_fields` if it shows them."""
        return list(args.privileged_fields) if cls.uses_teacher else []

    # ---- teacher pass (after generation, no gradient) ---------------------------------------------------------
    def teacher_prompts(self, teacher: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) left-padded ids and mask of each row's teacher prompt. Default: the privileged prompt."""
        return teacher.privileged_prompts(rows, output)

    def rows_to_score(self, teacher: TeacherPass, output: Mapping[str, Any]) -> torch.Tensor | None:
        """(B,) 0/1: rows whose teacher scores can matter (others are left at 0); None scores every row."""
        return None

    def distills_full_vocab(self) -> bool:
        """True: the loss needs full-vocabulary teacher logits, recomputed per micro-batch (too large to keep)."""
        return False

    def score(self, teacher: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]) -> None:
        """The teacher pass: fill `output` for the loss. Default: q_t as `teacher_per_token_logps` (B, T), or the
        teacher prompts for a full-vocabulary loss, then the contrast's second pass when it is on."""
        output["sequence_advantages"] = output["advantages"]
        ids, mask = self.teacher_prompts(teacher, rows, output)
        if self.distills_full_vocab():
            teacher.store(output, ids, mask)
        else:
            output["teacher_per_token_logps"] = teacher.logps(ids, mask, output,
                                                              rows=self.rows_to_score(teacher, output))
        if self.contrast is not None:
            self.contrast.add_wrong_reference(teacher, self, rows, output, ids, mask)

    def wrong_prompts(self, teacher: TeacherPass, rows: list[dict[str, Any]], output: dict[str, Any]
                      ) -> list[tuple[Any, dict[str, Any]] | None] | None:
        """Contrast: each row's teacher prompt under a wrong reference, with the mapping it was rendered from
        (for fitting to length), or None per row; None overall lets `contrast` draw another row's reference."""
        return None

    def wrong_prompt_fields(self) -> tuple[tuple[str, ...] | None, str | None]:
        """(fields, template) the wrong prompts were rendered with, for cutting them to length (None: the config's)."""
        return None, None

    # ---- update -----------------------------------------------------------------------------------------------
    def token_advantages(self, teacher: TeacherPass, inputs: Mapping[str, Any], old_logps: torch.Tensor
                         ) -> torch.Tensor | None:
        """(B, T) advantages for TRL's clipped surrogate, from the batch and s_old (B, T, no gradient).

        None keeps TRL's sequence advantages (GRPO). Called once per micro-batch.
        """
        return None

    def loss(self, teacher: TeacherPass, model, inputs: dict[str, Any], policy_loss: PolicyLoss) -> torch.Tensor:
        """The micro-batch loss. Default: TRL's clipped surrogate with `token_advantages`.

        `policy_loss(model, inputs, token_advantages=None)` is TRL's loss; with a function
        `(inputs, old_logps) -> (B, T)` it first replaces the advantages (s_old filled in on-policy).
        """
        return policy_loss(model, inputs, lambda batch, old: self.token_advantages(teacher, batch, old))

    # ---- helpers for subclasses ---------------------------------------------------------------------------------
    @staticmethod
    def mask(inputs: Mapping[str, Any]) -> torch.Tensor:
        """(B, T) tokens that count: completion tokens, less tool results in agent runs."""
        return loss_mask(inputs)

    def baseline_logps(self, inputs: Mapping[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
        """(B, T) what the teacher's log-probs are compared with: q_wrong with a contrast (where a row has one),
        else s_old."""
        if self.contrast is None:
            return old_logps
        return self.contrast.baseline_logps(inputs, old_logps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


__all__ = ["Algorithm", "PolicyLoss", "config_error"]

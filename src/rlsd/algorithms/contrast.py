"""Contrastive teacher evidence (`teacher_contrast="wrong_reference"`; idea from RLCSD, arXiv 2606.11709).

Any hint shifts the teacher's style whether or not it is right. So each completion is scored a second time
by the same teacher under a *wrong* reference: another row's reference (RLSD, OPSD, GRPO+OPSD) or another
group's demonstration (SDPO), chosen from the batch with a different answer, never the right one. Then:
- RLSD: `delta_t = q_right_t - q_wrong_t` replaces `q_t - s_old_t` (`credit.contrastive_rlsd_token_advantages`);
  the weight clip and `A_t = A * ((1 - lam) + lam * w_t)` are unchanged, so RLSD's guarantees hold.
- sampled-token distillation (OPSD, SDPO, GRPO+OPSD): the signal `q_right_t - q_wrong_t` replaces `q_t - s_t`.
- full-vocabulary distillation: the target is the student tilted by the contrast,
  `softmax(log pi_student + log pi_right - log pi_wrong)` (`credit.contrastive_target_logits`).
A row for which the batch holds no wrong reference (every answer equal) keeps the plain signal; the share of
rows that got one is logged as `contrast/rows_frac`, the second pass's time as `teacher/contrast_time_frac`.
Image rows: the wrong prompt is the row's own prompt and images with another row's reference text.

Any algorithm with `supports_contrast` gets it: `Algorithm.score` calls `WrongReference.add_wrong_reference`,
`Algorithm.baseline_logps` reads q_wrong, and a full-vocabulary loss calls `target_logits`. An algorithm that
builds its own wrong contexts (SDPO: another group's demonstration) overrides `Algorithm.wrong_prompts`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from ..credit import maths as credit
from ..teacher import prompts as teacher
from ..teacher.scoring import TeacherPass

TEACHER_CONTRASTS = ("none", "wrong_reference")
WRONG_KEY = "teacher_wrong"  # batch keys of the wrong-reference prompts: teacher_wrong_prompt_ids, ...


def wrong_reference_indices(keys: Sequence[Hashable | None], group_size: int, first_index: int = 0
                            ) -> list[int | None]:
    """For each row i, the first row j after it (cyclically) in another group with a key that differs from i's.

    Args:
        keys: one per row (e.g. the reference answer); None marks a row that has no reference to lend or use.
        group_size: completions per prompt; row k belongs to group `(first_index + k) // group_size`.
    Returns:
        An index j != i with `keys[j] != keys[i]` and a different group, or None (no key, or none differs).
    """
    n = len(keys)
    partners: list[int | None] = []
    for i, key in enumerate(keys):
        found = None
        if key is not None:
            group = (first_index + i) // group_size
            for step in range(1, n):
                j = (i + step) % n
                if keys[j] is not None and keys[j] != key and (first_index + j) // group_size != group:
                    found = j
                    break
        partners.append(found)
    return partners


def reference_key(row: dict[str, Any], fields: Sequence[str]) -> Hashable | None:
    """What makes two references different: the answer when there is one, else all privileged fields."""
    if row.get("answer") not in (None, ""):
        return str(row["answer"]).strip()
    values = tuple(str(row.get(f) or "").strip() for f in fields)
    return values if any(values) else None


def wrong_reference_prompts(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], template: str,
                            group_size: int, first_index: int = 0) -> list[tuple[Any, dict] | None]:
    """Each row's teacher prompt with another group's privileged fields (a different answer), or None.

    Returns (prompt, the row it was rendered from) per row: the row's own prompt and images, the partner's
    `fields`.
    """
    partners = wrong_reference_indices([reference_key(r, fields) for r in rows], group_size, first_index)
    prompts: list[tuple[Any, dict] | None] = []
    for row, j in zip(rows, partners, strict=True):
        if j is None:
            prompts.append(None)
            continue
        wrong_row = {**row, **{f: rows[j].get(f) for f in fields}}
        prompts.append((teacher.teacher_prompt(row["prompt"], wrong_row, template), wrong_row))
    return prompts


class WrongReference:
    """`teacher_contrast="wrong_reference"`: the second teacher pass and how its scores enter the signal."""

    supports_images = True  # the wrong prompt keeps the row's own images (`Algorithm.unsupported` checks this)

    def __init__(self, args):
        self.args = args

    def add_wrong_reference(self, teacher_pass: TeacherPass, algorithm, rows: list[dict[str, Any]],
                            output: dict[str, Any], right_ids: torch.Tensor, right_mask: torch.Tensor) -> None:
        """Second teacher pass under a wrong reference; fills `output` for the loss and times itself.

        Sets `contrast_rows` (B,) and either `teacher_wrong_per_token_logps` (B, T) or, for full-vocabulary
        distillation (recomputed per micro-batch in the loss), `teacher_wrong_prompt_ids` / `_mask`.
        """
        with teacher_pass.timed("contrast"):
            wrong = algorithm.wrong_prompts(teacher_pass, rows, output)
            if wrong is None:
                wrong = wrong_reference_prompts(rows, self.args.privileged_fields, self.args.teacher_template,
                                                teacher_pass.group_size, teacher_pass.first_row(len(rows)))
            has_wrong = [w is not None for w in wrong]
            if any(has_wrong):
                # Rows without a wrong reference are scored under any prompt (the result is never used): one batch.
                placeholder = next(w for w in wrong if w is not None)
                filled = [w if w is not None else placeholder for w in wrong]
                fields, template = algorithm.wrong_prompt_fields()
                fit_rows = [{**row, **r} for row, (_, r) in zip(rows, filled, strict=True)]  # the row's own images
                ids, mask = teacher_pass.encode([p for p, _ in filled], output, fit_rows, fields=fields,
                                                template=template, key=WRONG_KEY)
            else:
                ids, mask = right_ids, right_mask  # nothing to contrast: placeholders, never used
            contrast_rows = torch.tensor(has_wrong, dtype=torch.float32, device=output["completion_ids"].device)
            output["contrast_rows"] = contrast_rows
            if algorithm.distills_full_vocab():
                teacher_pass.store(output, ids, mask, key=WRONG_KEY)
            elif any(has_wrong):
                output["teacher_wrong_per_token_logps"] = teacher_pass.logps(
                    ids, mask, output, rows=algorithm.rows_to_score(teacher_pass, output), key=WRONG_KEY)
            else:
                output["teacher_wrong_per_token_logps"] = torch.zeros_like(output["completion_ids"],
                                                                            dtype=torch.float32)
            teacher_pass.log_mean("contrast/rows_frac", contrast_rows.mean())

    @staticmethod
    def baseline_logps(inputs: Mapping[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
        """(B, T) baseline of the teacher's evidence: q_wrong on rows with a wrong reference, else s_old."""
        return baseline_logps(inputs, old_logps)

    @staticmethod
    @torch.no_grad()
    def target_logits(teacher_pass: TeacherPass, teacher_module, student_logits: torch.Tensor,
                      teacher_logits: torch.Tensor, inputs: Mapping[str, Any]) -> torch.Tensor:
        """Full-vocabulary target: `credit.contrastive_target_logits` on rows with a wrong reference, else the
        teacher's logits. Call inside `teacher_pass.module()`."""
        with teacher_pass.timed("contrast"):
            wrong_logits = teacher_pass.logits(teacher_module, inputs, key=WRONG_KEY)
        vocab = min(student_logits.size(-1), teacher_logits.size(-1), wrong_logits.size(-1))
        contrasted = credit.contrastive_target_logits(
            student_logits[..., :vocab], teacher_logits[..., :vocab], wrong_logits[..., :vocab])
        rows = inputs["contrast_rows"].bool().view(-1, 1, 1)
        return torch.where(rows, contrasted, teacher_logits[..., :vocab].float())


def contrast_for(args) -> WrongReference | None:
    """The contrast an algorithm built from `args` uses, or None (`teacher_contrast="none"`)."""
    return WrongReference(args) if getattr(args, "teacher_contrast", "none") == "wrong_reference" else None


def baseline_logps(inputs: Mapping[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
    """(B, T) baseline of the teacher's evidence: q_wrong on rows with a wrong reference, else s_old."""
    wrong = inputs.get("teacher_wrong_per_token_logps")
    if wrong is None:
        return old_logps
    rows = inputs["contrast_rows"].bool().unsqueeze(1)
    return torch.where(rows, wrong.to(old_logps.dtype), old_logps)


__all__ = ["TEACHER_CONTRASTS", "WRONG_KEY", "WrongReference", "baseline_logps", "contrast_for", "reference_key",
           "wrong_reference_indices", "wrong_reference_prompts"]

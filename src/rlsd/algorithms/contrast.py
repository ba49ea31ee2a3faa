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
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from .. import credit, teacher
from .common import encode_prompts

WRONG_PROMPTS_KEY = "_wrong_teacher_prompts"  # set by an algorithm that builds its own wrong contexts (SDPO)


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


def _wrong_reference_prompts(trainer, inputs: list[dict[str, Any]]) -> list[tuple[Any, dict] | None]:
    args = trainer.args
    first = trainer.accelerator.process_index * len(inputs)
    group_size = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
    partners = wrong_reference_indices([reference_key(r, args.privileged_fields) for r in inputs], group_size, first)
    prompts: list[tuple[Any, dict] | None] = []
    for row, j in zip(inputs, partners, strict=True):
        if j is None:
            prompts.append(None)
            continue
        wrong_row = {**row, **{f: inputs[j].get(f) for f in args.privileged_fields}}
        prompts.append((teacher.teacher_prompt(row["prompt"], wrong_row, args.teacher_template), wrong_row))
    return prompts


def add_wrong_reference(trainer, inputs: list[dict[str, Any]], output: dict[str, Any],
                        right_ids: torch.Tensor, right_mask: torch.Tensor) -> None:
    """Second teacher pass under a wrong reference; fills `output` for the loss and times itself.

    Sets `contrast_rows` (B,) and either `teacher_wrong_per_token_logps` (B, T) or, for full-vocabulary
    distillation (recomputed per micro-batch in the loss), `teacher_wrong_prompt_ids` / `_mask`.
    """
    start = time.perf_counter()
    wrong = output.pop(WRONG_PROMPTS_KEY, None)
    if wrong is None:
        wrong = _wrong_reference_prompts(trainer, inputs)
    has_wrong = [w is not None for w in wrong]
    if any(has_wrong):
        # Rows without a wrong reference are scored under any prompt (their result is never used): one batch.
        placeholder = next(w for w in wrong if w is not None)
        filled = [w if w is not None else placeholder for w in wrong]
        fields, template = None, None  # the teacher's own template and privileged fields
        if trainer.args.algorithm == "sdpo":
            from .sdpo import SDPO_TEMPLATE

            fields, template = ("demonstration",), trainer.args.sdpo_template or SDPO_TEMPLATE
        ids, mask = encode_prompts(trainer, [p for p, _ in filled], [r for _, r in filled], fields=fields,
                                   template=template)
    else:
        ids, mask = right_ids, right_mask  # nothing to contrast: placeholders, never used
    rows = torch.tensor(has_wrong, dtype=torch.float32, device=output["completion_ids"].device)
    output["contrast_rows"] = rows
    if trainer._distills_full_vocab:
        output["teacher_wrong_prompt_ids"], output["teacher_wrong_prompt_mask"] = ids, mask
    elif any(has_wrong):
        output["teacher_wrong_per_token_logps"] = trainer._teacher_logps(ids, mask, output)
    else:
        output["teacher_wrong_per_token_logps"] = torch.zeros_like(output["completion_ids"], dtype=torch.float32)
    trainer._log_mean("contrast/rows_frac", rows.mean())
    trainer._contrast_seconds += time.perf_counter() - start


def baseline_logps(inputs: dict[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
    """(B, T) baseline of the teacher's evidence: q_wrong on rows with a wrong reference, else s_old."""
    wrong = inputs.get("teacher_wrong_per_token_logps")
    if wrong is None:
        return old_logps
    rows = inputs["contrast_rows"].bool().unsqueeze(1)
    return torch.where(rows, wrong.to(old_logps.dtype), old_logps)


@torch.no_grad()
def target_logits(trainer, teacher_module, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  inputs: dict[str, Any]) -> torch.Tensor:
    """Full-vocabulary target: `credit.contrastive_target_logits` on rows with a wrong reference, else the teacher."""
    start = time.perf_counter()
    wrong_logits = trainer._completion_logits(
        teacher_module, inputs["teacher_wrong_prompt_ids"], inputs["teacher_wrong_prompt_mask"], inputs)
    trainer._contrast_seconds += time.perf_counter() - start
    vocab = min(student_logits.size(-1), teacher_logits.size(-1), wrong_logits.size(-1))
    contrasted = credit.contrastive_target_logits(
        student_logits[..., :vocab], teacher_logits[..., :vocab], wrong_logits[..., :vocab])
    rows = inputs["contrast_rows"].bool().view(-1, 1, 1)
    return torch.where(rows, contrasted, teacher_logits[..., :vocab].float())

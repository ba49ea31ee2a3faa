"""Teacher prompts to padded token tensors, shared by the algorithms' teacher contexts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from trl.trainer.utils import pad


def encode_prompts(trainer, prompts: Sequence[Any], rows: Sequence[Mapping[str, Any]] | None = None,
                   fields: Sequence[str] | None = None, template: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) left-padded ids and mask of `prompts` (chat or text), on the trainer's device.

    With `rows` (and the `fields` and `template` that rendered the prompts), prompts longer than
    `teacher_max_prompt_length` lose text from those fields, never from the task prompt.
    """
    prompt_ids = trainer._tokenize_prompts(list(prompts))[0]
    if trainer.args.teacher_max_prompt_length is not None and rows is not None:
        prompt_ids = [trainer._fit_teacher_prompt(ids, row, fields=fields, template=template)
                      for ids, row in zip(prompt_ids, rows, strict=True)]
    device = trainer.accelerator.device
    ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=trainer._tokenizer.pad_token_id,
              padding_side="left", pad_to_multiple_of=trainer.pad_to_multiple_of).to(device)
    mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0,
               padding_side="left", pad_to_multiple_of=trainer.pad_to_multiple_of).to(device)
    return ids, mask

"""`TeacherPass`: the public face of the teacher forward that every algorithm calls (never the trainer's internals).

An algorithm (`rlsd.algorithms`) decides *what* the teacher is shown and *what* its scores become; this object
does the work that is the same for all of them:
- prompts: the privileged prompt of a row (`privileged_prompts`, student-blindness checked), any prompt an
  algorithm renders itself (`encode`), cut to `teacher_max_prompt_length` in the privileged text only, with the
  row's images (per-token multimodal fields stored in the batch under `<key>_<field>`);
- scoring: q_t of the student's completion tokens (`logps`, shared-prefix when it applies, only the rows asked
  for), full-vocabulary logits (`logits`, `student_logits`) for distillation;
- facts about the batch: group size, this process's first row, the gathered rewards, decoded texts;
- metrics and per-token records (`log_mean`, `log_value`, `reduce_sum`, `record_credit`, `log_kind_split`).

Shapes: B rows, P teacher-prompt columns (left-padded), T completion columns, V vocabulary.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from ..agents import glue as agents
from ..credit import records as credit_records
from . import images as multimodal, prompts as teacher, shared_prefix

TEACHER_KEY = "teacher"  # batch keys of the main teacher prompt: teacher_prompt_ids, teacher_mm_token_type_ids, ...


class TeacherPass:
    """What an algorithm may ask of the trainer's teacher forward; one per trainer (`trainer.teacher_pass`)."""

    def __init__(self, trainer):
        self._trainer = trainer
        self.seconds: dict[str, float] = defaultdict(float)  # named parts of the teacher pass, reset every step

    # ---- facts ----------------------------------------------------------------------------------------------------
    @property
    def args(self):
        return self._trainer.args

    @property
    def device(self) -> torch.device:
        return self._trainer.accelerator.device

    @property
    def training(self) -> bool:
        return self._trainer.model.training

    @property
    def group_size(self) -> int:
        trainer = self._trainer
        return trainer.num_generations if trainer.model.training else trainer.num_generations_eval

    def first_row(self, local_rows: int) -> int:
        """Index in the gathered batch of this process's first row (rows are split evenly over processes)."""
        return self._trainer.accelerator.process_index * local_rows

    @property
    def global_step(self) -> int:
        return self._trainer.state.global_step

    @property
    def max_steps(self) -> int:
        return self._trainer.state.max_steps

    @property
    def processing_class(self):
        return self._trainer.processing_class

    @property
    def sharded(self) -> bool:
        """DeepSpeed ZeRO-3 / FSDP: every rank must run the same forward calls (no row skipping, no shared prefix)."""
        return bool(self._trainer.is_deepspeed_enabled or self._trainer.is_fsdp_enabled)

    def rewards(self) -> torch.Tensor:
        """(N,) summed rewards of the whole last generation batch (gathered over processes), on the CPU."""
        return self._trainer._last_rewards.detach().float().cpu()

    def student_prompts(self, output: Mapping[str, Any]) -> list[str]:
        """The student's prompts as the model saw them (decoded)."""
        decode = self.processing_class.decode
        return [decode(ids[mask.bool()]) for ids, mask in zip(output["prompt_ids"], output["prompt_mask"], strict=True)]

    def completion_texts(self, output: Mapping[str, Any]) -> list[str]:
        ids = [ids[mask.bool()] for ids, mask in zip(output["completion_ids"], output["completion_mask"], strict=True)]
        return self.processing_class.batch_decode(ids, skip_special_tokens=True)

    def token_texts(self, output: Mapping[str, Any]) -> list[list[str]]:
        """Per completion, the decoded text of each of its tokens (padding left out), in order."""
        decode = self.processing_class.batch_decode
        return [decode([[t] for t in ids[mask.bool()].tolist()]) if mask.any() else []
                for ids, mask in zip(output["completion_ids"], output["completion_mask"], strict=True)]

    def gather(self, objects: list) -> list:
        from accelerate.utils import gather_object

        return gather_object(objects)

    def rows(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows teacher prompts are built from (agent runs: the rolled-out prompt, environment privileged text)."""
        return agents.teacher_rows(self._trainer, inputs)

    # ---- prompts --------------------------------------------------------------------------------------------------
    def privileged_prompts(self, rows: Sequence[Mapping[str, Any]], output: dict[str, Any], key: str = TEACHER_KEY,
                           template: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) ids and mask of each row's prompt with its privileged text (`teacher_template`), images kept.

        Raises if a student prompt already holds its row's privileged text (SPEC property 6).
        """
        template = template or self.args.teacher_template
        if key == TEACHER_KEY:
            teacher.assert_student_blind(self.student_prompts(output), rows, template)
        prompts = [teacher.teacher_prompt(row["prompt"], row, template) for row in rows]
        return self.encode(prompts, output, rows=rows, template=template, key=key)

    def plain_prompts(self, output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's own prompt (an external teacher shown nothing more), with the student's multimodal fields."""
        return output["prompt_ids"], output["prompt_mask"]

    def encode(self, prompts: Sequence[Any], output: dict[str, Any], rows: Sequence[Mapping[str, Any]] | None = None,
               fields: Sequence[str] | None = None, template: str | None = None, key: str = TEACHER_KEY,
               images: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) left-padded ids and mask of teacher `prompts` (chat or text), one per row, on the device.

        With `rows` (the mappings `template` rendered over `fields`, default `privileged_fields`), prompts longer
        than `teacher_max_prompt_length` lose text from those fields, never from the task prompt. With `images`,
        each row's images (from `rows`, the dataset rows) go into its prompt, and the prompt's per-token
        multimodal fields are stored in `output` as `<key>_<field>`, (B, P + T).
        """
        row_images = multimodal.row_images(rows) if images and rows else None
        prompt_ids, token_fields = self._encode(prompts, row_images)
        if self.args.teacher_max_prompt_length is not None and rows is not None:
            for i, row in enumerate(rows):
                row_fields: dict[str, torch.Tensor] = {}
                prompt_ids[i] = self._fit(prompt_ids[i], row, fields, template,
                                          [row_images[i]] if row_images else None, row_fields)
                for name, value in row_fields.items():
                    token_fields[name][i] = value
        trainer = self._trainer
        ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=trainer._tokenizer.pad_token_id,
                  padding_side="left", pad_to_multiple_of=trainer.pad_to_multiple_of).to(self.device)
        mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0,
                   padding_side="left", pad_to_multiple_of=trainer.pad_to_multiple_of).to(self.device)
        for name, value in multimodal.pad_token_fields(token_fields, ids.size(1), output["completion_ids"].size(1),
                                                       self.device).items():
            output[f"{key}_{name}"] = value
        return ids, mask

    def encode_unpadded(self, prompts: Sequence[Any], images: Sequence[list[Any] | None] | None = None
                        ) -> tuple[list[list[int]], dict[str, list[torch.Tensor]]]:
        """Token ids (and, with images, per-token multimodal fields) of teacher prompts, one unpadded list per row."""
        return self._encode(prompts, images)

    def _encode(self, prompts, images) -> tuple[list[list[int]], dict[str, list[torch.Tensor]]]:
        trainer = self._trainer
        if images is None:
            return trainer._tokenize_prompts(list(prompts))[0], {}
        return multimodal.teacher_prompt_inputs(trainer.processing_class, prompts, images,
                                                trainer.chat_template_kwargs, trainer.tools or None)

    def _fit(self, ids: list[int], row: Mapping[str, Any], fields, template, images,
             token_fields_out: dict[str, torch.Tensor]) -> list[int]:
        """Cut privileged text (never the prompt, never the completion) until the teacher prompt fits.

        With `images` (the row's), the prompt is re-encoded with them and, if it was cut, its per-token
        multimodal fields are written to `token_fields_out`.
        """
        limit, fields = self.args.teacher_max_prompt_length, fields or self.args.privileged_fields
        template = template or self.args.teacher_template
        for _ in range(8):
            if len(ids) <= limit:
                return ids
            row = teacher.shorten_privileged(row, fields, overflow_chars=len(ids) - limit)
            encoded, row_fields = self._encode([teacher.teacher_prompt(row["prompt"], row, template)], images)
            ids = encoded[0]
            token_fields_out.update({name: value[0] for name, value in row_fields.items()})
        return ids  # the prompt and template alone exceed the limit: keep them whole rather than cut the prompt

    def store(self, output: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor, key: str = TEACHER_KEY) -> None:
        """Keep prompts in the batch for a loss that rescores them per micro-batch (`<key>_prompt_ids` / `_mask`)."""
        output[f"{key}_prompt_ids"], output[f"{key}_prompt_mask"] = ids, mask

    # ---- scoring --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def logps(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, output: Mapping[str, Any],
              rows: torch.Tensor | None = None, key: str = TEACHER_KEY) -> torch.Tensor:
        """q_t: log-probs of the student's completion tokens under the teacher prompts, (B, T) float32.

        `rows` (B,) bool/0-1 picks the rows to score (others stay 0): the caller knows their scores cannot matter.
        Sharded engines score every row (same forward calls on every rank). With `teacher_share_prefix`, each
        distinct prompt is read once and its KV cache reused (`shared_prefix.shared_prefix_logps`) wherever
        `shared_prefix.share_prefix_blocker` names no reason; else one plain forward per row.
        `key` names the prompt's stored per-token multimodal fields (`encode`).
        """
        trainer = self._trainer
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        index = torch.arange(completion_ids.size(0), device=completion_ids.device)
        if rows is not None and not self.sharded:
            index = rows.nonzero(as_tuple=True)[0]
        logps = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
        if key == TEACHER_KEY:
            self.log_value("teacher/rows_scored_frac", index.numel() / max(completion_ids.size(0), 1))
        if index.numel() == 0:
            return logps
        input_ids = torch.cat([prompt_ids[index], completion_ids[index]], dim=1)
        attention_mask = torch.cat([prompt_mask[index], completion_mask[index]], dim=1)
        args = self.args
        batch_size = args.per_device_train_batch_size if self.training else args.per_device_eval_batch_size
        # The same images as the student's, with the teacher prompt's own per-token fields, for these rows only.
        fields = multimodal.select_rows(multimodal.teacher_forward_fields(output, prefix=f"{key}_"), index)
        with disable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs), \
                trainer.teacher.activate() as teacher_module:
            if self.shares_prefix(teacher_module, output):
                scored = shared_prefix.shared_prefix_logps(
                    teacher_module, prompt_ids[index], prompt_mask[index], completion_ids[index],
                    completion_mask[index], batch_size=batch_size, autocast=trainer.accelerator.autocast)
            else:
                scored, _, _ = trainer._get_per_token_logps_and_entropies(
                    teacher_module, input_ids, attention_mask, completion_ids.size(1), batch_size=batch_size,
                    **fields)
        logps[index] = scored.float()
        return logps

    def shares_prefix(self, teacher_module, output: Mapping[str, Any]) -> bool:
        if not self.args.teacher_share_prefix:
            return False
        return shared_prefix.share_prefix_blocker(teacher_module, output, sharded=self.sharded) is None

    @contextlib.contextmanager
    def module(self) -> Iterator[torch.nn.Module]:
        """The teacher's module (live, EMA, base, snapshot or external weights), no gradient through it."""
        with torch.no_grad(), self._trainer.teacher.activate() as teacher_module:
            yield teacher_module

    def logits(self, teacher_module, inputs: Mapping[str, Any], key: str = TEACHER_KEY) -> torch.Tensor:
        """(B, T, V) teacher logits at the completion positions, over the prompts stored under `key` (`store`),
        divided by the sampling temperature. Call inside `module()`."""
        trainer = self._trainer
        prompt_ids, prompt_mask = inputs[f"{key}_prompt_ids"], inputs[f"{key}_prompt_mask"]
        if self.shares_prefix(teacher_module, inputs):
            return shared_prefix.shared_prefix_logits(
                teacher_module, prompt_ids, prompt_mask, inputs["completion_ids"], inputs["completion_mask"],
                autocast=trainer.accelerator.autocast) / trainer.temperature
        fields = multimodal.model_kwargs(multimodal.teacher_forward_fields(inputs, prefix=f"{key}_"))
        return self.completion_logits(teacher_module, prompt_ids, prompt_mask, inputs, fields)

    def student_logits(self, model, inputs: Mapping[str, Any]) -> torch.Tensor:
        """(B, T, V) student logits at the completion positions (with gradient), temperature applied."""
        return self.completion_logits(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs,
                                      multimodal.model_kwargs(inputs))

    def completion_logits(self, module, prompt_ids, prompt_mask, inputs, multimodal_kwargs=None) -> torch.Tensor:
        """(B, T, V) logits of the completion tokens after `prompt_ids`; `multimodal_kwargs`: pixel_values, ..."""
        trainer = self._trainer
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, inputs["completion_mask"]], dim=1)
        with trainer.accelerator.autocast():
            logits = module(input_ids=input_ids, attention_mask=attention_mask,
                            logits_to_keep=completion_ids.size(1) + 1, **(multimodal_kwargs or {})).logits
        return logits[:, :-1, :] / trainer.temperature

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary (models may pad their logits beyond it)."""
        return len(self._trainer._tokenizer)

    @property
    def loss_scale(self) -> float:
        """Divide a loss an algorithm builds itself by this (gradient accumulation), as TRL does with its own."""
        trainer = self._trainer
        return float(trainer.current_gradient_accumulation_steps) if self.training else 1.0

    # ---- metrics and records ------------------------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, list[float]]:
        """This mode's metric lists (`train` or `eval`); append a value to log it (averaged per logging step)."""
        return self._trainer._metrics["train" if self.training else "eval"]

    def log_value(self, name: str, value: float) -> None:
        """Log a number that is the same on every process (or a local one; no reduction)."""
        self.metrics[name].append(float(value))

    def log_mean(self, name: str, value: torch.Tensor) -> None:
        """Log a 0-d tensor's mean over all processes."""
        accelerator = self._trainer.accelerator
        value = value.detach().float().reshape(1).to(accelerator.device)
        self.metrics[name].append(accelerator.gather(value).mean().item())

    def reduce_sum(self, values: torch.Tensor) -> list[float]:
        """Sum a 1-d tensor over all processes."""
        return self._trainer.accelerator.reduce(values.float().to(self.device), "sum").tolist()

    def record_credit(self, inputs: Mapping[str, Any], signals, **how) -> None:
        """Per-token credit for `rlsd inspect` (see `rlsd.credit.records`): `signals` maps names to (B, T) tensors,
        or is a function returning that map (only called when this micro-batch holds recorded rows)."""
        recorder = getattr(self._trainer, "credit_recorder", None)
        if recorder is not None and inputs.get(credit_records.ROW_KEY) is not None:
            recorder.capture(inputs, signals() if callable(signals) else signals, **how)

    def log_kind_split(self, inputs, values: torch.Tensor, mask: torch.Tensor, name: str) -> None:
        """Agent runs: `{name}_tool_call` / `{name}_reasoning` means of a per-token signal (see `agents`)."""
        agents.log_kind_split(self._trainer, inputs, values, mask, name)

    def log_weight_split(self, inputs, token_advantages: torch.Tensor, mask: torch.Tensor) -> None:
        """Agent runs: RLSD's mean token weight on tool-call vs reasoning tokens (see `agents`)."""
        agents.log_weight_split(self._trainer, inputs, token_advantages, mask)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Count the block's time as part `name` of the teacher pass (`teacher/<name>_time_frac` each step)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def loss_mask(inputs: Mapping[str, Any]) -> torch.Tensor:
    """(B, T) tokens a loss counts: completion tokens, less tool results in agent runs."""
    return inputs["completion_mask"] * inputs.get("tool_mask", 1)


__all__ = ["TEACHER_KEY", "TeacherPass", "loss_mask"]

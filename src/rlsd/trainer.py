"""`RLSDTrainer`: TRL's `GRPOTrainer` with a teacher pass; the method is a plug-in (`rlsd.algorithms`).

The step, end to end, the same for every method:
1. TRL samples G completions per prompt and scores them (`super()._generate_and_score_completions`).
2. If the algorithm uses a teacher, `algorithm.score(teacher_pass, rows, batch)` runs the teacher pass (its
   prompts, the rows it scores, a contrast's second pass) and fills the batch.
3. In the loss, `algorithm.loss(teacher_pass, model, batch, policy_loss)`: TRL's clipped surrogate with the
   algorithm's (B, T) token advantages (s_old filled in on-policy without an extra forward), or a loss of its own.
The trainer never names a method: what differs lives in the algorithm class (`RLSDConfig.algorithm`, a
registered name or 'file.py:Class'), what it may ask of the teacher in `rlsd.teacher.scoring.TeacherPass`.
"""

from __future__ import annotations

import os
import resource
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel
from trl import GRPOTrainer

from . import checkpoints, pretrained, trackers
from .agents import glue as agents
from .algorithms import Algorithm, get_algorithm
from .config import RLSDConfig
from .rewards import pop_reward_errors
from .rewards.sandbox import sandbox_layers
from .teacher import images as multimodal, prompts as teacher
from .teacher.scoring import TeacherPass
from .teacher.weights import TEACHER_STATE_FILE, TeacherUpdateCallback, TeacherWeights


class RLSDTrainer(GRPOTrainer):
    """Drop-in for `trl.GRPOTrainer`: same arguments, plus `RLSDConfig` and an optional `teacher_model` (OPD)."""

    _tag_names = ["trl", "grpo", "rlsd"]
    _name = "RLSD"

    def __init__(self, model, reward_funcs=None, args: RLSDConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, teacher_model: str | PreTrainedModel | None = None,
                 **kwargs):
        if args is None:
            args = RLSDConfig(output_dir="rlsd-output")
        if not isinstance(args, RLSDConfig):
            raise TypeError(f"RLSDTrainer needs an RLSDConfig, got {type(args).__name__}")
        agents.check_environment(kwargs.get("environment_factory"), args)
        algorithm_class = get_algorithm(args.algorithm)
        if kwargs.get("tools") or kwargs.get("environment_factory") is not None:
            _refuse(algorithm_class.unsupported(args, tools=True))
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if not agents.privileged_from_environment(kwargs.get("environment_factory")):  # else checked per batch
                _check_privileged_columns(args, dataset, name)
            if multimodal.has_image_column(dataset):
                _refuse(algorithm_class.unsupported(args, images=True), f" yet ({name} has an image column)")
        base = pretrained.adapter_base(model) if isinstance(model, str) else None
        if base is not None and processing_class is None:  # a LoRA run directory: its own tokenizer/processor
            processing_class = pretrained.load_processor(model, base, vlm=pretrained.is_vlm(model))
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            tokenizer.padding_side = tokenizer.truncation_side = "left"  # as TRL loads it
        with pretrained.trl_loads_adapter_runs():  # the policy (and reference) from a LoRA run: its merged weights
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        trackers.use_plain_metric_names(self)  # trackio/W&B get the metric names of metrics.jsonl
        _refuse(algorithm_class.unsupported(args, processes=self.accelerator.num_processes))

        self.algorithm: Algorithm = algorithm_class(args)
        self.teacher_pass = TeacherPass(self)
        self._pending_token_advantages: tuple[dict[str, Any], Any] | None = None
        self._last_rewards: torch.Tensor | None = None  # (N,) summed rewards of the last generation batch
        self.teacher = None
        if self.algorithm.uses_teacher:
            external = None
            if self.algorithm.external_teacher:
                external = self._load_external_teacher(teacher_model or args.teacher_model)
            self.teacher = TeacherWeights(self, args.teacher_mode, external=external)
            if self.teacher.mode in ("ema", "snapshot"):
                self.add_callback(TeacherUpdateCallback(self.teacher))

    def _prepare_inputs(self, generation_batch):
        # One image-processor run per step on the same images: generation, scoring and the teacher pass share it.
        with multimodal.images_processed_once(self.processing_class):
            return super()._prepare_inputs(generation_batch)

    # ---- teacher pass (after generation, no grad) ---------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if getattr(self, "credit_recorder", None) is not None:
            self.credit_recorder.attach_rows(inputs, output)
        agents.annotate_rollouts(self, output)
        if not self.algorithm.uses_teacher:
            return output
        with self.teacher_pass.timed("teacher"):
            self.algorithm.score(self.teacher_pass, self.teacher_pass.rows(inputs), output)
            self._log_leakage(inputs, output)
        return output

    def _teacher_prompt_tensors(self, inputs, output) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) left-padded teacher prompt ids and mask of the algorithm for these rows (for inspection)."""
        return self.algorithm.teacher_prompts(self.teacher_pass, self.teacher_pass.rows(inputs), output)

    def _generate(self, prompts):
        self._student_prompts = agents.student_prompts(self, prompts)  # as rolled out, for the teacher prompt
        return super()._generate(prompts)

    # ---- loss ---------------------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        return self.algorithm.loss(self.teacher_pass, model, inputs, self._policy_loss)

    def _policy_loss(self, model, inputs, token_advantages=None) -> torch.Tensor:
        """TRL's clipped surrogate; with `token_advantages(inputs, old_logps) -> (B, T) | None`, those advantages.

        On an on-policy step s_old is this very forward's log-probs, detached: TRL computes them inside
        `super()._compute_loss` before it reads "advantages", so they are filled in there (no extra forward).
        """
        if token_advantages is None:
            return super()._compute_loss(model, inputs)
        inputs = dict(inputs)
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is not None:
            advantages = token_advantages(inputs, old_logps)
            if advantages is not None:
                inputs["advantages"] = advantages
        else:
            self._pending_token_advantages = (inputs, token_advantages)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._pending_token_advantages = None

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        pending, self._pending_token_advantages = self._pending_token_advantages, None
        if pending is not None:
            inputs, token_advantages = pending
            advantages = token_advantages(inputs, logps.detach())
            if advantages is not None:
                inputs["advantages"] = advantages
        return logps, entropies, aux_loss

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        self._last_rewards = rewards  # gathered over processes; SDPO picks successful peers from it
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["accuracy"].append((rewards > self.args.accuracy_threshold).float().mean().item())
        # Rewards built by rlsd.rewards score a failing sample 0 instead of raising; count those failures.
        errors = torch.tensor(float(pop_reward_errors()), device=self.accelerator.device)
        self._metrics[mode]["rewards/errors"].append(self.accelerator.reduce(errors, "sum").item())
        for name, active in sandbox_layers(probe=False).items():  # empty unless a code reward ran here
            self._metrics[mode][name].append(active)
        return rewards_per_func

    def _log_leakage(self, inputs, output) -> None:
        texts = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
        answers = [row.get("answer") for row in inputs]
        flags = teacher.leakage_flags(texts, answers, self.args.leakage_patterns,
                                      self.args.leakage_min_derivation_chars)
        self.teacher_pass.log_mean("leakage/rate", torch.tensor(sum(flags) / max(len(flags), 1)))

    def training_step(self, model, inputs, num_items_in_batch):
        step_times = self._metrics["train"]["step_time"]
        logged_before = len(step_times)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if len(step_times) > logged_before:  # an optimizer step just ended
            seconds, step = self.teacher_pass.seconds, max(step_times[-1], 1e-9)
            if self.teacher is not None:
                self._metrics["train"]["teacher/time_frac"].append(seconds.pop("teacher", 0.0) / step)
            for name, value in seconds.items():  # named parts, e.g. the contrast's second pass
                self._metrics["train"][f"teacher/{name}_time_frac"].append(value / step)
            seconds.clear()
            self._metrics["train"]["memory/peak_mb"].append(_peak_memory_mb(self.accelerator.device))
        return loss

    # ---- checkpoints: crash-safe (see checkpoints.py); EMA/snapshot teachers are state too ------------------
    def _save_checkpoint(self, model, trial):
        with checkpoints.staged_checkpoint(self, trial, log=self._log_main) as folder:
            super()._save_checkpoint(model, trial)
            state = self.teacher.state_dict() if self.teacher is not None else None
            if state is not None and self.args.should_save:
                torch.save(state, os.path.join(folder, TEACHER_STATE_FILE))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:  # the newest *complete* checkpoint, not merely the newest directory
            resume_from_checkpoint = checkpoints.find_resume_checkpoint(self.args.output_dir, log=self._log_main)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the final checkpoint (killed before the run ended): Trainer would train one step too many.
        if 0 < self.state.max_steps <= self.state.global_step:
            return None
        return super()._run_epoch(*args, **kwargs)

    def _log_main(self, message: str) -> None:
        if self.is_world_process_zero():
            print(message, flush=True)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if model is None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            multimodal.reload_renamed_weights(self.accelerator.unwrap_model(self.model), resume_from_checkpoint)
        path = os.path.join(resume_from_checkpoint, TEACHER_STATE_FILE)
        if self.teacher is not None and os.path.exists(path):
            self.teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ---- OPD ----------------------------------------------------------------------------------------------------
    def _load_external_teacher(self, teacher_model: str | PreTrainedModel) -> PreTrainedModel:
        student_vocab = self._tokenizer.get_vocab()
        if isinstance(teacher_model, str):
            try:
                teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_model)
            except (OSError, ValueError) as err:
                raise ValueError(f"RLSDConfig.teacher_model: cannot load a tokenizer from {teacher_model!r}: {err}") from None
            if teacher_tokenizer.get_vocab() != student_vocab:
                raise ValueError(
                    f"RLSDConfig.teacher_model: {teacher_model!r} uses another vocabulary than the student "
                    f"({len(teacher_tokenizer)} vs {len(self._tokenizer)} tokens); OPD needs the same tokenizer")
            student = self.accelerator.unwrap_model(self.model)
            teacher_model = pretrained.load_model(teacher_model, dtype=student.dtype)  # full or a LoRA run
        if teacher_model.config.get_text_config().vocab_size < len(student_vocab):
            raise ValueError(
                f"RLSDConfig.teacher_model: the teacher's vocabulary ({teacher_model.config.get_text_config().vocab_size}"
                f" tokens) is smaller than the student tokenizer's ({len(student_vocab)}); OPD needs the same tokenizer")
        return teacher_model.to(self.accelerator.device)


def _refuse(reason: str | None, where: str = "") -> None:
    if reason is not None:
        raise ValueError(reason + where)


def _check_privileged_columns(args: RLSDConfig, dataset, name: str) -> None:
    needed = args.privileged_columns
    if dataset is None or not needed:
        return
    datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
    for ds in datasets:
        columns = getattr(ds, "column_names", None)
        if columns is None:  # streaming datasets without known features: checked per batch instead
            continue
        missing = [f for f in needed if f not in columns]
        if missing:
            raise ValueError(
                f"RLSDConfig.privileged_fields: {name} has no column(s) {missing} (columns: {columns}); "
                f"algorithm={args.algorithm!r} shows them to the teacher. Add the reference column or map it.")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


__all__ = ["RLSDTrainer"]

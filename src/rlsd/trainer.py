"""`RLSDTrainer`: TRL's `GRPOTrainer` with a privileged teacher pass.

The RLSD step, end to end:
1. TRL samples G completions per prompt and scores them (`super()._generate_and_score_completions`).
2. One no-grad forward of the teacher over `[teacher_prompt(x, r) ; completion]` gives q_t
   (`_teacher_logps`).
3. In the loss, `credit.rlsd_token_advantages` turns the sequence advantage A and
   delta_t = q_t - s_old_t into (B, T) token advantages, and TRL's clipped surrogate
   takes them as they are (`_compute_loss`).
`grpo` skips 2-3; `opsd`/`opd` swap step 3 for a distillation loss. `sdpo` and `grpo+opsd` build their
teacher context and blend their losses in `rlsd.algorithms`; `teacher_contrast` adds a second teacher pass
under a wrong reference (`rlsd.algorithms.contrast`).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from . import agents, credit, credit_records, multimodal, pretrained, teacher, teacher_pass, trackers
from .algorithms import BLENDED_ALGORITHMS, blend, contrast, sdpo
from .config import RLSDConfig
from .rewards import pop_reward_errors
from .rewards.sandbox import sandbox_layers
from . import checkpoints
from .teacher_weights import TEACHER_STATE_FILE, TeacherUpdateCallback, TeacherWeights


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
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if not agents.privileged_from_environment(kwargs.get("environment_factory")):  # else checked per batch
                _check_privileged_columns(args, dataset, name)
            multimodal.check_supported(args, dataset, name)
        base = pretrained.adapter_base(model) if isinstance(model, str) else None
        if base is not None and processing_class is None:  # a LoRA run directory: its own tokenizer/processor
            processing_class = pretrained.load_processor(model, base, vlm=pretrained.is_vlm(model))
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            tokenizer.padding_side = tokenizer.truncation_side = "left"  # as TRL loads it
        with pretrained.trl_loads_adapter_runs():  # the policy (and reference) from a LoRA run: its merged weights
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        trackers.use_plain_metric_names(self)  # trackio/W&B get the metric names of metrics.jsonl

        self._pending_token_advantages: dict[str, Any] | None = None
        self._teacher_seconds = 0.0
        self._contrast_seconds = 0.0  # the wrong-reference teacher pass, part of _teacher_seconds
        self._last_rewards: torch.Tensor | None = None  # (N,) summed rewards of the last generation batch
        self.teacher = None
        if args.algorithm != "grpo":
            external = None
            if args.algorithm == "opd":
                external = self._load_external_teacher(teacher_model or args.teacher_model)
            self.teacher = TeacherWeights(self, args.teacher_mode, external=external)
            if self.teacher.mode in ("ema", "snapshot"):
                self.add_callback(TeacherUpdateCallback(self.teacher))

    # ---- teacher pass (after generation, no grad) ---------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if getattr(self, "credit_recorder", None) is not None:
            self.credit_recorder.attach_rows(inputs, output)
        agents.annotate_rollouts(self, output)
        if self.args.algorithm == "grpo":
            return output
        start = time.perf_counter()
        output["sequence_advantages"] = output["advantages"]
        teacher_ids, teacher_mask = self._teacher_prompt_tensors(inputs, output)
        if self._distills_full_vocab:
            # Full-vocabulary logits are too large to keep per batch: the loss recomputes them per micro-batch.
            output["teacher_prompt_ids"], output["teacher_prompt_mask"] = teacher_ids, teacher_mask
        else:
            output["teacher_per_token_logps"] = self._teacher_logps(teacher_ids, teacher_mask, output)
        if self.args.teacher_contrast != "none":
            contrast.add_wrong_reference(self, agents.teacher_rows(self, inputs), output, teacher_ids, teacher_mask)
        self._log_leakage(inputs, output)
        self._teacher_seconds += time.perf_counter() - start
        return output

    def _teacher_prompt_tensors(self, inputs, output) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded teacher prompt ids: the student's prompt with the privileged text added."""
        args = self.args
        inputs = agents.teacher_rows(self, inputs)  # agent runs: the rolled-out prompt, environment's privileged text
        if args.algorithm == "sdpo":  # a successful peer rollout, not the reference
            return sdpo.teacher_prompt_tensors(self, inputs, output)
        if not args.uses_privileged_teacher:  # OPD teacher sees the plain prompt
            return output["prompt_ids"], output["prompt_mask"]
        student_prompts = [self.processing_class.decode(ids[mask.bool()]) for ids, mask in
                           zip(output["prompt_ids"], output["prompt_mask"], strict=True)]
        teacher.assert_student_blind(student_prompts, inputs, args.teacher_template)
        prompts = [teacher.teacher_prompt(row["prompt"], row, args.teacher_template) for row in inputs]
        images = multimodal.row_images(inputs)
        prompt_ids, token_fields = self._encode_teacher_prompts(prompts, images)
        if args.teacher_max_prompt_length is not None:
            for i, row in enumerate(inputs):
                row_fields: dict[str, torch.Tensor] = {}
                prompt_ids[i] = self._fit_teacher_prompt(prompt_ids[i], row, images=[images[i]] if images else None,
                                                         token_fields_out=row_fields)
                for key, value in row_fields.items():
                    token_fields[key][i] = value
        device = self.accelerator.device
        ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=self._tokenizer.pad_token_id,
                  padding_side="left", pad_to_multiple_of=self.pad_to_multiple_of).to(device)
        mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0,
                   padding_side="left", pad_to_multiple_of=self.pad_to_multiple_of).to(device)
        # Per-token multimodal fields (M-RoPE's mm_token_type_ids, ...) of the teacher's own prompt, (B, P' + C).
        for key, value in multimodal.pad_token_fields(token_fields, ids.size(1), output["completion_ids"].size(1),
                                                      device).items():
            output[multimodal.TEACHER_PREFIX + key] = value
        return ids, mask

    def _encode_teacher_prompts(self, prompts, images) -> tuple[list[list[int]], dict[str, list[torch.Tensor]]]:
        """Token ids (and, with images, per-token multimodal fields) of teacher prompts, unpadded."""
        if images is None:
            return self._tokenize_prompts(prompts)[0], {}
        return multimodal.teacher_prompt_inputs(self.processing_class, prompts, images, self.chat_template_kwargs,
                                                self.tools or None)

    def _fit_teacher_prompt(self, ids: list[int], row: dict[str, Any], fields=None, template=None, images=None,
                            token_fields_out: dict[str, torch.Tensor] | None = None) -> list[int]:
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
            encoded, row_fields = self._encode_teacher_prompts([teacher.teacher_prompt(row["prompt"], row, template)],
                                                               images)
            ids = encoded[0]
            if token_fields_out is not None:
                token_fields_out.update({key: value[0] for key, value in row_fields.items()})
        return ids  # the prompt and template alone exceed the limit: keep them whole rather than cut the prompt

    @torch.no_grad()
    def _teacher_logps(self, teacher_prompt_ids, teacher_prompt_mask, output) -> torch.Tensor:
        """q_t: log-probs of the student's completion tokens under the teacher context, (B, T).

        For RLSD, rows whose sequence advantage is 0 are skipped (left at 0): their token advantage is
        A * weight = 0 whatever the teacher says. With a 0/1 reward, all-right and all-wrong groups are common.
        Sharded engines (ZeRO-3, FSDP) need the same forward calls on every rank, so they score every row.
        With `teacher_share_prefix`, each distinct teacher prompt is read once and its KV cache reused by its rows
        (`teacher_pass.shared_prefix_logps`); where `teacher_pass.share_prefix_blocker` names a reason (sharded
        engines, multimodal rows, models without a full-attention DynamicCache) the plain pass below runs instead.
        """
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        rows = torch.arange(completion_ids.size(0), device=completion_ids.device)
        if self.args.algorithm == "rlsd" and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            rows = output["advantages"].nonzero(as_tuple=True)[0]
        elif "teacher_rows" in output and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            rows = output["teacher_rows"].nonzero(as_tuple=True)[0]  # SDPO: rows with a demonstration
        logps = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["teacher/rows_scored_frac"].append(rows.numel() / max(completion_ids.size(0), 1))
        if rows.numel() == 0:
            return logps
        input_ids = torch.cat([teacher_prompt_ids[rows], completion_ids[rows]], dim=1)
        attention_mask = torch.cat([teacher_prompt_mask[rows], completion_mask[rows]], dim=1)
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        # The same images as the student's, with the teacher prompt's own per-token fields, for these rows only.
        fields = multimodal.select_rows(multimodal.teacher_forward_fields(output), rows)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), \
                self.teacher.activate() as teacher_module:
            if self._shares_teacher_prefix(teacher_module, output):
                scored = teacher_pass.shared_prefix_logps(
                    teacher_module, teacher_prompt_ids[rows], teacher_prompt_mask[rows], completion_ids[rows],
                    completion_mask[rows], batch_size=batch_size, autocast=self.accelerator.autocast)
            else:
                scored, _, _ = self._get_per_token_logps_and_entropies(
                    teacher_module, input_ids, attention_mask, completion_ids.size(1), batch_size=batch_size,
                    **fields)
        logps[rows] = scored.float()
        return logps

    def _shares_teacher_prefix(self, teacher_module, output) -> bool:
        if not self.args.teacher_share_prefix:
            return False
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        return teacher_pass.share_prefix_blocker(teacher_module, output, sharded=sharded) is None

    def _generate(self, prompts):
        self._student_prompts = agents.student_prompts(self, prompts)  # as rolled out, for the teacher prompt
        return super()._generate(prompts)

    # ---- loss ---------------------------------------------------------------------------------------------------
    @property
    def _distills_full_vocab(self) -> bool:
        return (self.args.algorithm in ("opsd", "opd", *BLENDED_ALGORITHMS)
                and self.args.distill_divergence != "sampled_token")

    def _compute_loss(self, model, inputs):
        if self.args.algorithm == "grpo":
            return super()._compute_loss(model, inputs)
        if self._distills_full_vocab and self.args.algorithm in BLENDED_ALGORITHMS:
            return blend.loss(self, model, inputs, super()._compute_loss)
        if self._distills_full_vocab:
            return self._distillation_loss(model, inputs)
        inputs = dict(inputs)
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is not None:
            inputs["advantages"] = self._token_advantages(inputs, old_logps)
        else:
            # On-policy step: s_old is this very forward's log-probs, detached. TRL computes them inside
            # super()._compute_loss before it reads "advantages", so they are filled in there (no extra forward).
            self._pending_token_advantages = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._pending_token_advantages = None

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        pending, self._pending_token_advantages = self._pending_token_advantages, None
        if pending is not None:
            pending["advantages"] = self._token_advantages(pending, logps.detach())
        return logps, entropies, aux_loss

    def _token_advantages(self, inputs: dict[str, Any], old_logps: torch.Tensor) -> torch.Tensor:
        """(B, T) advantages for TRL's surrogate: RLSD weights, or the sampled-token distillation signal."""
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        teacher_logps = inputs["teacher_per_token_logps"]
        if self.args.algorithm in BLENDED_ALGORITHMS:
            return blend.token_advantages(self, inputs, old_logps)
        old_logps = contrast.baseline_logps(inputs, old_logps)  # q_wrong with teacher_contrast, else s_old
        if self.args.algorithm in ("opsd", "opd"):
            token_adv = credit.sampled_token_advantages(teacher_logps, old_logps, mask)
            self._log_mean("distill/sampled_advantage", credit.masked_mean(token_adv, mask))
            agents.log_kind_split(self, inputs, token_adv, mask, "distill/sampled_advantage")
            self._record_credit(inputs, {"teacher_minus_student": token_adv}, color="teacher_minus_student")
            return token_adv
        lam = self.current_lambda
        token_adv, stats = credit.rlsd_token_advantages(
            inputs["sequence_advantages"], teacher_logps, old_logps, mask, lam=lam, eps_w=self.args.rlsd_eps_w)
        self._log_rlsd_stats(stats, lam)
        self._record_credit(inputs, lambda: credit_records.rlsd_signals(
            inputs["sequence_advantages"], teacher_logps, old_logps, token_adv, mask, self.args.rlsd_eps_w),
            color="weight", center=1.0, params={"lambda": lam, "eps_w": self.args.rlsd_eps_w})
        agents.log_weight_split(self, inputs, token_adv, mask)
        return token_adv

    @property
    def current_lambda(self) -> float:
        args = self.args
        if args.rlsd_lambda_schedule == "constant":
            return args.rlsd_lambda
        decay_steps = args.rlsd_lambda_decay_steps or self.state.max_steps or 1
        return credit.linear_decay_lambda(args.rlsd_lambda, self.state.global_step, decay_steps)

    def _distillation_loss(self, model, inputs) -> torch.Tensor:
        """OPSD/OPD (and the distillation term of SDPO, GRPO+OPSD): mean over completion tokens of D(teacher || student)."""
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        if "teacher_rows" in inputs:  # SDPO: only rows with a demonstration distil
            mask = mask * inputs["teacher_rows"].unsqueeze(1).to(mask.dtype)
        student_logits = self._completion_logits(model, inputs["prompt_ids"], inputs["prompt_mask"], inputs,
                                                 multimodal.model_kwargs(inputs))
        with torch.no_grad(), self.teacher.activate() as teacher_module:
            if self._shares_teacher_prefix(teacher_module, inputs):
                teacher_logits = teacher_pass.shared_prefix_logits(
                    teacher_module, inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"],
                    inputs["completion_ids"], inputs["completion_mask"], autocast=self.accelerator.autocast,
                ) / self.temperature
            else:
                teacher_logits = self._completion_logits(
                    teacher_module, inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"], inputs,
                    multimodal.model_kwargs(multimodal.teacher_forward_fields(inputs)))
            if "teacher_wrong_prompt_ids" in inputs:
                teacher_logits = contrast.target_logits(self, teacher_module, student_logits, teacher_logits, inputs)
        vocab = min(student_logits.size(-1), teacher_logits.size(-1), len(self._tokenizer))
        per_token = credit.distillation_divergence(
            student_logits[..., :vocab], teacher_logits[..., :vocab], kind=self.args.distill_divergence,
            jsd_beta=self.args.distill_jsd_beta, token_clip=self.args.opsd_token_clip, top_k=self.args.distill_top_k)
        loss = credit.masked_mean(per_token, mask)
        self._log_mean("distill/divergence", loss.detach())
        agents.log_kind_split(self, inputs, per_token, mask, "distill/divergence")
        self._record_credit(inputs, {"divergence": per_token}, color="divergence")
        mode = "train" if self.model.training else "eval"
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)

    def _completion_logits(self, module, prompt_ids, prompt_mask, inputs, multimodal_kwargs=None) -> torch.Tensor:
        """(B, T, V) logits of the completion tokens; `multimodal_kwargs`: pixel_values, ... for a VLM."""
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, inputs["completion_mask"]], dim=1)
        with self.accelerator.autocast():
            logits = module(input_ids=input_ids, attention_mask=attention_mask,
                            logits_to_keep=completion_ids.size(1) + 1, **(multimodal_kwargs or {})).logits
        return logits[:, :-1, :] / self.temperature

    # ---- metrics ------------------------------------------------------------------------------------------------
    def _log_rlsd_stats(self, stats: dict[str, torch.Tensor], lam: float) -> None:
        """Token-weighted means over all processes, so the numbers do not depend on how the batch was split."""
        acting, valid = stats["num_acting_tokens"], stats["num_tokens"]
        delta_sq = stats["delta_std"] ** 2 + stats["delta_mean"] ** 2  # E[delta^2] over acting tokens
        local = torch.stack([
            stats["delta_mean"] * acting, delta_sq * acting, stats["weight_mean"] * acting,
            stats["clip_low_frac"] * acting, stats["clip_high_frac"] * acting, acting,
            stats["adv_abs_before"] * valid, stats["adv_abs_after"] * valid, valid, stats["sign_flips"],
        ]).to(self.accelerator.device)
        (delta, delta_sq, weight, clip_low, clip_high, acting, before, after, valid, flips) = \
            self.accelerator.reduce(local, "sum").tolist()
        acting, valid = max(acting, 1.0), max(valid, 1.0)
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        metrics["rlsd/lambda"].append(lam)
        metrics["rlsd/sign_flips"].append(flips)
        metrics["rlsd/delta_mean"].append(delta / acting)
        metrics["rlsd/delta_std"].append(max(delta_sq / acting - (delta / acting) ** 2, 0.0) ** 0.5)
        metrics["rlsd/weight_mean"].append(weight / acting)
        metrics["rlsd/clip_low_frac"].append(clip_low / acting)
        metrics["rlsd/clip_high_frac"].append(clip_high / acting)
        metrics["rlsd/adv_abs_before"].append(before / valid)
        metrics["rlsd/adv_abs_after"].append(after / valid)

    def _record_credit(self, inputs, signals, **how) -> None:
        """Per-token credit for `rlsd inspect` (see credit_records): `signals` maps names to (B, T) tensors,
        or is a function returning that map (only called when this micro-batch holds recorded rows)."""
        recorder = getattr(self, "credit_recorder", None)
        if recorder is not None and inputs.get(credit_records.ROW_KEY) is not None:
            recorder.capture(inputs, signals() if callable(signals) else signals, **how)

    def _log_mean(self, name: str, value: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][name].append(self.accelerator.gather(value.detach().float().reshape(1)).mean().item())

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
        self._log_mean("leakage/rate", torch.tensor(sum(flags) / max(len(flags), 1), device=self.accelerator.device))

    def training_step(self, model, inputs, num_items_in_batch):
        step_times = self._metrics["train"]["step_time"]
        logged_before = len(step_times)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if len(step_times) > logged_before:  # an optimizer step just ended
            if self.teacher is not None:
                self._metrics["train"]["teacher/time_frac"].append(self._teacher_seconds / max(step_times[-1], 1e-9))
            if self.args.teacher_contrast != "none":
                self._metrics["train"]["teacher/contrast_time_frac"].append(
                    self._contrast_seconds / max(step_times[-1], 1e-9))
            self._teacher_seconds = self._contrast_seconds = 0.0
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


def _check_privileged_columns(args: RLSDConfig, dataset, name: str) -> None:
    if dataset is None or not args.uses_privileged_teacher:
        return
    datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
    for ds in datasets:
        columns = getattr(ds, "column_names", None)
        if columns is None:  # streaming datasets without known features: checked per batch instead
            continue
        missing = [f for f in args.privileged_fields if f not in columns]
        if missing:
            raise ValueError(
                f"RLSDConfig.privileged_fields: {name} has no column(s) {missing} (columns: {columns}); "
                f"algorithm={args.algorithm!r} shows them to the teacher. Add the reference column or map it.")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


__all__ = ["RLSDTrainer"]

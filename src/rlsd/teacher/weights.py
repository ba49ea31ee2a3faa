"""Which weights the teacher pass runs with (SPEC.md `teacher_mode`).

- `live`: the training model itself, no copy.
- `base`: the initial weights. Under PEFT/LoRA the adapters are disabled, so
  there is no second copy; otherwise TRL's reference model is reused when
  `beta > 0`, else one frozen copy is made.
- `ema` / `snapshot`: a frozen copy updated after optimizer steps
  (`teacher <- (1 - rate) * teacher + rate * student`; a snapshot is rate 1
  every N steps). Under PEFT the copy is a second LoRA adapter, not the model.
- external (OPD): a separate model, loaded once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, TrainerCallback
from trl.models.utils import prepare_deepspeed, prepare_fsdp
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, get_config_model_id, use_adapter

TEACHER_ADAPTER = "rlsd_teacher"
TEACHER_STATE_FILE = "rlsd_teacher.pt"


@contextlib.contextmanager
def _gathered(params, modify: bool = False) -> Iterator[None]:
    """Full parameters inside the block under DeepSpeed ZeRO-3 (a no-op otherwise); rank 0's edits are kept."""
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
        yield


class TeacherWeights:
    """Owns the teacher's weights for one trainer and hands out the module to call."""

    def __init__(self, trainer, mode: str, external: PreTrainedModel | None = None):
        self.trainer = trainer
        self.mode = "external" if external is not None else mode
        self.copy: torch.nn.Module | None = None
        self.uses_adapter = False
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if external is not None:
            self.copy = self._prepare(self._with_fused_head(external))
        elif mode == "base" and not is_peft_model(unwrapped):
            self.copy = trainer.ref_model if trainer.ref_model is not None else self._frozen_copy(unwrapped)
        elif mode in ("ema", "snapshot"):
            if is_peft_model(unwrapped):
                self._add_teacher_adapter(unwrapped)
            else:
                self.copy = self._frozen_copy(unwrapped)

    # ---- building -----------------------------------------------------------------------------------------------
    def _with_fused_head(self, model: torch.nn.Module) -> torch.nn.Module:
        model.requires_grad_(False)
        model.eval()
        add_fused_lm_head(model, temperature=self.trainer.temperature, cast_lm_head_to_fp32=self.trainer.args.cast_lm_head_to_fp32)
        return model

    def _prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        trainer = self.trainer
        if trainer.is_deepspeed_enabled:
            return prepare_deepspeed(model, trainer.accelerator)
        if trainer.is_fsdp_enabled:
            return prepare_fsdp(model, trainer.accelerator)
        return trainer.accelerator.prepare_model(model, evaluation_mode=True)

    def _frozen_copy(self, model: PreTrainedModel) -> torch.nn.Module:
        trainer = self.trainer
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            # Sharded parameters cannot be copied in place: load the weights again, as TRL does for its ref model.
            copy = create_model_from_path(get_config_model_id(model.config), dtype=model.dtype)
        else:
            # A fresh module, not deepcopy: the trainer patched `forward` with a closure over the original model.
            copy = type(model)._from_config(model.config, dtype=model.dtype)  # its own class: LM or VLM
            copy.load_state_dict(model.state_dict())
            copy.to(model.device)
        return self._prepare(self._with_fused_head(copy))

    def _add_teacher_adapter(self, peft_model) -> None:
        active = peft_model.active_adapter
        peft_model.add_adapter(TEACHER_ADAPTER, peft_model.peft_config[active])
        self.uses_adapter = True
        self._adapter_pairs = []
        params = dict(peft_model.named_parameters())
        for name, param in params.items():
            if f".{active}." in name:
                teacher_name = name.replace(f".{active}.", f".{TEACHER_ADAPTER}.")
                self._adapter_pairs.append((params[teacher_name], param))
        with torch.no_grad():
            for teacher_param, student_param in self._adapter_pairs:
                teacher_param.requires_grad_(False)
                teacher_param.copy_(student_param)
        peft_model.set_adapter(active)  # adding an adapter must not change what trains

    # ---- use ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def activate(self) -> Iterator[torch.nn.Module]:
        """Yield the module whose forward is the teacher (no gradient is taken through it)."""
        trainer = self.trainer
        if self.copy is not None:
            yield self.copy
        elif self.mode == "base":  # PEFT: the base weights are the model with adapters off
            with use_adapter(trainer.accelerator.unwrap_model(trainer.model), adapter_name=None):
                yield trainer.model
        elif self.uses_adapter:
            peft_model = trainer.accelerator.unwrap_model(trainer.model)
            active = peft_model.active_adapter
            with use_adapter(peft_model, adapter_name=TEACHER_ADAPTER):
                yield trainer.model
            peft_model.set_adapter(active)
            for teacher_param, _ in self._adapter_pairs:
                teacher_param.requires_grad_(False)
        else:
            yield trainer.model

    @torch.no_grad()
    def update(self, global_step: int) -> None:
        """Move the EMA/snapshot teacher towards the student after an optimizer step."""
        args = self.trainer.args
        if self.mode == "ema":
            rate = args.teacher_ema_rate
        elif self.mode == "snapshot" and global_step % args.teacher_snapshot_steps == 0:
            rate = 1.0
        else:
            return
        if self.uses_adapter:
            with _gathered([p for pair in self._adapter_pairs for p in pair], modify=True):
                for teacher_param, student_param in self._adapter_pairs:
                    teacher_param.mul_(1.0 - rate).add_(student_param.detach(), alpha=rate)
        else:
            student = self.trainer.accelerator.unwrap_model(self.trainer.model)
            SyncRefModelCallback.sync_target_model(student, self.trainer.accelerator.unwrap_model(self.copy), rate)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.mode not in ("ema", "snapshot"):
            return None  # live/base/external teachers are recreated from the model or its source
        if self.uses_adapter:
            params = [t for t, _ in self._adapter_pairs]
            with _gathered(params):
                return {str(i): t.detach().cpu().clone() for i, t in enumerate(params)}
        copy = self.trainer.accelerator.unwrap_model(self.copy)
        with _gathered(copy.parameters()):
            return {name: p.detach().cpu().clone() for name, p in copy.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.uses_adapter:
            params = [t for t, _ in self._adapter_pairs]
            with _gathered(params, modify=True):
                for i, teacher_param in enumerate(params):
                    teacher_param.copy_(state[str(i)])
            return
        copy = self.trainer.accelerator.unwrap_model(self.copy)
        with _gathered(copy.parameters(), modify=True):
            for name, param in copy.named_parameters():
                param.copy_(state[name])


class TeacherUpdateCallback(TrainerCallback):
    """Calls `TeacherWeights.update` after every optimizer step."""

    def __init__(self, teacher: TeacherWeights):
        self.teacher = teacher

    def on_step_end(self, args, state, control, **kwargs):
        self.teacher.update(state.global_step)

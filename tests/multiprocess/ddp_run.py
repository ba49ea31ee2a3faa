"""Helper for tests/test_multiprocess.py: one RLSD run per teacher mode, records per rank.

Launched either as one plain process (`python ddp_run.py ...`) or under
`accelerate launch --multi_gpu --num_processes 2 ddp_run.py ...` (or with
`--config_file` a DeepSpeed config; `--lora` trains an adapter). FSDP cannot be
tried on CPU: accelerate falls back to MULTI_CPU DDP, which `distributed_type`
in the records shows. The trainer is built by `rlsd.app.run.build_trainer`,
exactly as `rlsd train` builds it, and then given a deterministic
`rollout_func`: completion ids are a pure function of the prompt text and of the
prompt's occurrence index in the *global* generation batch. That makes a
2-process run and a 1-process run with the same global batch see identical
completions, so their rewards, advantages and losses can be compared.

Each rank writes `OUT/<teacher_mode>/rank<R>.json` with the train logs, hashes
of the final student and teacher parameters, and how far the teacher is from
the EMA/snapshot recurrence recomputed here from the student's weights after
every optimizer step. Rank 0 also saves the teacher tensors (`teacher.pt`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent
COMPLETION_CHARS = "0123456789abcdefghij +="  # digits and letters: the digit-share reward varies within a group


def _full(param: torch.Tensor) -> torch.Tensor:
    """A plain CPU float32 copy, gathering FSDP2 DTensor shards (a collective: every rank must call it)."""
    if hasattr(param, "full_tensor"):
        param = param.full_tensor()
    return param.detach().float().cpu().clone()


def _gathered(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Full copies; under DeepSpeed ZeRO-3 the partitions are gathered first (collective)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return [_full(p) for p in params]
    return [_full(p) for p in params]


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return _gathered(list(module.parameters()))


def _sha256(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _completion(key: str, occurrence: int, pool: list[int], eos: int, max_len: int) -> list[int]:
    """Token ids from a seed that depends only on (prompt, occurrence): hashlib, not the per-process `hash`."""
    seed = int(hashlib.sha256(f"{key}#{occurrence}".encode()).hexdigest()[:16], 16)
    rng = random.Random(seed)
    length = rng.randint(3, max_len)
    ids = [rng.choice(pool) for _ in range(length)]
    if length < max_len and rng.random() < 0.5:
        ids.append(eos)  # some completions end with EOS, the rest are truncated: both padding paths are used
    return ids


def deterministic_rollout(prompts: list[Any], trainer) -> dict[str, Any]:
    """TRL `rollout_func`: one completion per (already repeated) prompt, independent of the process layout.

    TRL hands each rank its slice of the generation batch in rank order (RepeatSampler + accelerate's
    batch sharding), so a prompt's occurrence index in the global batch is the count of identical prompts on
    lower ranks plus its index on this rank. `logprobs=None` is allowed: TRL then skips importance sampling.
    """
    keys = [json.dumps(p, sort_keys=True) for p in prompts]
    per_rank = gather_object([keys])  # one list per rank, in rank order (a single list on one process)
    seen: Counter[str] = Counter()
    for earlier in per_rank[: trainer.accelerator.process_index]:
        seen.update(earlier)
    tokenizer = trainer.processing_class
    pool = [tokenizer.convert_tokens_to_ids(ch) for ch in COMPLETION_CHARS]
    completion_ids = []
    for key in keys:
        completion_ids.append(_completion(key, seen[key], pool, tokenizer.eos_token_id,
                                          trainer.args.max_completion_length))
        seen[key] += 1
    prompt_ids = trainer._tokenize_prompts(prompts)[0]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def _student_params(trainer) -> list[torch.Tensor]:
    """The student tensors the teacher mirrors: every parameter, or under LoRA the trained adapter's."""
    teacher = trainer.teacher
    if teacher is not None and teacher.uses_adapter:
        return _gathered([student for _, student in teacher._adapter_pairs])
    return _params(trainer.accelerator.unwrap_model(trainer.model))


def _teacher_params(trainer) -> list[torch.Tensor] | None:
    teacher = trainer.teacher
    if teacher is None:
        return None
    if teacher.uses_adapter:
        return _gathered([t for t, _ in teacher._adapter_pairs])
    if teacher.copy is not None:
        return _params(trainer.accelerator.unwrap_model(teacher.copy))
    return None


class TeacherExpectation(TrainerCallback):
    """Recomputes the EMA/snapshot teacher from the student's weights after every optimizer step."""

    def __init__(self, mode: str, rate: float, snapshot_steps: int):
        self.mode, self.rate, self.snapshot_steps = mode, rate, snapshot_steps
        self.trainer = None
        self.expected: list[torch.Tensor] | None = None

    def _student(self) -> list[torch.Tensor]:
        return _student_params(self.trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        self.expected = self._student()  # the teacher copy starts as the initial weights

    def on_step_end(self, args, state, control, **kwargs):
        student = self._student()
        if self.mode == "ema":
            for target, source in zip(self.expected, student, strict=True):
                target.mul_(1.0 - self.rate).add_(source, alpha=self.rate)  # TRL's SyncRefModelCallback, same ops
        elif self.mode == "snapshot" and state.global_step % self.snapshot_steps == 0:
            self.expected = student


def run_config(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return {
        "model": args.model,
        "task": "arithmetic",
        "rewards": [f"{HERE / 'rewards.py'}:digit_share"],
        "task_train_size": 64,
        "task_eval_size": 4,
        **({"lora": {"r": 4, "lora_alpha": 8}} if args.lora else {}),
        "training": {
            "algorithm": "rlsd",
            "teacher_mode": mode,
            "teacher_ema_rate": args.ema_rate,
            "teacher_snapshot_steps": args.snapshot_steps,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_batch,
            "num_generations": args.num_generations,
            "max_completion_length": args.max_completion_length,
            "learning_rate": args.learning_rate,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
            "seed": 0,
            "disable_tqdm": True,
            "use_cpu": not args.no_use_cpu,
            **({"ddp_backend": args.ddp_backend} if args.ddp_backend else {}),
        },
    }


def train_one(args: argparse.Namespace, mode: str) -> None:
    from rlsd.app.run import build_trainer

    out = Path(args.out) / mode
    record_dir = out / "records"
    record_dir.mkdir(parents=True, exist_ok=True)
    os.environ["RLSD_MP_RECORD_DIR"] = str(record_dir)
    expectation = TeacherExpectation(mode, args.ema_rate, args.snapshot_steps)
    start = time.perf_counter()
    prepared = build_trainer(run_config(args, mode), output_dir=out / "run", extra_callbacks=[expectation])
    trainer = prepared.trainer
    expectation.trainer = trainer
    if not args.sample:
        trainer.rollout_func = deterministic_rollout
    trainer.train()
    seconds = time.perf_counter() - start

    student = _student_params(trainer)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    record: dict[str, Any] = {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "teacher_mode": mode,
        "seconds": seconds,
        "log_history": trainer.state.log_history,
        "student_sha256": _sha256(student),
        "zero3_partitioned": any(hasattr(p, "ds_id") for p in unwrapped.parameters()),
        "fsdp_dtensor": any(hasattr(p, "full_tensor") for p in unwrapped.parameters()),
        "teacher_uses_adapter": bool(trainer.teacher is not None and trainer.teacher.uses_adapter),
    }
    teacher = _teacher_params(trainer)
    if teacher is not None:
        # What a checkpoint would store (rlsd_teacher.pt): must hold every element, not a ZeRO-3 partition.
        state = trainer.teacher.state_dict() or {}
        record["teacher_state_tensors"] = len(state)
        record["teacher_state_empty"] = sum(v.numel() == 0 for v in state.values())
        if trainer.teacher.copy is not None:
            record["teacher_zero3_partitioned"] = any(hasattr(p, "ds_id") for p in trainer.teacher.copy.parameters())
        record["teacher_sha256"] = _sha256(teacher)
        record["teacher_vs_expected_max_abs"] = max(
            (t - e).abs().max().item() for t, e in zip(teacher, expectation.expected, strict=True))
        record["teacher_vs_student_max_abs"] = max(
            (t - s).abs().max().item() for t, s in zip(teacher, student, strict=True))
        if trainer.accelerator.is_main_process:
            torch.save(teacher, out / "teacher.pt")
    if trainer.accelerator.is_main_process:
        torch.save(student, out / "student.pt")
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record, indent=1, default=str))
    trainer.accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--teacher-modes", default="ema", help="comma-separated; each mode is one run")
    parser.add_argument("--per-device-batch", type=int, default=6)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--ema-rate", type=float, default=0.5)
    parser.add_argument("--snapshot-steps", type=int, default=3)
    parser.add_argument("--no-use-cpu", action="store_true",
                        help="leave use_cpu unset (DeepSpeed on CPU: use_cpu=true would force plain MULTI_CPU DDP)")
    parser.add_argument("--ddp-backend", default=None, help="e.g. gloo: DeepSpeed on a machine without GPU")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (EMA/snapshot teacher = 2nd adapter)")
    parser.add_argument("--sample", action="store_true", help="sample with model.generate instead of fixed rollouts")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for mode in args.teacher_modes.split(","):
        train_one(args, mode.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

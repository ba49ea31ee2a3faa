"""Per-token credit records: what the teacher did to each token, written to `credit.jsonl` in the run directory.

Every `every_n_steps` optimizer steps (and at step 1), `CreditRecorder` keeps a few groups of the step's
generation batch and writes one JSON line per group:

```
{"step": 3, "algorithm": "rlsd", "group": 0, "prompt": "<student prompt as the model saw it>",
 "reference": {"answer": "12", "solution": "..."}, "color": "weight", "center": 1.0,
 "params": {"lambda": 1.0, "eps_w": 0.2},
 "completions": [{"tokens": ["1", "2", ...], "reward": 1.0, "advantage": 0.87, "truncated": false,
                  "signals": {"delta": [...], "weight": [...], "token_advantage": [...]}}, ...]}
```

`signals` is a dict of named per-token arrays, one value per entry of `tokens`. An algorithm fills it through
one call, `TeacherPass.record_credit(inputs, {"name": (B, T) tensor, ...}, color=..., center=...)`,
from wherever it has the numbers (loss time: s_old is only known there for on-policy steps); `color` names
the signal the page colours tokens by and `center` its neutral value (1.0 for a weight, 0.0 for a signed
signal). Rows whose teacher pass was skipped (RLSD with A = 0) carry no signals.

How rows are followed through TRL: at generation time `attach_rows` stores each kept row's prompt, reference,
reward and advantage and puts a `credit_row` id tensor into the batch; TRL shuffles and splits the batch into
micro-batches with that tensor aligned, so the loss-time capture finds its rows by id.

Size is bounded: `max_groups` groups per recorded step, `max_tokens` tokens per completion, values rounded
to 4 significant digits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..runlog import read_records, rewind_on_resume
from . import maths as credit

CREDIT_FILE = "credit.jsonl"
ROW_KEY = "credit_row"  # (B,) long tensor added to the generation batch: the row's index in the recorder's table


def _round(value: float) -> float | None:
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


def _round_or_none(value) -> float | None:
    return None if value is None else _round(value)


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token id as the text it stands for (byte-level pieces of a split character decode to U+FFFD)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
    return tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def rlsd_signals(sequence_advantages: torch.Tensor, teacher_logps: torch.Tensor, old_logps: torch.Tensor,
                 token_advantages: torch.Tensor, mask: torch.Tensor, eps_w: float) -> dict[str, torch.Tensor]:
    """RLSD's per-token record: delta_t, w_t and the A_t the loss used. All (B, T); A (B,).

    The weight is recomputed with `credit.rlsd_token_advantages` at lambda = 1 (where A_t / A = w_t), so the
    record uses the one implementation of the math; `token_advantage` is the trainer's own tensor. Rows with
    A = 0 get delta NaN (recorded as null): the trainer skips their teacher pass, their weight is moot (1).
    """
    delta = (teacher_logps.detach() - old_logps.detach()).float() * mask
    full, _ = credit.rlsd_token_advantages(sequence_advantages, delta, torch.zeros_like(delta), mask,
                                           lam=1.0, eps_w=eps_w)
    adv = sequence_advantages.detach().float().unsqueeze(1)
    acting = adv != 0
    weight = torch.where(acting, full.float() / torch.where(acting, adv, torch.ones_like(adv)),
                         torch.ones_like(full, dtype=torch.float32))
    delta = torch.where(acting, delta, torch.full_like(delta, float("nan")))
    return {"delta": delta, "weight": weight, "token_advantage": token_advantages.detach().float()}


class CreditRecorder(TrainerCallback):
    """Collects per-token credit for a few groups every N steps and appends them to `credit.jsonl`.

    Attach with `CreditRecorder(trainer, run_dir, every_n_steps)`: it registers itself as a callback and as
    `trainer.credit_recorder`. Only the main process writes; its own rows are recorded.
    """

    def __init__(self, trainer, path: str | Path, every_n_steps: int, max_groups: int = 2, max_tokens: int = 256):
        if every_n_steps < 1:
            raise ValueError(f"samples_every must be >= 1 to record credit, got {every_n_steps}")
        path = Path(path)
        self.path = path / CREDIT_FILE if path.suffix == "" else path
        self.trainer, self.every, self.max_groups, self.max_tokens = trainer, every_n_steps, max_groups, max_tokens
        self._rows: dict[int, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}
        trainer.credit_recorder = self
        trainer.add_callback(self)

    # -- generation time --------------------------------------------------------------------------------------
    def wants_step(self, global_step: int) -> bool:
        """Record the step being computed now (global_step + 1 once it ends): step 1 and every N-th."""
        upcoming = global_step + 1
        return upcoming == 1 or upcoming % self.every == 0

    def attach_rows(self, inputs: list[dict[str, Any]], output: dict[str, Any]) -> None:
        """Keep the rows of up to `max_groups` groups (informative ones first) and tag the batch with row ids."""
        trainer = self.trainer
        if not trainer.model.training or not trainer.state.is_world_process_zero \
                or not self.wants_step(trainer.state.global_step):
            return
        size = len(inputs)
        group = max(int(trainer.num_generations), 1)
        advantages = output["advantages"].detach().float().cpu()
        rewards = self._local_rewards(size)
        groups = list(range(size // group))
        informative = [g for g in groups if advantages[g * group:(g + 1) * group].abs().sum() > 0]
        chosen = (informative + [g for g in groups if g not in informative])[: self.max_groups]
        prompt_ids, prompt_mask = output["prompt_ids"].cpu(), output["prompt_mask"].cpu()
        completion_ids, completion_mask = output["completion_ids"].cpu(), output["completion_mask"].cpu()
        tokenizer = trainer.processing_class
        fields = list(getattr(trainer.args, "privileged_fields", None) or ["answer"])
        self._rows = {}
        for g in sorted(chosen):
            for i in range(g * group, (g + 1) * group):
                ids = completion_ids[i][completion_mask[i].bool()].tolist()
                self._rows[i] = {
                    "group": g,
                    "prompt": getattr(tokenizer, "tokenizer", tokenizer).decode(
                        prompt_ids[i][prompt_mask[i].bool()].tolist(), skip_special_tokens=False),
                    "reference": {f: inputs[i].get(f) for f in fields if inputs[i].get(f) is not None},
                    "token_ids": ids[: self.max_tokens],
                    "truncated": len(ids) > self.max_tokens,
                    "reward": rewards[i] if rewards is not None else None,
                    "advantage": float(advantages[i]),
                    "signals": {},
                }
        self._meta = {"step": trainer.state.global_step + 1, "algorithm": trainer.algorithm.name or trainer.args.algorithm}
        device = output["completion_ids"].device
        output[ROW_KEY] = torch.arange(size, device=device) if self._rows else None

    def _local_rewards(self, size: int) -> list[float] | None:
        """This process's rows' weighted rewards, read back from TRL's completion logs (gathered over processes)."""
        trainer = self.trainer
        logs = getattr(trainer, "_logs", {}).get("rewards") or {}
        names = list(getattr(trainer, "reward_func_names", []))
        total = size * trainer.accelerator.num_processes
        start = trainer.accelerator.process_index * size
        try:
            per_func = torch.tensor([list(logs[n])[-total:][start:start + size] for n in names], dtype=torch.float32)
            weights = trainer.reward_weights.detach().float().cpu().unsqueeze(1)
        except (KeyError, ValueError, RuntimeError, AttributeError):
            return None
        if per_func.shape != (len(names), size):
            return None
        all_nan = torch.isnan(per_func).all(dim=0)
        rewards = (per_func * weights).nansum(dim=0)
        return [None if bad else float(r) for r, bad in zip(rewards.tolist(), all_nan.tolist())]

    # -- loss time --------------------------------------------------------------------------------------------
    def capture(self, inputs: dict[str, Any], signals: dict[str, torch.Tensor], color: str | None = None,
                center: float = 0.0, params: dict[str, float] | None = None) -> None:
        """Store (B, T) per-token `signals` of the kept rows in this micro-batch (first capture of a row wins)."""
        row_ids = inputs.get(ROW_KEY)
        if row_ids is None or not self._rows:
            return
        mask = inputs["completion_mask"].bool().cpu()
        arrays = {name: value.detach().float().cpu() for name, value in signals.items()}
        for b, row_id in enumerate(row_ids.tolist()):
            row = self._rows.get(row_id)
            if row is None or row["signals"]:
                continue
            valid = mask[b]
            row["signals"] = {name: [_round(v) for v in value[b][valid].tolist()[: self.max_tokens]]
                              for name, value in arrays.items()}
        if color is not None:
            self._meta.update(color=color, center=center)
        if params:
            self._meta["params"] = {k: _round(v) for k, v in params.items()}

    # -- write ------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        rewind_on_resume(self.path, state)  # a resumed run records its later steps again

    def on_step_end(self, args, state, control, **kwargs):
        if not self._rows or not state.is_world_process_zero:
            return
        rows, meta, self._rows = self._rows, dict(self._meta), {}
        meta["step"] = state.global_step
        tokenizer = self.trainer.processing_class
        groups: dict[int, dict[str, Any]] = {}
        for row_id in sorted(rows):
            row = rows[row_id]
            record = groups.setdefault(row["group"], {
                **meta, "group": row["group"], "prompt": row["prompt"], "reference": row["reference"],
                "completions": []})
            record["completions"].append({
                "tokens": token_pieces(tokenizer, row["token_ids"]), "reward": _round_or_none(row["reward"]),
                "advantage": _round(row["advantage"]), "truncated": row["truncated"], "signals": row["signals"]})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for record in groups.values():
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_credit_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every parsable record of `run_dir/credit.jsonl` (a path to the file works too); a torn last line is skipped."""
    return [r for r in read_records(run_dir, CREDIT_FILE) if isinstance(r.get("completions"), list)]


__all__ = ["CREDIT_FILE", "CreditRecorder", "load_credit_records", "rlsd_signals", "token_pieces"]

"""One configuration of the cost benchmark, measured in a fresh process (`python cost_worker.py CONFIG_JSON`).

`cost.py` schedules the configurations and aggregates what this prints. Here: the prompts and toy rewards,
the trainer for each configuration (`grpo`, `rlsd`, `opd2x`/`opd4x` with an external teacher, `trl` = TRL's
own `GRPOTrainer`; full fine-tune or LoRA student), the phase timer and the memory probes. Nothing in the
package is changed: phases are timed by wrapping methods on the trainer instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "COST_RESULT "
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")  # the `--lora` student


CONTEXT = "Background: the numbers below are whole numbers written in base ten, and the sum is exact. "


def make_rows(n: int = 64, context_chars: int = 0) -> list[dict]:
    """Arithmetic prompts with a reference answer and a worked solution (the privileged text).

    `context_chars` > 0 puts that many characters of background text before each question (long-prompt case).
    """
    rows = []
    context = (CONTEXT * (context_chars // len(CONTEXT) + 1))[:context_chars]
    for i in range(n):
        a, b = 17 + 7 * i % 83, 29 + 13 * i % 71
        rows.append({"prompt": [{"role": "user", "content": f"{context}Compute {a}+{b}. Think step by step."}],
                     "answer": str(a + b), "solution": f"{a}+{b}={a + b}"})
    return rows


def digit_reward(prompts, completions, **kwargs):
    """A dense toy reward (share of digits) so that groups have non-zero advantages."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def sparse_reward(prompts, completions, **kwargs):
    """A 0/1 reward that is right about 1 time in 8 (a stable hash of the text), like a verifier on a hard task.

    With 4 generations per prompt about 59% of groups are all-wrong: their advantage is 0 and RLSD skips
    their teacher forward, as it would on a real task.
    """
    import hashlib

    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(hashlib.sha256(t.encode()).digest()[0] % 8 == 0) for t in texts]


REWARDS = {"dense": digit_reward, "sparse": sparse_reward}


# ---- measurement --------------------------------------------------------------
def _rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (high-water mark) in MB; ru_maxrss where there is no /proc."""
    try:
        return int(re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PhaseTimer:
    """Accumulates wall and CPU time per named phase for the current optimizer step."""

    def __init__(self):
        self.current: dict[str, float] = {}  # wall seconds; "cpu:<phase>" holds process CPU seconds
        self.steps: list[dict[str, float]] = []
        self.active: list[str] = []  # phases now running, outermost first

    def _add(self, phase: str, wall_start: float, cpu_start: float) -> None:
        self.active.remove(phase)
        # The teacher forward also counts against the phase it ran in (teacher_forward@loss_total for opd).
        names = [phase] + ([f"{phase}@{outer}" for outer in self.active] if phase == "teacher_forward" else [])
        for name in names:
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - wall_start
            self.current[f"cpu:{name}"] = self.current.get(f"cpu:{name}", 0.0) + time.process_time() - cpu_start

    def wrap(self, obj: Any, method: str, phase: str) -> None:
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            self.active.append(phase)
            try:
                return original(*args, **kwargs)
            finally:
                self._add(phase, start, cpu)

        setattr(obj, method, timed)

    def wrap_context(self, obj: Any, method: str, phase: str) -> None:
        original = getattr(obj, method)

        @contextlib.contextmanager
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            self.active.append(phase)
            try:
                with original(*args, **kwargs) as value:
                    yield value
            finally:
                self._add(phase, start, cpu)

        setattr(obj, method, timed)

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = {}


def _build_trainer(cfg: dict):
    import torch
    from datasets import Dataset

    cuda = torch.cuda.is_available()
    common = dict(output_dir=cfg["output_dir"], per_device_train_batch_size=cfg["batch"],
                  num_generations=cfg["generations"], max_completion_length=cfg["completion"],
                  generation_kwargs={"min_new_tokens": cfg["completion"]}, max_steps=cfg["warmup"] + cfg["steps"],
                  learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to=[], use_cpu=not cuda,
                  seed=0, disable_tqdm=True, bf16=cuda and torch.cuda.is_bf16_supported(), dataloader_num_workers=0)
    dataset = Dataset.from_list(make_rows(context_chars=cfg.get("context_chars", 0)))
    peft = {}
    if cfg.get("lora"):  # frozen base + adapters; a LoRA student's `live` teacher is the same adapted model
        from peft import LoraConfig

        peft = {"peft_config": LoraConfig(task_type="CAUSAL_LM", **LORA)}
        common["learning_rate"] = 1e-4
    if cfg["name"] == "trl":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer(model=cfg["student"], reward_funcs=REWARDS[cfg["reward"]], args=GRPOConfig(**common),
                           train_dataset=dataset, **peft)
    from rlsd import RLSDConfig, RLSDTrainer

    if cfg["name"] == "noshare":  # RLSD with one teacher forward per row (the pass before teacher_share_prefix)
        extra = {"algorithm": "rlsd", "teacher_share_prefix": False}
    elif cfg["name"] in ("rlsd", "grpo"):
        extra = {"algorithm": cfg["name"]}
    else:
        extra = {"algorithm": "opd", "teacher_model": cfg["teacher"]}
    return RLSDTrainer(model=cfg["student"], reward_funcs=REWARDS[cfg["reward"]], args=RLSDConfig(**common, **extra),
                       train_dataset=dataset, **peft)


def run_worker(cfg: dict) -> dict:
    """Train one configuration and measure it; runs in a fresh process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import trl  # noqa: F401  (imports before the baseline, so libraries are not counted as training memory)
    from transformers import TrainerCallback

    import rlsd  # noqa: F401

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rss_imports = _rss_mb("VmRSS")
    trainer = _build_trainer(cfg)
    rss_setup = _rss_mb("VmRSS")

    timer = PhaseTimer()
    prompt_lengths: dict[str, list[float]] = {"student_prompt_tokens": [], "teacher_prompt_tokens": []}
    algorithm = getattr(trainer, "algorithm", None)
    if algorithm is not None and algorithm.uses_teacher:  # record how much longer the teacher's context is
        build_teacher_prompts = algorithm.teacher_prompts

        def teacher_prompts(teacher_pass, inputs, output):
            ids, mask = build_teacher_prompts(teacher_pass, inputs, output)
            prompt_lengths["student_prompt_tokens"].append(output["prompt_mask"].sum(1).float().mean().item())
            prompt_lengths["teacher_prompt_tokens"].append(mask.sum(1).float().mean().item())
            return ids, mask

        algorithm.teacher_prompts = teacher_prompts
        timer.wrap(algorithm, "teacher_prompts", "teacher_prompts")
    zero_advantage: list[float] = []  # rows whose teacher log-probs cannot change the RLSD loss (A = 0)
    generate_and_score = trainer._generate_and_score_completions

    def generate_and_score_completions(inputs):
        output = generate_and_score(inputs)
        zero_advantage.append((output["advantages"] == 0).float().mean().item())
        return output

    trainer._generate_and_score_completions = generate_and_score_completions
    for method, phase in (("_generate", "generate"), ("_calculate_rewards", "rewards"),
                          ("_generate_and_score_completions", "rollout_total"), ("compute_loss", "loss_total"),
                          ("_log_leakage", "leakage")):
        if hasattr(trainer, method):
            timer.wrap(trainer, method, phase)
    if getattr(trainer, "teacher", None) is not None:
        timer.wrap_context(trainer.teacher, "activate", "teacher_forward")

    marks: dict[str, Any] = {"ends": [], "cpu": [], "hwm_reset": None}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["ends"].append(time.perf_counter())
            marks["cpu"].append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            marks["ends"].append(time.perf_counter())
            marks["cpu"].append(time.process_time())
            timer.end_step()
            if state.global_step == cfg["warmup"]:  # peak memory counts the measured steps only
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                else:
                    marks["hwm_reset"] = _reset_peak_rss()
                marks["ends"][-1], marks["cpu"][-1] = time.perf_counter(), time.process_time()

    trainer.add_callback(Clock())
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        method = "cuda.max_memory_allocated"
    else:
        peak = _rss_mb("VmHWM") - rss_imports
        method = "VmHWM_after_warmup - RSS_after_imports" if marks["hwm_reset"] else "ru_maxrss - RSS_after_imports"
    step_times = [b - a for a, b in zip(marks["ends"], marks["ends"][1:])]
    measured = step_times[cfg["warmup"]:]
    cpu_times = [b - a for a, b in zip(marks["cpu"], marks["cpu"][1:])][cfg["warmup"]:]
    phases = timer.steps[cfg["warmup"]:]
    logs = [e for e in trainer.state.log_history if "step_time" in e]
    teacher_frac = [e["teacher/time_frac"] for e in logs[cfg["warmup"]:] if "teacher/time_frac" in e]
    lengths = [e["completions/mean_length"] for e in logs if "completions/mean_length" in e]
    return {
        "name": cfg["name"], "round": cfg.get("round", 0), "step_times": step_times, "warmup": cfg["warmup"],
        "median_step_time": statistics.median(measured), "mean_step_time": statistics.fmean(measured),
        "median_step_cpu_time": statistics.median(cpu_times), "mean_step_cpu_time": statistics.fmean(cpu_times),
        "loadavg_1min": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "phases_mean": {k: statistics.fmean(p.get(k, 0.0) for p in phases)
                        for k in sorted({k for p in phases for k in p})},
        "trainer_teacher_time_frac": statistics.median(teacher_frac) if teacher_frac else None,
        "completion_mean_length": statistics.fmean(lengths) if lengths else None,
        "zero_advantage_frac": statistics.fmean(zero_advantage),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "peak_mb": peak, "memory_method": method, "rss_after_imports_mb": rss_imports,
        **{k: statistics.fmean(v) for k, v in prompt_lengths.items() if v},
        "setup_mb": rss_setup - rss_imports, "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(run_worker(json.loads(sys.argv[1]))), flush=True)

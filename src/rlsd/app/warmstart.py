"""Warm start: a tiny model that already solves some of a task, so RL has something to improve.

RL from a random initialisation never sees a reward. `warm_start` trains the
tiny char-level Llama on the task's worked solutions with TRL's `SFTTrainer`
and stops as soon as held-out greedy accuracy enters a target band (20-50% by
default): good enough for rollouts to earn rewards, far enough from 100% that
RLSD/GRPO have visible headroom. The result is an ordinary HF directory; a
rerun with the same settings reuses it instead of training again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from .. import tasks as registry
from ..agents.rollout import sft_example
from ..tasks.base import Task
from ..tasks.tiny import build_char_tokenizer, build_tiny_model
from ..tasks.tiny_tools import build_tool_tokenizer
from ..tasks.tiny_vlm import build_tiny_llava, build_tiny_llava_processor
from ..teacher.prompts import with_reference
from .evaluate import evaluate, render_prompt

logger = logging.getLogger(__name__)

RESULT_FILE = "warmstart.json"
FORMAT_VERSION = 1  # bump when a change to training makes old checkpoints stale


@dataclass
class WarmStartResult:
    """What a warm start produced: where, how good, how long, and whether it was reused."""

    output_dir: str
    task: str
    accuracy: float  # held-out greedy accuracy of the saved model
    in_band: bool
    steps: int
    seconds: float
    reused: bool = False
    capped: bool = False  # fixed_steps mode stopped early by the time_budget_s safety cap (not reproducible)
    num_parameters: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    # Held-out accuracy with the reference in the prompt (what a self-teacher sees), once someone measured it.
    accuracy_with_reference: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)  # what trained it: CPU, torch version and threads


def warm_start(
    task: str | Task,
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    difficulty: int | None = None,
    max_steps: int = 2000,
    time_budget_s: float = 150.0,
    target_accuracy: tuple[float, float] = (0.2, 0.5),
    eval_every: int = 100,
    num_train_rows: int = 3000,
    num_eval_rows: int = 100,
    hidden_size: int = 128,
    num_layers: int = 3,
    num_heads: int = 4,
    learning_rate: float = 2e-3,
    batch_size: int = 64,
    warmup_steps: int = 20,
    max_new_tokens: int | None = None,
    num_threads: int | None = None,
    privileged_fraction: float = 0.0,
    fixed_steps: int | None = None,
    deterministic: bool = False,
    group_by_length: bool = False,
    force: bool = False,
    progress: bool = True,
) -> WarmStartResult:
    """SFT a tiny model on `task`'s solutions until held-out accuracy reaches `target_accuracy`.

    Evaluates greedy accuracy on `num_eval_rows` held-out problems every
    `eval_every` steps (every `eval_every // 2` once accuracy is within 75% of
    the band's floor, to avoid overshooting) and stops when it is at least
    the band's floor, at `max_steps`, or after `time_budget_s` seconds of
    training. Saves model + tokenizer + `warmstart.json` to `output_dir`;
    with the same settings a finished directory is reused unless `force`.
    `privileged_fraction` > 0 adds that share of the training rows a second
    time with the reference answer and solution in the prompt (the RLSD
    teacher's template), so the tiny model learns to use a reference in its
    context, as an instruction-tuned LLM already can; held-out accuracy is
    still measured on plain prompts. `num_threads` caps torch's CPU threads
    for the run (on a busy machine one thread beats two spinning ones); None
    keeps torch's setting. `max_new_tokens` (evaluation) defaults to the task's `completion_tokens`, else 96.

    Reproducible mode (what `rlsd quickstart` uses): `fixed_steps` trains exactly
    that many steps, chosen beforehand to land in the band, and evaluates once
    at the end; `time_budget_s` is then only a safety cap, and hitting it
    warns loudly (the checkpoint is no longer the reproducible one). With
    `deterministic` (torch deterministic algorithms) and a fixed `num_threads`,
    the same command on the same kind of CPU gives the same checkpoint whatever
    else the machine is doing; other CPUs can round differently. `group_by_length`
    batches rows of similar length (the reference-in-prompt rows are longer),
    so batches are not padded to their longest row.
    """
    task = registry.get_task(task)
    difficulty = task.default_difficulty if difficulty is None else difficulty
    max_new_tokens = max_new_tokens or task.completion_tokens or 96
    low, high = target_accuracy
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"target_accuracy must satisfy 0 <= low <= high <= 1, got {target_accuracy}")
    if not 0.0 <= privileged_fraction <= 1.0:
        raise ValueError(f"privileged_fraction must be in [0, 1], got {privileged_fraction}")
    output_dir = Path(output_dir)
    settings = dict(
        version=FORMAT_VERSION, task=task.name, seed=seed, difficulty=difficulty, max_steps=max_steps,
        time_budget_s=time_budget_s, target_accuracy=[low, high], eval_every=eval_every,
        num_train_rows=num_train_rows, num_eval_rows=num_eval_rows, hidden_size=hidden_size,
        num_layers=num_layers, num_heads=num_heads, learning_rate=learning_rate, batch_size=batch_size,
        warmup_steps=warmup_steps, max_new_tokens=max_new_tokens,
    )
    if privileged_fraction:  # only when used, so that existing warm starts stay reusable
        settings["privileged_fraction"] = privileged_fraction
    if fixed_steps is not None:
        if fixed_steps < 1:
            raise ValueError(f"fixed_steps must be positive, got {fixed_steps}")
        settings.update(fixed_steps=fixed_steps, max_steps=fixed_steps)
    if deterministic:
        settings.update(deterministic=True, num_threads=num_threads)
    if group_by_length:
        settings["group_by_length"] = True
    if not force and (previous := load_result(output_dir)) is not None and previous.settings == settings:
        logger.info("warm start: reusing %s (accuracy %.2f)", output_dir, previous.accuracy)
        previous.reused = True
        return previous

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULT_FILE).unlink(missing_ok=True)  # never leave a stale "finished" marker beside new weights
    started = time.perf_counter()
    with _torch_threads(num_threads), _deterministic(deterministic):
        result = _train(task, output_dir, settings, progress=progress)
    result.seconds = round(time.perf_counter() - started, 1)
    result.machine = machine_facts(num_threads)
    _write_json(output_dir / RESULT_FILE, asdict(result))
    return result


# `warm_start` keyword arguments that its recorded `settings` hold under the same name.
_RECORDED_ARGUMENTS = ("seed", "difficulty", "max_steps", "time_budget_s", "eval_every", "num_train_rows",
                       "num_eval_rows", "hidden_size", "num_layers", "num_heads", "learning_rate", "batch_size",
                       "warmup_steps", "max_new_tokens", "privileged_fraction", "fixed_steps", "deterministic",
                       "num_threads", "group_by_length")


def recorded_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The `warm_start(task, dir, **kwargs)` arguments that retrain the checkpoint these `settings` describe.

    `warm_start(settings["task"], new_dir, **recorded_arguments(settings))` records the same settings again, and
    with `deterministic` on the same thread count and kind of CPU it trains the same weights (tested).
    """
    if settings.get("version") != FORMAT_VERSION:
        raise ValueError(f"warm-start settings of format version {settings.get('version')!r}; this rlsd trains "
                         f"version {FORMAT_VERSION} (retrain with the current recipe instead)")
    kwargs = {key: settings[key] for key in _RECORDED_ARGUMENTS if key in settings}
    kwargs["target_accuracy"] = tuple(settings["target_accuracy"])
    return kwargs


def sft_max_length(examples: list[dict], tokenizer: Any, max_new_tokens: int) -> int:
    """SFT's `max_length`: the old cap (256 for short tasks, 1024 for long ones), raised to the longest text example.

    TRL truncates an example from the right, i.e. it cuts the worked solution. Chain rows with the reference in
    the prompt (~330 tokens) passed the 256 cap once the compact chain format shortened the solutions below the
    "long task" threshold: the tiny model then never saw a reference row's solution and its self-teacher's view
    scored 0.02 against 0.36 on plain prompts. So a text example is never truncated. (A VLM example is never
    truncated either: a cut could fall inside its image tokens.)
    """
    cap = 256 if max_new_tokens <= 96 else 1024
    texts = [e["prompt"] + e["completion"] for e in examples
             if isinstance(e.get("prompt"), str) and isinstance(e.get("completion"), str)]
    longest = max((len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]), default=0) \
        if texts else 0
    return max(cap, longest)


def load_result(output_dir: str | os.PathLike) -> WarmStartResult | None:
    """The finished warm start saved in `output_dir`, or None if there is none (or it is incomplete)."""
    path = Path(output_dir) / RESULT_FILE
    if not path.is_file() or not (Path(output_dir) / "config.json").is_file():
        return None
    try:
        data = json.loads(path.read_text())
        data["output_dir"] = str(output_dir)  # where it is now (a committed or copied warm start moved)
        return WarmStartResult(**{k: v for k, v in data.items() if k in WarmStartResult.__dataclass_fields__})
    except (ValueError, TypeError):
        return None


def save_result(result: WarmStartResult) -> None:
    """Rewrite `result` into its directory's `warmstart.json` (e.g. after measuring the self-teacher's view)."""
    _write_json(Path(result.output_dir) / RESULT_FILE, asdict(result))


def _write_json(path: Path, data: dict) -> None:
    """Write atomically so an interrupted run never leaves a half-written marker."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _train(task: Task, output_dir: Path, s: dict[str, Any], *, progress: bool) -> WarmStartResult:
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    transformers.set_seed(s["seed"])
    vlm = task.modality == "image"
    if vlm:  # a tiny LLaVA (CLIP vision tower + Llama) with its processor: `tokenizer` is the processor
        tokenizer = build_tiny_llava_processor()
        model = build_tiny_llava(tokenizer, hidden_size=s["hidden_size"], num_layers=s["num_layers"],
                                 num_heads=s["num_heads"], seed=s["seed"])
    else:
        tokenizer = build_tool_tokenizer() if task.tools else build_char_tokenizer()
        model = build_tiny_model(
            tokenizer, hidden_size=s["hidden_size"], num_layers=s["num_layers"], num_heads=s["num_heads"],
            seed=s["seed"],
        )
    train_rows = task.make_rows(s["num_train_rows"], s["seed"], s["difficulty"], "train")
    eval_rows = task.make_rows(s["num_eval_rows"], s["seed"], s["difficulty"], "test")
    def example(row):
        if vlm:  # chat messages plus the row's image; TRL's collator runs the processor
            return {"images": [row["image"]], "prompt": row["prompt"],
                    "completion": [{"role": "assistant", "content": row["solution"]}]}
        if task.transcript is not None:  # agent task: the worked episode, loss on the agent's turns only
            return sft_example(tokenizer, row["prompt"], task.transcript(row), task.tools)
        return {"prompt": render_prompt(row["prompt"], tokenizer), "completion": row["solution"] + tokenizer.eos_token}

    examples = [example(r) for r in train_rows]
    num_privileged = round(s.get("privileged_fraction", 0.0) * len(train_rows))
    if num_privileged:
        examples += [example(r) for r in with_reference(train_rows[:num_privileged], ("answer", "solution"))]
    dataset = Dataset.from_list(examples)
    low, high = s["target_accuracy"]
    history: list[dict[str, float]] = []
    fixed_steps = s.get("fixed_steps")
    bar = tqdm(  # fixed_steps: counts steps; otherwise runs on the time budget, the honest bound on the wait
        total=fixed_steps or round(s["time_budget_s"]), desc=f"warm start {task.name}", disable=not progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt}" + ("" if fixed_steps else "s") + "{postfix}",
    )
    status = {"step": 0, "acc": "-", "target": f"{low:.2f}-{high:.2f}"}
    fixed = fixed_steps is not None
    stopped: dict[str, int] = {}
    clock = {"start": time.perf_counter()}

    def measure(step: int) -> float:
        metrics = evaluate(
            model, tokenizer, eval_rows, task.reward, max_new_tokens=s["max_new_tokens"],
            batch_size=len(eval_rows), progress=False, tools=task.tools or None,
        )
        elapsed = round(time.perf_counter() - clock["start"], 1)
        history.append({"step": step, "accuracy": metrics["accuracy"], "elapsed_s": elapsed})
        status.update(step=step, acc=f"{metrics['accuracy']:.2f}")
        bar.set_postfix(status)
        return metrics["accuracy"]

    class BandStop(transformers.TrainerCallback):
        """Evaluate on a schedule; stop in the band, at the budget, or past it."""

        next_eval = s["eval_every"]

        def on_step_end(self, args, state, control, **kwargs):
            status["step"] = state.global_step
            bar.update((state.global_step if fixed else min(bar.total, time.perf_counter() - clock["start"])) - bar.n)
            out_of_time = time.perf_counter() - clock["start"] > s["time_budget_s"]
            if fixed:  # reproducible mode: exactly fixed_steps steps, one evaluation at the end
                if out_of_time and state.global_step < s["fixed_steps"]:
                    stopped["early"] = state.global_step
                    control.should_training_stop = True
                return control
            if state.global_step < self.next_eval and not out_of_time:
                return control
            accuracy = measure(state.global_step)
            if out_of_time and accuracy < low:
                stopped["early"] = state.global_step  # the time limit, not the band, ended it: not reproducible
            near = accuracy >= 0.75 * low  # close to the band: look twice as often so a jump is not missed
            self.next_eval = state.global_step + max(1, s["eval_every"] // (2 if near else 1))
            if accuracy >= low or out_of_time:
                control.should_training_stop = True
            return control

    with tempfile.TemporaryDirectory(prefix="rlsd-warmstart-") as scratch, _quiet_libraries():
        config = SFTConfig(
            output_dir=scratch, max_steps=s["max_steps"], per_device_train_batch_size=s["batch_size"],
            learning_rate=s["learning_rate"], lr_scheduler_type="constant_with_warmup",
            warmup_steps=s["warmup_steps"], weight_decay=0.0, seed=s["seed"], data_seed=s["seed"],
            bf16=False, fp16=False, activation_checkpointing=False, save_strategy="no", report_to="none",
            logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
            max_length=None if vlm else sft_max_length(examples, tokenizer, s["max_new_tokens"]),
            dataset_num_proc=None, use_cpu=not _has_accelerator(),
            **({"train_sampling_strategy": "group_by_length"} if s.get("group_by_length") else {}),
        )
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[BandStop()]
        )
        trainer.remove_callback(transformers.PrinterCallback)  # our bar reports progress; no raw log dicts
        clock["start"] = time.perf_counter()
        trainer.train()
        if not history or history[-1]["step"] != trainer.state.global_step:
            measure(trainer.state.global_step)
        bar.close()
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)

    accuracy = history[-1]["accuracy"]
    in_band = low <= accuracy <= high
    if stopped:
        planned = f"{s['fixed_steps']} steps" if fixed else "the accuracy band"
        message = (f"WARNING: the warm start hit its {s['time_budget_s']:.0f}s time limit after {stopped['early']} "
                   f"steps, before {planned} (this machine is slower or busier than expected). The checkpoint is "
                   f"NOT the reproducible one: held-out accuracy {accuracy:.2f}.")
        logger.warning(message)
        print("\n" + "!" * 100 + "\n" + message + "\n" + "!" * 100, flush=True)
    if not in_band:
        logger.warning(
            "warm start for %s ended at held-out accuracy %.2f, outside the target band %.2f-%.2f",
            task.name, accuracy, low, high,
        )
    return WarmStartResult(
        output_dir=str(output_dir), task=task.name, accuracy=accuracy, in_band=in_band,
        steps=trainer.state.global_step, seconds=0.0, capped=bool(stopped), num_parameters=model.num_parameters(),
        history=history, settings=s,
    )


def machine_facts(num_threads: int | None = None) -> dict[str, Any]:
    """The facts that decide whether another machine retrains the same floats: CPU model, torch, threads."""
    import platform

    import torch

    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
    except OSError:
        cpu = platform.processor()
    return {"cpu": cpu, "torch": torch.__version__, "threads": num_threads or torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """torch deterministic algorithms inside the block (CPU kernels that have no deterministic variant raise)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence the per-map and per-shard progress bars of datasets/transformers; ours is the one that matters."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_bars, hf_bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()

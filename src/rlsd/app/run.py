"""One training run from a run configuration: data, rewards, model, trainer, run directory.

The run directory holds everything a user needs afterwards:
`config.yaml` (the resolved run), `run_config.json` (every trainer field),
`metrics.jsonl`, TensorBoard events under `runs/`, `samples.jsonl` (sampled
completions with rewards), `credit.jsonl` (per-token teacher credit, read by `rlsd inspect`), HF checkpoints `checkpoint-N/` (with the EMA or
snapshot teacher), and the final model + tokenizer + model card.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..agents.glue import load_environment, load_tools
from ..algorithms import display_name
from ..config import RLSDConfig
from ..credit.records import CREDIT_FILE, CreditRecorder
from ..data import load_dataset
from ..rewards import get_rewards, robust
from ..runlog import rewind_on_resume
from ..tasks import get_task
from ..trackers import prepare_environment
from ..trainer import RLSDTrainer
from .callbacks import HeldOutEvalCallback, JsonlMetricsCallback

logger = logging.getLogger(__name__)


class RunError(Exception):
    """A problem with the user's run setup, reported as one line by the CLI."""


@dataclass
class PreparedRun:
    trainer: Any
    output_dir: Path
    eval_rows: list[dict]
    reward_fn: Any


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rlsd-write-test-{os.getpid()}"  # one per rank: ranks probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise RunError(f"output directory {str(path)!r} is not writable: {err.strerror or err}") from None
    return path


def check_model_path(model: str | None) -> str:
    """A local directory, or something shaped like a hub id (`org/name`); anything else is a missing path."""
    if not model:
        raise RunError("no model given: set `model:` in the config or pass --model (hub id or local path)")
    local = os.path.expanduser(model)
    if os.path.exists(local):
        return local
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) and not model.startswith("."):
        return model
    raise RunError(f"model path not found: {model}")


def build_datasets(run: dict, seed: int):
    """(train Dataset, held-out rows, default reward) from a built-in task or the user's files."""
    from datasets import Dataset

    if run.get("task"):
        task = get_task(run["task"])
        difficulty = run.get("task_difficulty") or task.default_difficulty
        train_rows = task.make_rows(int(run["task_train_size"]), seed=seed, difficulty=difficulty, split="train")
        eval_rows = task.make_rows(int(run["task_eval_size"]), seed=seed, difficulty=difficulty, split="test")
        return Dataset.from_list(train_rows), eval_rows, task.reward
    data = run.get("data")
    if not data:
        raise RunError("no data: set `task:` (a built-in task) or `data: {train: FILE}` in the config")
    if isinstance(data, str):
        data = {"train": data}
    options = dict(data)
    train_path = options.pop("train", None) or options.pop("path", None)
    if not train_path:
        raise RunError("data.train: missing path to the training file")
    splits = load_dataset(train_path, eval_path=options.pop("eval", None), seed=seed, **options)
    eval_rows = list(splits["eval"]) if "eval" in splits else []
    return splits["train"], eval_rows, None


def build_rewards(run: dict, default_reward):
    specs = run.get("rewards")
    if not specs:
        if default_reward is None:
            raise RunError("no reward: set `rewards:` (e.g. [math] or [exact, format:0.1]) in the config")
        return [robust(default_reward)], None  # a task reward failing on one sample must not stop the run
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    funcs, weights = get_rewards(specs)
    return funcs, weights


# The text model's attention and MLP projections: in LLaVA/Qwen-VL/... they sit under `language_model`, so the
# vision tower and projector get no adapter (and, like every non-LoRA weight, stay frozen).
LANGUAGE_MODEL_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def lora_config(spec: dict):
    """PEFT `LoraConfig` from the run's `lora:` mapping; `language_only: true` adapts the text model of a VLM only."""
    from peft import LoraConfig

    lora = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", **spec}
    if lora.pop("language_only", False):
        if "target_modules" in spec:
            raise RunError("lora.language_only sets the target modules itself: drop lora.target_modules")
        lora["target_modules"] = LANGUAGE_MODEL_TARGETS
    return LoraConfig(task_type="CAUSAL_LM", **lora)


def build_agent(run: dict) -> tuple[list, Any]:
    """(tools, environment factory) from `tools:` / `environment:` import paths, else the built-in task's tools."""
    try:
        tools, environment = load_tools(run.get("tools")), load_environment(run.get("environment"))
    except ValueError as err:
        raise RunError(str(err)) from None
    if not tools and run.get("task"):
        tools = list(get_task(run["task"]).tools)
    return tools, environment


def build_trainer(run: dict, *, output_dir: str | os.PathLike | None = None, extra_callbacks=()) -> PreparedRun:
    """Everything `RLSDTrainer` needs, from a run dict (`run_config.load_run_config`)."""
    training = dict(run["training"])
    out = check_output_dir(output_dir or training.get("output_dir") or "runs/rlsd")
    training["output_dir"] = str(out)
    training.setdefault("logging_steps", 1)
    training.setdefault("report_to", ["tensorboard"])
    prepare_environment(training["report_to"], out, run.get("wandb_mode"))
    args = RLSDConfig(**training)
    model = check_model_path(run.get("model"))

    train_dataset, eval_rows, default_reward = build_datasets(run, seed=args.seed)
    reward_funcs, weights = build_rewards(run, default_reward)
    tools, environment = build_agent(run)
    if weights is not None:
        args.reward_weights = weights
    peft_config = lora_config(run["lora"]) if run.get("lora") else None

    if not any(isinstance(cb, GracefulInterruptCallback) for cb in extra_callbacks):
        extra_callbacks = (GracefulInterruptCallback(), *extra_callbacks)
    callbacks = [JsonlMetricsCallback(out / "metrics.jsonl"), *extra_callbacks]
    try:
        trainer = RLSDTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                              peft_config=peft_config, callbacks=callbacks, tools=tools or None,
                              environment_factory=environment)
    except OSError as err:  # hub id unknown offline, missing weights, ...
        raise RunError(f"cannot load model {model!r}: {str(err).splitlines()[0]}") from None
    if any(getattr(cb, "replaces_log_printer", False) for cb in extra_callbacks):  # e.g. CompactProgressCallback
        from transformers import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    eval_reward = reward_funcs[0] if len(reward_funcs) == 1 else default_reward or reward_funcs[0]
    if eval_rows and int(run.get("eval_every") or 0) > 0:
        trainer.add_callback(HeldOutEvalCallback(
            eval_rows, eval_reward, every_n_steps=int(run["eval_every"]), tokenizer=trainer.processing_class,
            trainer=trainer, max_new_tokens=int(run.get("eval_max_new_tokens") or args.max_completion_length),
            samples_path=out / "samples.jsonl", **({"tools": tools} if tools else {}),
            **({"environment_factory": environment} if environment is not None else {})))
    if int(run.get("samples_every") or 0) > 0:
        trainer.add_callback(SamplesCallback(trainer, out / "samples.jsonl", int(run["samples_every"])))
        CreditRecorder(trainer, out / CREDIT_FILE, int(run["samples_every"]))  # per-token credit for `rlsd inspect`
    _write_run_files(out, run, args)
    return PreparedRun(trainer=trainer, output_dir=out, eval_rows=eval_rows, reward_fn=eval_reward)


def train(run: dict, *, output_dir=None, resume: bool = False, extra_callbacks=()) -> PreparedRun:
    """Train, then save the final model, tokenizer and model card into the run directory."""
    interrupt = GracefulInterruptCallback()
    prepared = build_trainer(run, output_dir=output_dir, extra_callbacks=(interrupt, *extra_callbacks))
    trainer = prepared.trainer
    trainer.train(resume_from_checkpoint=True if resume else None)  # True: the newest complete checkpoint
    if interrupt.stopped_at is not None:  # the checkpoint holds the run; the run directory's model stays final-only
        checkpoint = prepared.output_dir / f"checkpoint-{interrupt.stopped_at}"
        raise RunInterrupted(interrupt.signum, interrupt.stopped_at, checkpoint if checkpoint.is_dir() else None)
    trainer.save_model(str(prepared.output_dir))
    data = run.get("data")
    dataset_name = run.get("task") or (data.get("train") if isinstance(data, dict) else data)
    trainer.create_model_card(model_name=prepared.output_dir.name, dataset_name=str(dataset_name),
                              tags=["rlsd", trainer.args.algorithm])
    return prepared


def _write_run_files(out: Path, run: dict, args: RLSDConfig) -> None:
    import yaml

    if not args.should_save:
        return
    (out / "config.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    resolved = {"algorithm": display_name(args.algorithm), "model": run.get("model"), "task": run.get("task"),
                "training_args": json.loads(args.to_json_string())}
    (out / "run_config.json").write_text(json.dumps(resolved, indent=2))


class SamplesCallback(TrainerCallback):
    """Every N steps, append the latest sampled completions with their rewards to `samples.jsonl`."""

    def __init__(self, trainer, path: Path, every_n_steps: int, max_samples: int = 16):
        self.trainer, self.path, self.every, self.max_samples = trainer, Path(path), every_n_steps, max_samples

    def on_train_begin(self, args, state, control, **kwargs):
        rewind_on_resume(self.path, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or state.global_step % self.every or "loss" not in (logs or {}):
            return
        recorded = self.trainer._logs
        prompts, completions = list(recorded["prompt"]), list(recorded["completion"])
        rewards = {name: list(values) for name, values in recorded["rewards"].items()}
        with self.path.open("a", encoding="utf-8") as handle:
            for i in range(min(len(completions), self.max_samples)):
                per_func = {name: values[i] for name, values in rewards.items() if i < len(values)}
                handle.write(json.dumps({
                    "step": state.global_step, "source": "train", "prompt": prompts[i], "completion": completions[i],
                    "reward": sum(v for v in per_func.values() if v == v), "rewards": per_func,
                }, default=str) + "\n")


class RunInterrupted(Exception):
    """The run stopped early on SIGINT/SIGTERM after saving a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint was saved on this process"
        super().__init__(f"stopped by {name} after step {step}; {where}")


class GracefulInterruptCallback(TrainerCallback):
    """First Ctrl-C or SIGTERM: finish the current step, save a checkpoint, stop. A second one: abort at once.

    Cluster schedulers (SLURM, Kubernetes) preempt with SIGTERM and a grace period, so SIGTERM is a first
    Ctrl-C. The checkpoint is saved whatever `save_strategy` says. With several processes the ranks agree
    (an all-reduce of the flag at every step end) so they all stop after the same step, whichever got the signal.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.interrupted = False
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted, self.signum = True, signum
        name = signal.Signals(signum).name
        print(f"\nrlsd: {name} received; saving a checkpoint after this step ({name} again to abort)", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        signum = _agreed_signal(self.signum or 0, args.device)
        if signum:
            self.interrupted, self.signum = True, signum
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _agreed_signal(signum: int, device) -> int:
    """The signal any process got (the largest number), so that every rank stops after the same step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())

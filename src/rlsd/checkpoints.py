"""Crash-safe checkpoints: a `checkpoint-N/` directory appears only once it is complete.

Saving (`staged_checkpoint`, used by `RLSDTrainer._save_checkpoint`): the Trainer writes everything
(model, tokenizer, optimizer, scheduler, RNG state, `trainer_state.json`, the EMA/snapshot teacher)
into `tmp-checkpoint-N/checkpoint-N/` beside the real checkpoints; every file and directory is fsynced,
a completion marker (`rlsd_complete.json`, the file list with sizes) is written last, and the directory
is renamed to `checkpoint-N/` in one atomic step. Only then are old checkpoints rotated
(`save_total_limit`). A `kill -9` at any moment leaves either the previous checkpoints untouched plus a
`tmp-checkpoint-N/` that no loader looks at, or the new complete checkpoint.

Resuming (`find_resume_checkpoint`): the newest `checkpoint-N/` that is complete: its marker lists files
that are all present with their sizes, or (written before markers existed) it holds `trainer_state.json`
and model weights. Incomplete directories are reported and left in place; when the run saves that step
again the incomplete directory is moved aside to `incomplete-checkpoint-N/`, never deleted.

`RLSD_TEST_KILL_AT=PHASE:STEP` (tests only) sends SIGKILL to this process at one point of the save of
step STEP; PHASE is one of `KILL_PHASES`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints

COMPLETE_MARKER = "rlsd_complete.json"
STAGING_PREFIX = "tmp-"
ASIDE_PREFIX = "incomplete-"
TRAINER_STATE_NAME = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin",
                "latest")  # DeepSpeed's pointer to its own shards
# Points of a save at which the test hook can kill the process, in the order they happen.
KILL_PHASES = ("model-saved", "files-written", "marked", "renamed")
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointNotFoundError(FileNotFoundError):
    """`--resume` found no complete checkpoint (a user error: reported as one line by the CLI)."""


# ---- completeness -----------------------------------------------------------------------------------------------
def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None if `path` is a complete checkpoint, else why not (one short phrase)."""
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"its {COMPLETE_MARKER} is unreadable ({err})"
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} has {file.stat().st_size} bytes, {size} expected"
        return None
    # Written before completion markers existed (or by plain transformers): trainer_state.json is saved after
    # the model, optimizer, scheduler and RNG state, so with the weights it marks a finished save.
    if (path / TRAINER_STATE_NAME).is_file() and any((path / name).is_file() for name in WEIGHT_FILES):
        return None
    present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    holds = f"holds only {', '.join(present[:4])}{' ...' if len(present) > 4 else ''}" if present else "is empty"
    return f"an interrupted save: no {COMPLETE_MARKER} nor {TRAINER_STATE_NAME} + weights, it {holds}"


def _step_of(name: str) -> int | None:
    match = _CHECKPOINT_RE.match(name)
    return int(match.group(1)) if match else None


def find_resume_checkpoint(run_dir: str | os.PathLike, log: Callable[[str], None] | None = print) -> str:
    """Path of the newest complete `checkpoint-N/` in `run_dir`; says which, and why newer ones were skipped.

    Raises `CheckpointNotFoundError` when there is none. Deletes nothing.
    """
    run_dir = Path(run_dir)
    log = log or (lambda message: None)
    entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    for staging in entries:
        if staging.is_dir() and staging.name.startswith(STAGING_PREFIX) \
                and _step_of(staging.name[len(STAGING_PREFIX):]) is not None:
            log(f"rlsd: {staging.name}/ is an unfinished save from an interrupted run, never a checkpoint; "
                f"it is replaced when that step is saved again")
    candidates = sorted(((_step_of(p.name), p) for p in entries if p.is_dir() and _step_of(p.name) is not None),
                        reverse=True)
    if not candidates:
        raise CheckpointNotFoundError(f"--resume: no checkpoint-N directory in {run_dir} to resume from")
    skipped = []
    for step, path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            for name, why in skipped:
                log(f"rlsd: skipping {name}/: {why}; left in place")
            log(f"rlsd: resuming from {path.name}/ (step {step}, the newest complete checkpoint)")
            return str(path)
        skipped.append((path.name, problem))
    reasons = "; ".join(f"{name}/: {why}" for name, why in skipped)
    raise CheckpointNotFoundError(f"--resume: no complete checkpoint in {run_dir} ({reasons})")


# ---- saving -----------------------------------------------------------------------------------------------------
def _kill_point(phase: str, step: int) -> None:
    """Test hook: SIGKILL this process at `phase` of the save of `step` when RLSD_TEST_KILL_AT asks for it."""
    if os.environ.get("RLSD_TEST_KILL_AT") == f"{phase}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the data files were synced already
        if not directory:
            raise
    finally:
        os.close(fd)


def _seal(folder: Path, step: int) -> None:
    """fsync every file and directory under `folder`, then write and fsync the completion marker."""
    files = {}
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            path = Path(root) / name
            _fsync(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
        _fsync(root, directory=True)
    marker = folder / COMPLETE_MARKER
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump({"step": step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(folder, directory=True)


def _unique(path: Path) -> Path:
    candidate, i = path, 1
    while candidate.exists():
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


def _publish(staged: Path, final: Path, log: Callable[[str], None]) -> None:
    """Rename `staged` to `final` atomically; an existing `final` is moved aside (incomplete) or replaced."""
    replaced = None
    if final.exists():
        if checkpoint_problem(final) is None:
            # The same step saved again (a run resumed from an older checkpoint): the new save supersedes it.
            replaced = _unique(final.with_name(f"{STAGING_PREFIX}old-{final.name}"))
            os.rename(final, replaced)
        else:
            aside = _unique(final.with_name(f"{ASIDE_PREFIX}{final.name}"))
            os.rename(final, aside)
            log(f"rlsd: {final.name}/ was incomplete ({checkpoint_problem(aside)}); moved it aside to {aside.name}/")
    os.rename(staged, final)
    _fsync(final.parent, directory=True)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
        log(f"rlsd: replaced the earlier {final.name}/ with this run's save of the same step")


def _fix_best_model_checkpoint(trainer, run_dir: str, step: int) -> None:
    """Point `state.best_model_checkpoint` at the published directory, as `Trainer._save_checkpoint` would."""
    state, args = trainer.state, trainer.args
    if args.save_strategy not in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) \
            or not state.best_global_step:
        return
    best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
    if state.best_global_step == step or os.path.isdir(best):
        state.best_model_checkpoint = best


@contextlib.contextmanager
def staged_checkpoint(trainer, trial, log: Callable[[str], None] = print) -> Iterator[str]:
    """Make `Trainer._save_checkpoint` (run inside the block) write into a staging directory, then publish it.

    Yields the staging checkpoint folder, for extra files (e.g. the teacher state) that belong inside.
    Every rank runs the block; the main process cleans, seals, renames and rotates.
    """
    args, step = trainer.args, trainer.state.global_step
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
    staging_root = Path(run_dir) / f"{STAGING_PREFIX}{name}"
    staged, final = staging_root / name, Path(run_dir) / name
    if args.should_save and staging_root.exists():
        log(f"rlsd: removing {staging_root.name}/, an unfinished save of step {step} from an interrupted run")
        shutil.rmtree(staging_root)
    trainer.accelerator.wait_for_everyone()

    pushes = []
    overrides = {
        # The Trainer builds the checkpoint path from the run directory: hand it the staging root instead.
        "_get_output_dir": lambda trial=None: str(staging_root),
        # Rotation runs on the real run directory once the new checkpoint is published (below).
        "_push_from_checkpoint": pushes.append,
    }
    if os.environ.get("RLSD_TEST_KILL_AT") == f"model-saved:{step}":
        save_optimizer = trainer._save_optimizer_and_scheduler

        def _after_model(output_dir):
            _kill_point("model-saved", step)
            save_optimizer(output_dir)

        overrides["_save_optimizer_and_scheduler"] = _after_model
    shadowed = {attr: trainer.__dict__[attr] for attr in overrides if attr in trainer.__dict__}
    trainer.__dict__.update(overrides)
    try:
        yield str(staged)
    finally:
        for attr in overrides:
            del trainer.__dict__[attr]  # back to the class's methods
        trainer.__dict__.update(shadowed)

    _fix_best_model_checkpoint(trainer, run_dir, step)
    if args.should_save:
        if (staged / TRAINER_STATE_NAME).exists():
            trainer.state.save_to_json(str(staged / TRAINER_STATE_NAME))  # with the corrected best checkpoint path
        _kill_point("files-written", step)
    trainer.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are in place
    if args.should_save:
        _seal(staged, step)
        _kill_point("marked", step)
        _publish(staged, final, log)
        with contextlib.suppress(OSError):
            staging_root.rmdir()
        _kill_point("renamed", step)
        rotate_checkpoints(output_dir=run_dir, save_total_limit=args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    trainer.accelerator.wait_for_everyone()
    for folder in pushes:
        trainer._push_from_checkpoint(str(final) if Path(folder) == staged else folder)

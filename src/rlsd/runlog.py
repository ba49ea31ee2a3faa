"""The append-only JSONL logs of a run directory (`metrics.jsonl`, `samples.jsonl`, `credit.jsonl`).

Reading is tolerant: a run killed mid-write leaves a torn last line, which is skipped (a report of a crashed
run is exactly when one is needed). A resumed run rewinds each log to the step it resumes from, so no step
is counted twice. Nothing here imports the rest of `rlsd`: writers and readers of every layer use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_records(path: str | os.PathLike, file_name: str) -> list[dict[str, Any]]:
    """Every line of a JSONL log that parses to a JSON object, in order; `path` is the file or its run directory.

    A missing file reads as []; unparsable lines (a torn last line) and non-object lines are skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # also a blank line
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def drop_records_after_step(path: str | os.PathLike, step: int) -> int:
    """Rewind a JSONL log to a resumed run's `step`: drop records with `"step" > step`, keep everything else.

    The resumed run writes those steps again, so keeping them would count them twice. A final line cut short
    by a kill (no newline) is dropped too, so the next record starts on its own line. The file is replaced
    atomically, so a crash here leaves the old file whole. Returns how many lines were dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        if not line.endswith("\n"):
            continue  # a torn last line
        try:
            record_step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            record_step = None  # not ours to judge: keep it
        if not (isinstance(record_step, (int, float)) and record_step > step):
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(f".{path.name}.rewind-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)


def rewind_on_resume(path: str | os.PathLike | None, state) -> None:
    """On the main process of a resumed run (global_step > 0 at train begin), drop `path`'s later records."""
    if path is None or not state.is_world_process_zero or state.global_step <= 0:
        return
    dropped = drop_records_after_step(path, state.global_step)
    if dropped:
        print(f"rlsd: {Path(path).name}: dropped {dropped} line(s) written after step {state.global_step}, "
              f"the step this run resumes from", flush=True)

"""A dense toy reward that also records, per rank, the rewards this process computed.

Multi-process tests need to know what each rank scored locally so they can check
that the logged `reward` is the mean over *all* ranks' completions, not rank 0's.
Records go to `$RLSD_MP_RECORD_DIR/rewards-rank{RANK}.jsonl`, one line per call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_calls = 0


def digit_share(prompts, completions, **kwargs) -> list[float]:
    """Share of digits in the completion (dense, so random tiny models get non-zero advantages)."""
    global _calls
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    questions = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    rewards = [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
    record_dir = os.environ.get("RLSD_MP_RECORD_DIR")
    if record_dir:
        rank = int(os.environ.get("RANK", "0"))
        with (Path(record_dir) / f"rewards-rank{rank}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"rank": rank, "call": _calls, "rewards": rewards, "prompts": questions,
                                     "completions": texts}) + "\n")
    _calls += 1
    return rewards

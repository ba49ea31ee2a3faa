"""Shared pieces of the built-in tasks: the `Task` record, split hashing, answer parsing, and `sampled_task`,
which builds a task's `make_rows` and reward from its problem sampler.

Every task is a pure generator plus a verifier. Problems are assigned to the
train or held-out split by a hash of their canonical form, so the two splits
can never share a problem, whatever seeds or sizes are asked for.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# One way to read text and the built-in tasks' `Answer:` line out of TRL's completions, shared with the rewards.
from ..rewards._text import extract_answer, normalize_answer

Row = dict[str, Any]
RewardFn = Callable[..., list[float]]

HELD_OUT_FRACTION = 0.2  # share of each problem space reserved for evaluation
TRAIN_SPLITS = {"train"}
HELD_OUT_SPLITS = {"test", "eval", "held_out", "heldout", "validation", "val"}
MAX_CONSECUTIVE_MISSES = 20_000  # draws without a new problem before the space counts as exhausted


@dataclass(frozen=True)
class Task:
    """A built-in task: a seeded row generator, a TRL-style reward and a one-line description."""

    name: str
    make_rows: Callable[..., list[Row]]
    reward: RewardFn
    description: str
    default_difficulty: int = 1
    max_difficulty: int = 3
    # Generation budget (char-level tokens) for tasks whose worked solutions outgrow the defaults
    # (warm start 96, RL rollouts 48); None for short tasks.
    completion_tokens: int | None = None
    modality: str = "text"  # "image": rows carry an `image` and need a vision-language model
    # Agent tasks: the tools the agent may call, and the worked episode (chat messages after the prompt) for SFT.
    tools: tuple[Callable, ...] = ()
    transcript: Callable[[Row], list[dict]] | None = None

    def __repr__(self) -> str:  # the functions make the dataclass repr unreadable
        return f"Task({self.name!r})"


def normalize_split(split: str) -> str:
    """Map the many names people use for a held-out split onto `train` / `test`."""
    key = split.lower()
    if key in TRAIN_SPLITS:
        return "train"
    if key in HELD_OUT_SPLITS:
        return "test"
    raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")


def split_of(task_name: str, canonical: str, held_out_fraction: float = HELD_OUT_FRACTION) -> str:
    """Which split a problem belongs to; a pure function of the problem, never of the seed."""
    digest = hashlib.sha256(f"{task_name}|{canonical}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < held_out_fraction else "train"


def check_difficulty(difficulty: int, max_difficulty: int) -> int:
    if not isinstance(difficulty, int) or not 1 <= difficulty <= max_difficulty:
        raise ValueError(f"difficulty must be an integer in 1..{max_difficulty}, got {difficulty!r}")
    return difficulty


def sample_rows(
    task_name: str,
    sample: Callable[[random.Random], tuple[str, Row]],
    n: int,
    seed: int,
    difficulty: int,
    split: str,
) -> list[Row]:
    """Draw `n` distinct problems of one split by rejection sampling.

    `sample(rng)` returns `(canonical_key, row)`. Rows whose key hashes to the
    other split, or that repeat a key already drawn, are skipped; a problem
    space too small for `n` distinct rows raises (after many draws in a row
    find nothing new) instead of looping forever.
    """
    want = normalize_split(split)
    rng = random.Random(f"{task_name}|{seed}|{difficulty}|{want}")
    rows: list[Row] = []
    seen: set[str] = set()
    misses = 0
    while len(rows) < n:
        key, row = sample(rng)
        if key in seen or split_of(task_name, key) != want:
            misses += 1
            if misses > MAX_CONSECUTIVE_MISSES:
                raise ValueError(
                    f"{task_name}: could not draw {n} distinct {want} problems at difficulty {difficulty} "
                    f"(found {len(rows)}); ask for fewer rows or a higher difficulty"
                )
            continue
        misses = 0
        seen.add(key)
        rows.append(row)
    return rows


def chat_prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def reward(prompts: list[Any], completions: list[Any], answer: Iterable[Any], **kwargs: Any) -> list[float]:
    """The built-in tasks' reward: 1.0 iff the completion's last `Answer: X` equals the reference answer (after
    normalisation). TRL logs a reward under its function's name, hence `rewards/reward/mean`."""
    return [
        1.0 if (got := normalize_answer(extract_answer(c))) is not None and got == normalize_answer(str(a)) else 0.0
        for c, a in zip(completions, answer)
    ]


@dataclass(frozen=True)
class RowSampler:
    """A task's `make_rows(n, seed=0, difficulty=1, split="train")`: `n` distinct problems of one split,
    deterministic in `seed`, drawn by `sampler(difficulty)(rng) -> (canonical key, row)`; `finish` (if any)
    completes the chosen rows (e.g. draws their pictures once the problems are known)."""

    name: str
    sampler: Callable[[int], Callable[[random.Random], tuple[str, Row]]]
    max_difficulty: int
    finish: Callable[[list[Row]], list[Row]] | None = None

    def __call__(self, n: int, seed: int = 0, difficulty: int = 1, split: str = "train") -> list[Row]:
        check_difficulty(difficulty, self.max_difficulty)
        rows = sample_rows(self.name, self.sampler(difficulty), n, seed, difficulty, split)
        return self.finish(rows) if self.finish is not None else rows


def sampled_task(name: str, sampler: Callable[[int], Callable[[random.Random], tuple[str, Row]]], description: str,
                 *, max_difficulty: int, reward: RewardFn = reward, finish: Callable[[list[Row]], list[Row]] | None
                 = None, **fields: Any) -> Task:
    """A `Task` whose rows come from `sampler` (see `RowSampler`) and whose reward is `reward` (exact match of
    the final answer unless given); `fields` are the other `Task` fields (tools, completion_tokens, ...)."""
    return Task(name=name, make_rows=RowSampler(name, sampler, max_difficulty, finish), reward=reward,
                description=description, max_difficulty=max_difficulty, **fields)

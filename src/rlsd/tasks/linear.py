"""Linear equations in one unknown: `Solve for x: 3x+7=22`, solved by inverse operations.

Difficulty adds structure (and a step each level):
1. `ax+b=c`            -> isolate the x term, divide             (2 steps)
2. `ax+b=dx+e`         -> collect x terms, constants, divide      (3 steps)
3. `a(x+b)=dx+e`       -> expand, collect, constants, divide      (4 steps)
The solution is always a positive integer.
"""

from __future__ import annotations

import random

from .base import Row, chat_prompt, sampled_task

NAME = "linear"
MAX_DIFFICULTY = 3


def _x(coef: int) -> str:
    return "x" if coef == 1 else f"{coef}x"


def _nonzero(rng: random.Random, bound: int) -> int:
    return rng.choice([-1, 1]) * rng.randint(1, bound)


def _level1(rng: random.Random) -> tuple[str, list[str], int]:
    a, x, b = rng.randint(2, 9), rng.randint(1, 20), _nonzero(rng, 30)
    c = a * x + b
    steps = [f"{_x(a)}={c}{-b:+d}={a * x}", f"x={a * x}/{a}={x}"]
    return f"{_x(a)}{b:+d}={c}", steps, x


def _level2(rng: random.Random) -> tuple[str, list[str], int] | None:
    a = rng.randint(3, 9)
    d, x, b = rng.randint(1, a - 2), rng.randint(1, 15), _nonzero(rng, 20)
    k = a - d
    e = k * x + b
    if e == 0:
        return None
    steps = [f"{_x(a)}-{_x(d)}={_x(k)}", f"{_x(k)}={e}{-b:+d}={k * x}", f"x={k * x}/{k}={x}"]
    return f"{_x(a)}{b:+d}={_x(d)}{e:+d}", steps, x


def _level3(rng: random.Random) -> tuple[str, list[str], int] | None:
    a = rng.randint(3, 9)
    d, x, b = rng.randint(1, a - 2), rng.randint(1, 15), _nonzero(rng, 12)
    k, ab = a - d, a * b
    e = k * x + ab
    if e == 0:
        return None
    steps = [
        f"{_x(a)}{ab:+d}={_x(d)}{e:+d}",
        f"{_x(a)}-{_x(d)}={_x(k)}",
        f"{_x(k)}={e}{-ab:+d}={k * x}",
        f"x={k * x}/{k}={x}",
    ]
    return f"{a}(x{b:+d})={_x(d)}{e:+d}", steps, x


_LEVELS = {1: _level1, 2: _level2, 3: _level3}


def _sample(difficulty: int):
    level = _LEVELS[difficulty]

    def sample(rng: random.Random) -> tuple[str, Row]:
        drawn = None
        while drawn is None:
            drawn = level(rng)
        equation, steps, x = drawn
        solution = "\n".join(steps + [f"Answer: {x}"])
        row = {"prompt": chat_prompt(f"Solve for x: {equation}"), "answer": str(x), "solution": solution}
        return equation, row

    return sample


TASK = sampled_task(
    NAME, _sample, "linear equations in x solved by inverse operations (e.g. Solve for x: 3x+7=22)",
    max_difficulty=MAX_DIFFICULTY,
)

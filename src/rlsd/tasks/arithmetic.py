"""Chained arithmetic: `Compute 37+48-19.` solved one operation per line.

Difficulty sets both the number of operations (steps) and the operand size.
Intermediate results stay non-negative so every step is a plain sum or
difference of naturals.
"""

from __future__ import annotations

import random

from .base import Row, chat_prompt, sampled_task

NAME = "arithmetic"
# difficulty -> (operations, largest operand)
LEVELS = {1: (2, 20), 2: (3, 50), 3: (4, 99)}


def _sample(difficulty: int):
    num_ops, max_operand = LEVELS[difficulty]

    def sample(rng: random.Random) -> tuple[str, Row]:
        value = rng.randint(1, max_operand)
        expr, steps = str(value), []
        for _ in range(num_ops):
            if value >= 1 and rng.random() < 0.5:
                operand = rng.randint(1, min(value, max_operand))
                new, op = value - operand, "-"
            else:
                operand = rng.randint(1, max_operand)
                new, op = value + operand, "+"
            steps.append(f"{value}{op}{operand}={new}")
            expr += f"{op}{operand}"
            value = new
        solution = "\n".join(steps + [f"Answer: {value}"])
        return expr, {"prompt": chat_prompt(f"Compute {expr}."), "answer": str(value), "solution": solution}

    return sample


TASK = sampled_task(
    NAME, _sample, "chained integer + and -, one intermediate result per line (e.g. Compute 37+48-19.)",
    max_difficulty=len(LEVELS),
)

"""Long-horizon chains: `Start at 37, then: +5, -3, *2, ... Give the final value.`, one dependent step per line.

Every operation acts on the previous result, so one wrong intermediate step makes the final answer wrong:
the reward (exact final value) is sparse while the worked solution is long (8-12 dependent steps, each line
`a op b = c` written compactly as `37+5=42`, about 70-130 tokens with the char-level tokenizer). This is where
per-token credit has the most to assign.

Difficulty sets the number of steps, the operand size and the operations:
1. 8 steps of + and - with operands 1-9 (start 10-50)
2. 10 steps of +, - and *2 (while the value is <= 50), operands 1-20
3. 12 steps of +, -, *2 and *3 (while the value is <= 99), operands 1-50
Values never go negative. The solution writes `a op b = c` per line (no spaces, as the `arithmetic` task does),
then `Answer: c`. Until 2026-12 a line read `Step k: a op b = c` (150-290 tokens): the compact form halves
every rollout, SFT row and teacher pass, which is what lets the long-horizon benchmark run on two CPU cores
(benchmarks/RESULTS.md), and keeps the property that matters: every step depends on the one before.
"""

from __future__ import annotations

import random

from .base import Row, chat_prompt, sampled_task

NAME = "chain"
# difficulty -> (steps, largest operand, [(multiplier, apply while value <= bound)])
LEVELS = {1: (8, 9, []), 2: (10, 20, [(2, 50)]), 3: (12, 50, [(2, 99), (3, 99)])}
# Worked solutions run to ~85 characters at difficulty 1 (the default), ~120 at 2 and ~160 at 3: raise
# max_completion_length / max_new_tokens for the higher difficulties.
COMPLETION_TOKENS = 96


def _sample(difficulty: int):
    num_steps, max_operand, multipliers = LEVELS[difficulty]

    def sample(rng: random.Random) -> tuple[str, Row]:
        value = rng.randint(10, 50)
        start, ops, lines = value, [], []
        for _ in range(num_steps):
            usable = [m for m, bound in multipliers if value <= bound]
            if usable and rng.random() < 0.25:
                operand, op = rng.choice(usable), "*"
                new = value * operand
            elif value >= 1 and rng.random() < 0.5:
                operand, op = rng.randint(1, min(value, max_operand)), "-"
                new = value - operand
            else:
                operand, op = rng.randint(1, max_operand), "+"
                new = value + operand
            ops.append(f"{op}{operand}")
            lines.append(f"{value}{op}{operand}={new}")
            value = new
        key = f"{start}:{','.join(ops)}"
        question = f"Start at {start}, then: {', '.join(ops)}. Give the final value."
        solution = "\n".join(lines + [f"Answer: {value}"])
        return key, {"prompt": chat_prompt(question), "answer": str(value), "solution": solution}

    return sample


TASK = sampled_task(
    NAME, _sample,
    "long-horizon chains of 8-12 dependent +, -, * steps written out one per line "
    "(e.g. Start at 37, then: +5, -3, ... Give the final value.)",
    max_difficulty=len(LEVELS), completion_tokens=COMPLETION_TOKENS,
)

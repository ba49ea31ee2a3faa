"""Countdown: reach a target with each given number used exactly once and `+ - *`.

The reference solution folds the numbers left to right, one operation per
line, and ends with the whole expression (`Answer: (3+5)*7-2`). Many
problems have several solutions, so the reward does not compare strings: it
parses the expression safely, checks it uses exactly the given numbers and
evaluates it to the target. Difficulty sets how many numbers (steps) and how
large they are.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from ..teacher.prompts import prompt_text
from .base import Row, chat_prompt, extract_answer, sampled_task

NAME = "countdown"
# difficulty -> (how many numbers, largest number)
LEVELS = {1: (3, 12), 2: (4, 12), 3: (5, 15)}
MAX_TARGET = 999
_PROMPT_RE = re.compile(r"Make (\d+) from ([\d, ]+)")
_EXPR_CHARS = re.compile(r"[\d+\-*/() ]+")


def _sample(difficulty: int):
    count, largest = LEVELS[difficulty]

    def sample(rng: random.Random) -> tuple[str, Row]:
        while True:
            numbers = [rng.randint(1, largest) for _ in range(count)]
            value, expr, additive, steps = numbers[0], str(numbers[0]), False, []
            for n in numbers[1:]:
                ops = ["+"] + (["-"] if value - n >= 1 else []) + (["*"] if value * n <= MAX_TARGET else [])
                op = rng.choice(ops)
                new = value + n if op == "+" else value - n if op == "-" else value * n
                steps.append(f"{value}{op}{n}={new}")
                if op == "*":
                    expr, additive = (f"({expr})*{n}" if additive else f"{expr}*{n}"), False
                else:
                    expr, additive = f"{expr}{op}{n}", True
                value = new
            if 1 <= value <= MAX_TARGET:
                break
        listed = ",".join(map(str, sorted(numbers)))
        row = {
            "prompt": chat_prompt(f"Make {value} from {listed} (each once, + - *)."),
            "answer": expr,
            "solution": "\n".join(steps + [f"Answer: {expr}"]),
            "numbers": sorted(numbers),
            "target": value,
        }
        return f"{listed}->{value}", row

    return sample


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an arithmetic AST of non-negative integer literals and + - * /; anything else raises."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right  # ZeroDivisionError is caught by the caller
    raise ValueError("not a plain arithmetic expression")


def check_expression(expression: str | None, numbers: list[int], target: int) -> bool:
    """True iff `expression` uses each of `numbers` exactly once (+ - * / and brackets) and equals `target`."""
    if not expression:
        return False
    expression = expression.strip()
    # Tolerate a restated result (`3*5+7=22`), but only the right one.
    if "=" in expression:
        expression, _, stated = expression.rpartition("=")
        if stated.strip() != str(target):
            return False
    if len(expression) > 200 or not _EXPR_CHARS.fullmatch(expression):
        return False
    used: list[int] = []
    try:
        value = _evaluate(ast.parse(expression, mode="eval"), used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return False
    return Counter(used) == Counter(numbers) and value == target


def _problem(prompt: Any, numbers: Any, target: Any) -> tuple[list[int], int] | None:
    """The numbers and target of a row: from its columns when TRL passes them, else parsed from the prompt."""
    if numbers is not None and target is not None:
        return [int(n) for n in numbers], int(target)
    match = _PROMPT_RE.search(prompt_text(prompt))
    if not match:
        return None
    return [int(n) for n in match.group(2).replace(" ", "").split(",") if n], int(match.group(1))


def reward(prompts, completions, answer=None, numbers=None, target=None, **kwargs) -> list[float]:
    """1.0 iff the last `Answer:` is an expression that reaches the target with exactly the given numbers."""
    rewards = []
    for i, completion in enumerate(completions):
        problem = _problem(
            prompts[i] if prompts is not None else "",
            numbers[i] if numbers is not None else None,
            target[i] if target is not None else None,
        )
        ok = problem is not None and check_expression(extract_answer(completion), *problem)
        rewards.append(1.0 if ok else 0.0)
    return rewards


TASK = sampled_task(
    NAME, _sample, "reach a target with each given number once and + - * (e.g. Make 22 from 3,5,7)",
    max_difficulty=len(LEVELS), reward=reward,
)

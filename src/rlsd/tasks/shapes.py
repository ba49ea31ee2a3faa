"""Count coloured squares in a picture, then do arithmetic with the counts (a visual task for tiny VLMs).

The image (drawn with PIL) is a 3 x 3 grid of cells, 1 to 3 of them holding a red or blue
square; the text asks for a computation over the counts of one or two colours and a number given in
the text, so neither the image nor the text alone gives the answer. The worked solution reads the
counts first, then computes one step per line:

    Count the red squares, then add 4.      ->  red: 3 / 3+4=7 / Answer: 7

Difficulty 1: one colour + n. 2: two colours summed, + n. 3: two colours multiplied, + n.
"""

from __future__ import annotations

import random

from .base import Row, sampled_task

NAME = "shapes"
GRID = 3  # cells per side
CELL = 8  # pixels per cell: one cell per 8x8 patch of the tiny VLM's vision tower
SQUARE = 6  # side of a drawn square inside its cell
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
MAX_FILLED = 3  # squares per picture: 834 layouts x 2 colours x 5 addends, small enough to enumerate
MAX_ADDEND = 5
BACKGROUND = (255, 255, 255)
LEVELS = (1, 2, 3)


def draw(cells: list[str | None]):
    """The 24x24 RGB picture of a grid given row by row (None: empty cell)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (GRID * CELL, GRID * CELL), BACKGROUND)
    pen = ImageDraw.Draw(image)
    offset = (CELL - SQUARE) // 2
    for index, colour in enumerate(cells):
        if colour is None:
            continue
        x, y = (index % GRID) * CELL + offset, (index // GRID) * CELL + offset
        pen.rectangle([x, y, x + SQUARE - 1, y + SQUARE - 1], fill=COLOURS[colour])
    return image


def _question(difficulty: int, first: str, second: str, n: int) -> str:
    if difficulty == 1:
        return f"Count the {first} squares, then add {n}."
    if difficulty == 2:
        return f"Add the counts of {first} and {second} squares, then add {n}."
    return f"Multiply the counts of {first} and {second} squares, then add {n}."


def _solution(difficulty: int, first: str, second: str, counts: dict[str, int], n: int) -> tuple[str, int]:
    a, b = counts[first], counts[second]
    if difficulty == 1:
        return f"{first}: {a}\n{a}+{n}={a + n}\nAnswer: {a + n}", a + n
    if difficulty == 2:
        return f"{first}: {a}\n{second}: {b}\n{a}+{b}={a + b}\n{a + b}+{n}={a + b + n}\nAnswer: {a + b + n}", a + b + n
    return f"{first}: {a}\n{second}: {b}\n{a}*{b}={a * b}\n{a * b}+{n}={a * b + n}\nAnswer: {a * b + n}", a * b + n


def _sample(difficulty: int):
    def sample(rng: random.Random) -> tuple[str, Row]:
        cells: list[str | None] = [None] * (GRID * GRID)
        for index in rng.sample(range(GRID * GRID), rng.randint(1, MAX_FILLED)):
            cells[index] = rng.choice(sorted(COLOURS))
        first, second = rng.sample(sorted(COLOURS), 2)
        n = rng.randint(1, MAX_ADDEND)
        counts = {c: cells.count(c) for c in COLOURS}
        question = _question(difficulty, first, second, n)
        solution, answer = _solution(difficulty, first, second, counts, n)
        key = "".join((c or "-")[0] for c in cells) + "|" + question
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return key, {"image": cells, "prompt": prompt, "answer": str(answer), "solution": solution}

    return sample


def _draw_rows(rows: list[Row]) -> list[Row]:
    """Rows carry a PIL `image`, drawn once the problems are chosen."""
    return [{**row, "image": draw(row["image"])} for row in rows]


TASK = sampled_task(
    NAME, _sample, "count coloured squares in a 3x3 picture, then add/multiply (needs a VLM; rows carry `image`)",
    max_difficulty=len(LEVELS), finish=_draw_rows, modality="image",
)

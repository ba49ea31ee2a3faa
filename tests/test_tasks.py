"""Built-in tasks: seeded generators, disjoint splits, verifiers that accept exactly the right answers."""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlsd.tasks import TASKS, extract_answer, get_task  # noqa: E402
from rlsd.tasks.base import normalize_split, split_of  # noqa: E402
from rlsd.tasks.countdown import check_expression  # noqa: E402
from rlsd.tasks.tiny import CHARACTERS  # noqa: E402

NAMES = sorted(TASKS)
LONG_HORIZON = {"chain"}  # long worked solutions, and a problem space too large to exhaust


def call_reward(task, rows, completions, columns=True):
    """Call a task reward the way TRL does: prompts, completions and every other column as keywords."""
    extra = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"} if columns else {"answer": [r["answer"] for r in rows]}
    return task.reward(prompts=[r["prompt"] for r in rows], completions=completions, **extra)


def question(row) -> str:
    content = row["prompt"][0]["content"]
    if isinstance(content, list):  # image tasks: TRL content blocks, the image first
        assert content[0] == {"type": "image"} and row["image"].size == (24, 24)
        return "".join(block["text"] for block in content if block["type"] == "text")
    return content


def problem(row) -> str:
    """What makes a problem distinct: its question, and its picture for image tasks."""
    return question(row) + (row["image"].tobytes().hex() if "image" in row else "")


def test_registry():
    assert {"arithmetic", "linear", "countdown", "shapes"} <= set(TASKS)
    for name in NAMES:
        task = get_task(name)
        assert task.name == name and task.description and callable(task.make_rows) and callable(task.reward)
    assert get_task(TASKS["linear"]) is TASKS["linear"]
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


@pytest.mark.parametrize("name", NAMES)
def test_rows_have_the_documented_shape(name):
    task = get_task(name)
    for difficulty in range(1, task.max_difficulty + 1):
        rows = task.make_rows(200, seed=3, difficulty=difficulty, split="train")
        assert len(rows) == 200
        for row in rows:
            assert len(row["prompt"]) == 1 and row["prompt"][0]["role"] == "user" and question(row)
            assert row["solution"].splitlines()[-1] == f"Answer: {row['answer']}"
            if name in LONG_HORIZON:
                assert len(question(row)) <= 100 and len(row["solution"].splitlines()) >= 9 and len(row["solution"]) >= 55
            else:
                assert len(question(row)) <= 60 and len(row["solution"]) <= 80
            assert set(question(row) + row["solution"]) <= set(CHARACTERS)


@pytest.mark.parametrize("name", NAMES)
def test_generators_are_deterministic_per_seed(name):
    task = get_task(name)
    for split in ("train", "test"):
        assert task.make_rows(50, seed=7, split=split) == task.make_rows(50, seed=7, split=split)
        assert task.make_rows(50, seed=7, split=split) != task.make_rows(50, seed=8, split=split)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_held_out_never_overlap(name):
    task = get_task(name)
    train = {problem(r) for seed in (0, 1) for r in task.make_rows(1500, seed=seed, split="train")}
    held_out = {problem(r) for seed in (0, 1) for r in task.make_rows(400, seed=seed, split="test")}
    assert len(train) > 1500 and len(held_out) > 400  # different seeds draw different problems...
    assert not train & held_out  # ...but never cross the split
    # Rows within one call are distinct problems.
    rows = task.make_rows(500, seed=2, split="test")
    assert len({problem(r) for r in rows}) == 500


def test_split_is_a_pure_function_of_the_problem():
    assert split_of("arithmetic", "1+2-3") == split_of("arithmetic", "1+2-3")
    shares = [split_of("arithmetic", str(i)) == "test" for i in range(5000)]
    assert 0.15 < sum(shares) / len(shares) < 0.25
    assert normalize_split("held_out") == normalize_split("eval") == "test"
    with pytest.raises(ValueError):
        normalize_split("dev-ish")


@pytest.mark.parametrize("name", sorted(set(NAMES) - LONG_HORIZON))
def test_too_small_problem_space_raises_instead_of_looping(name):
    with pytest.raises(ValueError, match="distinct"):
        get_task(name).make_rows(10**6, seed=0, difficulty=1, split="test")


@pytest.mark.parametrize("name", NAMES)
def test_difficulty_changes_step_count(name):
    task = get_task(name)
    steps = []
    for difficulty in range(1, task.max_difficulty + 1):
        rows = task.make_rows(100, seed=0, difficulty=difficulty)
        steps.append(sum(len(r["solution"].splitlines()) for r in rows) / len(rows))
    assert steps == sorted(steps) and steps[0] < steps[-1]
    with pytest.raises(ValueError):
        task.make_rows(1, seed=0, difficulty=task.max_difficulty + 1)


@pytest.mark.parametrize("name", NAMES)
def test_reference_solutions_score_one_and_corrupted_answers_zero(name):
    task = get_task(name)
    rows = task.make_rows(300, seed=5, split="test")
    solutions = [r["solution"] for r in rows]
    assert call_reward(task, rows, solutions) == [1.0] * len(rows)
    # Conversational completions, as TRL passes them for chat prompts.
    messages = [[{"role": "assistant", "content": s}] for s in solutions]
    assert call_reward(task, rows, messages) == [1.0] * len(rows)
    # A wrong final answer, and no final answer at all.
    corrupted = [s.rsplit("Answer: ", 1)[0] + f"Answer: {corrupt(r['answer'])}" for s, r in zip(solutions, rows)]
    assert call_reward(task, rows, corrupted) == [0.0] * len(rows)
    truncated = ["\n".join(s.splitlines()[:-1]) for s in solutions]
    assert call_reward(task, rows, truncated) == [0.0] * len(rows)


def corrupt(answer: str) -> str:
    if re.fullmatch(r"-?\d+", answer):
        return str(int(answer) + 1)
    return f"{answer}+1"  # countdown: an expression that overshoots (and uses an extra number)


def test_last_answer_counts():
    assert extract_answer("Answer: 3\nno wait\nAnswer: 4.") == "4"
    assert extract_answer([{"role": "assistant", "content": "x=2\nAnswer:  -7 "}]) == "-7"
    assert extract_answer("the answer is 4") is None
    task = get_task("arithmetic")
    rows = [{"prompt": [{"role": "user", "content": "Compute 1+2."}], "answer": "3"}]
    assert call_reward(task, rows, ["Answer: 03"]) == [1.0]
    assert call_reward(task, rows, ["Answer: 3\nAnswer: 5"]) == [0.0]


def test_countdown_verifies_the_expression_not_the_string():
    nums, target = [3, 5, 7], 22
    assert check_expression("5*3+7", nums, target)
    assert check_expression("7+3*5", nums, target)  # another valid solution
    assert check_expression("(7+3*5)", nums, target)
    assert check_expression("7+3*5=22", nums, target)
    assert not check_expression("7+3*5=23", nums, target)
    assert not check_expression("5*3+7+0", nums, target)  # extra number
    assert not check_expression("5*5-3", nums, target)  # a number twice, one missing
    assert not check_expression("15+7", nums, target)  # numbers not from the list
    assert not check_expression("5*3-7", nums, target)  # wrong value
    assert not check_expression("__import__('os')", nums, target)
    assert not check_expression("5**3", nums, target)
    assert not check_expression("7/(5-5)*3", [3, 5, 5, 7], 22)
    assert check_expression("(7*3+1)/1", [1, 1, 3, 7], 22)
    # Without the numbers/target columns the reward reads them from the prompt.
    task = get_task("countdown")
    rows = task.make_rows(20, seed=1)
    assert call_reward(task, rows, [r["solution"] for r in rows], columns=False) == [1.0] * 20


def test_rows_load_into_a_dataset():
    from datasets import Dataset

    for name in NAMES:
        rows = get_task(name).make_rows(10, seed=0)
        ds = Dataset.from_list(rows)
        assert _without_none(ds[0]["prompt"]) == rows[0]["prompt"] and ds[0]["answer"] == rows[0]["answer"]
        if "image" in rows[0]:  # stored as a datasets Image feature, decoded back to the same picture
            assert ds[0]["image"].convert("RGB").tobytes() == rows[0]["image"].tobytes()


def _without_none(value):
    """Arrow gives every content block all keys (`text: None` on image blocks); TRL ignores them."""
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _run_chain(start: int, ops: list[str], corrupt_step: int | None = None) -> int:
    value = start
    for step, op in enumerate(ops, start=1):
        value = eval(f"{value}{op}")  # noqa: S307 - our own generated "+5", "-3", "*2"
        if step == corrupt_step:
            value += 1
    return value


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_chain_is_long_horizon_and_every_step_matters(difficulty):
    from rlsd.tasks.tiny import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    task = get_task("chain")
    rows = task.make_rows(200, seed=1, difficulty=difficulty)
    for row in rows:
        start, ops = re.fullmatch(r"Start at (\d+), then: (.*)\. Give the final value\.", question(row)).groups()
        ops = ops.split(", ")
        steps = row["solution"].splitlines()[:-1]
        assert len(ops) == len(steps) >= 8
        assert len(tokenizer(row["solution"])["input_ids"]) >= 55
        previous = int(start)
        for op, line in zip(ops, steps):
            a, sign, b, result = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)", line).groups()
            assert int(a) == previous and f"{sign}{b}" == op, "each step starts from the previous result"
            previous = int(result)
        assert str(previous) == row["answer"] == str(_run_chain(int(start), ops))
        assert all(_run_chain(int(start), ops, k) != previous for k in range(1, len(ops) + 1)), \
            "one wrong intermediate value makes the final answer wrong"
    assert task.completion_tokens >= max(len(tokenizer(r["solution"])["input_ids"]) for r in task.make_rows(300, 0))

"""Shop: an agent task. Prices live only behind a tool; the agent looks them up, multiplies with a calculator, answers.

    user:       Cost of 37 pen?
    assistant:  <call>price{"item":"pen"}</call>
    tool:       13
    assistant:  <call>calc{"expr":"37*13"}</call>
    tool:       481
    assistant:  Answer: 481

The prompt never states a price: the `price` tool holds a fixed, seeded table of 40 items (facts the prompt
lacks), and `calc` evaluates integer arithmetic. Difficulty is the number of items (1-3), so an episode has
2-4 tool calls. Rows carry `answer` and a worked `solution` that shows each lookup and the calculation
(`price pen=13` / `37*13=481` / `Answer: 481`); the RLSD teacher reads it, the agent never does.
`transcript(row)` gives the same episode as chat messages with the tool calls, the warm start's SFT data.
"""

from __future__ import annotations

import ast
import operator
import random
import re

from .base import Row, chat_prompt, sampled_task

NAME = "shop"
ITEMS = ("pen", "cup", "hat", "box", "map", "key", "bag", "jar", "mug", "fan", "lamp", "rope", "sock", "book",
         "bowl", "coat", "drum", "fork", "gum", "ink", "kite", "lock", "nail", "pot", "rug", "saw", "tape", "vase",
         "wax", "yarn", "bell", "comb", "dice", "egg", "flag", "glue", "horn", "iron", "jug", "leaf")
PRICES = {item: random.Random(f"{NAME}|price|{item}").randint(2, 49) for item in ITEMS}
MAX_COUNT = 99
_QUESTION_RE = re.compile(r"(\d+) ([a-z]+)")


def price(item: str) -> str:
    """The unit price of an item in the shop.

    Args:
        item: the item's name, e.g. pen
    """
    key = item.strip().lower()
    if key not in PRICES:
        raise ValueError(f"no item {item!r} in the shop")
    return str(PRICES[key])


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def calc(expr: str) -> str:
    """Evaluate integer arithmetic with + - * and parentheses.

    Args:
        expr: the expression, e.g. 37*13+2*7
    """

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(f"calc only takes integers, + - * and parentheses: {expr!r}")

    if len(expr) > 64:
        raise ValueError("calc: expression longer than 64 characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"calc: not an expression: {expr!r}") from None
    return str(value(tree.body))


TOOLS = (price, calc)


def _sample(difficulty: int):
    def sample(rng: random.Random) -> tuple[str, Row]:
        items = rng.sample(ITEMS, difficulty)
        counts = [rng.randint(2, MAX_COUNT) for _ in items]
        question = "Cost of " + " and ".join(f"{c} {i}" for c, i in zip(counts, items)) + "?"
        expr = "+".join(f"{c}*{PRICES[i]}" for c, i in zip(counts, items))
        total = sum(c * PRICES[i] for c, i in zip(counts, items))
        # The tool calls and what they returned, compactly (a tiny model reads every character).
        solution = "\n".join([*(f"price {i}={PRICES[i]}" for i in items), f"{expr}={total}", f"Answer: {total}"])
        return question, {"prompt": chat_prompt(question), "answer": str(total), "solution": solution}

    return sample


def _call(name: str, **arguments) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def transcript(row: Row) -> list[dict]:
    """The worked episode after the prompt: one tool call per assistant turn, each followed by its result."""
    question = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else row["prompt"]
    pairs = [(int(c), i) for c, i in _QUESTION_RE.findall(question)]
    messages: list[dict] = []
    for _, item in pairs:
        messages += [_call("price", item=item), {"role": "tool", "name": "price", "content": price(item)}]
    expr = "+".join(f"{c}*{PRICES[i]}" for c, i in pairs)
    messages += [_call("calc", expr=expr), {"role": "tool", "name": "calc", "content": calc(expr)},
                 {"role": "assistant", "content": f"Answer: {calc(expr)}"}]
    return messages


TASK = sampled_task(
    NAME, _sample,
    "agent task: look up prices with a `price` tool, multiply with `calc`, answer (e.g. Cost of 37 pen?)",
    max_difficulty=3,
    completion_tokens=160,  # three turns and two tool results, a token per character
    tools=TOOLS,
    transcript=transcript,
)

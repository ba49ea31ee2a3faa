"""Example agent tools for a run config: `tools: ["examples/agents/my_tools.py:calculator", ...]`.

A tool is a plain function with type hints and a docstring whose `Args:` section describes every argument:
TRL turns that into the schema the model sees. Raising is fine: the agent gets the error as the tool's output
and only that rollout is affected.
"""

import ast
import operator

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_FACTS = {"km_per_mile": "1.609", "days_per_week": "7", "grams_per_pound": "453.6"}


def calculator(expr: str) -> str:
    """Evaluate integer arithmetic with + - * // and parentheses.

    Args:
        expr: the expression, e.g. 12*(3+4)
    """

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"unsupported expression: {expr!r}")

    return str(value(ast.parse(expr, mode="eval").body))


def lookup(key: str) -> str:
    """Look up a fact the prompt does not state.

    Args:
        key: one of km_per_mile, days_per_week, grams_per_pound
    """
    if key not in _FACTS:
        raise KeyError(f"unknown key {key!r}; known: {', '.join(sorted(_FACTS))}")
    return _FACTS[key]

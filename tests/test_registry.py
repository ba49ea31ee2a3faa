"""Algorithms as plug-ins: the registry, loading a user's class by path, and the trainer only dispatching."""

import ast
from pathlib import Path

import pytest

from rlsd import RLSDConfig
from rlsd.algorithms import (BUILTIN_ALGORITHMS, RLSD, Algorithm, algorithm_names, algorithm_variant, get_algorithm,
                             register_algorithm)
from rlsd.algorithms import registry

SRC = Path(__file__).resolve().parents[1] / "src" / "rlsd"


def test_builtins_are_registered_one_module_each():
    assert algorithm_names()[:7] == ("rlsd", "grpo", "opsd", "opd", "sdpo", "grpo+opsd", "rlcsd")
    modules = set()
    for cls in BUILTIN_ALGORITHMS:
        assert issubclass(cls, Algorithm) and get_algorithm(cls.name) is cls
        modules.add(cls.__module__)
    assert len(modules) == len(BUILTIN_ALGORITHMS), "one module per method"


# ---- the trainer and config dispatch; they never name a method --------------------------------------------------------
def names_compared(text: str, names: set[str]) -> list[tuple[int, str]]:
    """Comparisons (==, !=, in, not in) on an algorithm name string, or on an `.algorithm`/`.teacher_contrast` value:
    (line, what) for each."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            constants = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            found += [(node.lineno, c.value) for c in constants if isinstance(c, ast.Constant) and c.value in names]
            if isinstance(operand, ast.Attribute) and operand.attr in ("algorithm", "teacher_contrast"):
                found.append((node.lineno, f".{operand.attr}"))
    return found


def test_no_module_outside_algorithms_compares_an_algorithm_name():
    names = {n for n in algorithm_names() if not registry.is_spec(n)} | {"rlcsd"}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "algorithms" in path.relative_to(SRC).parts:
            continue
        offenders += [f"{path.relative_to(SRC)}:{line}: {what}" for line, what in names_compared(path.read_text(), names)]
    assert not offenders, "compare on algorithm names only inside rlsd/algorithms/:\n" + "\n".join(offenders)


def test_the_scan_finds_each_kind_of_comparison():
    sample = 'if args.algorithm == x: pass\nif name in ("opsd", "opd"): pass\nif "sdpo" != y: pass\nz = "opsd"\n'
    assert names_compared(sample, {"opsd", "sdpo"}) == [(1, ".algorithm"), (2, "opsd"), (3, "sdpo")]


# ---- registering and loading ---------------------------------------------------------------------------------------
class _Negative(RLSD):
    name = "test_registry_negative"


def test_register_by_name_and_a_name_clash_is_one_clear_error():
    register_algorithm(_Negative)
    assert get_algorithm("test_registry_negative") is _Negative
    assert RLSDConfig(output_dir="/tmp/unused", algorithm="test_registry_negative").algorithm == \
        "test_registry_negative"

    class Clash(RLSD):
        name = "rlsd"

    with pytest.raises(ValueError, match=r"^register_algorithm: the name 'rlsd' is already taken by "
                                         r"rlsd\.algorithms\.rlsd\.RLSD; rename Clash\.name or pass replace=True$"):
        register_algorithm(Clash)
    assert get_algorithm("rlsd") is RLSD


def test_a_class_that_changes_nothing_or_is_no_algorithm_is_refused():
    class Nothing(Algorithm):
        name = "nothing"

    with pytest.raises(ValueError, match="Nothing defines neither token_advantages\\(\\) nor loss\\(\\)"):
        register_algorithm(Nothing)
    with pytest.raises(ValueError, match="dict is not a subclass of rlsd.algorithms.Algorithm"):
        register_algorithm(dict)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"^RLSDConfig\.algorithm: unknown algorithm 'rlds'; choose one of rlsd, grpo"):
        RLSDConfig(output_dir="/tmp/unused", algorithm="rlds")
    with pytest.raises(ValueError, match=r"'grpo\+contrast': \+contrast needs one of rlsd, opsd"):
        algorithm_variant("grpo+contrast")

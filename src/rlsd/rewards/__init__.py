"""Verifiable rewards with TRL's signature: `fn(prompts, completions, **columns) -> list[float | None]`.

Built-ins by name (`get_reward("math")`), user functions by reference
(`load_reward("my_rewards.py:score")`), several at once with weights
(`get_rewards(["math", "format:0.1"])`). Every reward handed out here is a
`RobustReward`: a sample whose reward raises or times out scores 0.0 and is
counted; `pop_reward_errors()` returns that count for the `rewards/errors` metric.

Spec syntax accepted by `get_rewards` (one item per reward):
  "math"                         built-in, weight 1
  "format:0.1"                   built-in, weight 0.1
  "my_pkg.rewards:score"         function in an importable module
  "path/to/file.py:score:0.5"    function in a file, weight 0.5
  {"name": "numeric", "rel_tol": 0.01, "weight": 2}   built-in with options
  {"name": "file.py:score", "timeout": 5, "k": 3}     custom: `timeout` per sample, other keys bound as kwargs
  (callable, 0.5) or a bare callable                   already a function
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

from .custom import WeightedSum, combine_rewards, load_reward
from .importing import RewardError, import_reward
from .robust import RobustReward, RewardFunc, pop_reward_errors, robust
from .sandbox import CodeReward, SandboxError, SandboxLimits, SandboxResult, run_python_tests
from .verifiers import ChoiceReward, ExactReward, FormatReward, MathReward, NumericReward, RegexReward

REWARDS: dict[str, Callable[..., RewardFunc]] = {
    "math": MathReward,
    "numeric": NumericReward,
    "exact": ExactReward,
    "choice": ChoiceReward,
    "regex": RegexReward,
    "format": FormatReward,
    "code": CodeReward,
}


def get_reward(name: str, **options: Any) -> RobustReward:
    """A built-in reward by name with its options, or a custom `module:function` / `file.py:function`."""
    if ":" in name:
        return load_reward(name, **options)
    factory = REWARDS.get(name)
    if factory is None:
        raise RewardError(
            f"unknown reward {name!r}; built-ins: {', '.join(REWARDS)}; "
            "custom rewards are given as 'package.module:function' or 'path/to/file.py:function'"
        )
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "limits")]
    if factory is CodeReward:
        accepted += list(SandboxLimits.__dataclass_fields__)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        bad, known = ", ".join(map(repr, unknown)), ", ".join(accepted) or "none"
        raise RewardError(f"reward {name!r} has no option {bad}; options: {known}")
    try:
        fn = factory(**options)
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward {name!r}: {exc}") from exc
    return robust(fn, name=name)


def _parse_item(item: Any) -> tuple[RobustReward, float]:
    """One spec item -> (reward, weight); see the module docstring for the forms."""
    if isinstance(item, RobustReward) or (callable(item) and not isinstance(item, (str, Mapping))):
        return robust(item), 1.0
    if isinstance(item, tuple) and len(item) == 2 and callable(item[0]):
        return robust(item[0]), float(item[1])
    if isinstance(item, Mapping):
        options = dict(item)
        name = options.pop("name", None) or options.pop("function", None)
        if not isinstance(name, str):
            raise RewardError(f"reward spec {dict(item)!r} needs a 'name' (a built-in or 'module:function')")
        weight = float(options.pop("weight", 1.0))
        return get_reward(name, **options), weight
    if isinstance(item, str):
        spec, weight = item.strip(), 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head and _is_number(tail):
            spec, weight = head, float(tail)
        return get_reward(spec), weight
    raise RewardError(f"cannot read reward spec {item!r}: use a name, 'module:function[:weight]', a dict or a callable")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def get_rewards(specs: Iterable[Any] | str) -> tuple[list[RobustReward], list[float]]:
    """Parse several reward specs into TRL's `reward_funcs` and `reward_weights` (names made unique)."""
    if isinstance(specs, (str, Mapping)) or callable(specs):
        specs = [specs]
    funcs: list[RobustReward] = []
    weights: list[float] = []
    seen: dict[str, int] = {}
    for item in specs:
        fn, weight = _parse_item(item)
        seen[fn.__name__] = seen.get(fn.__name__, 0) + 1
        if seen[fn.__name__] > 1:  # TRL names metrics after __name__: keep them apart
            fn = robust(fn, name=f"{fn.__name__}_{seen[fn.__name__]}")
        funcs.append(fn)
        weights.append(weight)
    if not funcs:
        raise RewardError("no reward given")
    return funcs, weights


__all__ = [
    "REWARDS",
    "ChoiceReward",
    "CodeReward",
    "ExactReward",
    "FormatReward",
    "MathReward",
    "NumericReward",
    "RegexReward",
    "RewardError",
    "RewardFunc",
    "RobustReward",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "WeightedSum",
    "combine_rewards",
    "get_reward",
    "get_rewards",
    "import_reward",
    "load_reward",
    "pop_reward_errors",
    "robust",
    "run_python_tests",
]

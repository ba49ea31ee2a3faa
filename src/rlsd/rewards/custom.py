"""User reward functions: `package.module:function` or `path/to/file.py:function`, and weighted sums.

Users know their domain's checker better than we do; this module only finds
their function, wraps it so that it cannot crash training, and says clearly
what is wrong when it cannot be found.
"""

from __future__ import annotations

from typing import Any, Sequence

from .importing import RewardError, import_reward
from .robust import RobustReward, RewardFunc, robust

__all__ = ["RewardError", "WeightedSum", "combine_rewards", "import_reward", "load_reward"]


def load_reward(spec: str, *, name: str | None = None, timeout: float | None = None, **options: Any) -> RobustReward:
    """A user reward from `module:function` or `file.py:function`, wrapped by `RobustReward`.

    `options` are bound as keyword arguments. `timeout` (seconds per sample)
    is enforced by abandoning a worker thread; see `RobustReward`.
    """
    fn = import_reward(spec)
    return robust(fn, name=name or getattr(fn, "__name__", None), timeout=timeout, spec=spec, bound=options)


class WeightedSum:
    """Sum of `weight * reward` over several rewards; None where every part is None."""

    def __init__(self, parts: Sequence[tuple[RewardFunc, float]], name: str = "combined"):
        self.parts = [(robust(fn), float(weight)) for fn, weight in parts]
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        total: list[float | None] = [None] * len(completions)
        for fn, weight in self.parts:
            for i, value in enumerate(fn(prompts=prompts, completions=completions, **kwargs)):
                if value is not None:
                    total[i] = (total[i] or 0.0) + weight * value
        return total


def combine_rewards(parts: Sequence[tuple[RewardFunc, float]], name: str = "combined") -> RobustReward:
    """One reward = the weighted sum of several (each part is itself made robust).

    TRL can also take several `reward_funcs` with `reward_weights` and log
    each separately; prefer `get_rewards` for that.
    """
    if not parts:
        raise RewardError("combine_rewards needs at least one (reward, weight) pair")
    return robust(WeightedSum(parts, name), name=name)

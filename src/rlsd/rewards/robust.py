"""Make any reward function safe to call from the training loop.

One malformed completion, one buggy user function or one hung verifier must
not kill a run that has been training for hours. `RobustReward` turns each
failing *sample* into a 0.0 reward, counts it, and logs it (rate-limited), so
the trainer can chart `rewards/errors` instead of crashing.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
from typing import Any, Callable, Sequence

from .importing import import_reward

logger = logging.getLogger("rlsd.rewards")

RewardFunc = Callable[..., list]

_LOCK = threading.Lock()
_PENDING_ERRORS = 0  # errors since the last `pop_reward_errors()`, all rewards together
_LOG_FIRST = 5  # log the first few errors of each reward in full ...
_LOG_EVERY_S = 60.0  # ... then at most one line per reward per minute
_log_state: dict[str, list[float]] = {}  # name -> [errors seen, errors at last log, time of last log]


def pop_reward_errors() -> int:
    """Errors counted by every wrapped reward since the last call; resets the count (log it as `rewards/errors`)."""
    global _PENDING_ERRORS
    with _LOCK:
        count, _PENDING_ERRORS = _PENDING_ERRORS, 0
    return count


def _record_error(name: str, exc: BaseException | str) -> None:
    """Count one failed sample and log it, at most a few lines per minute per reward."""
    global _PENDING_ERRORS
    now = time.monotonic()
    with _LOCK:
        _PENDING_ERRORS += 1
        state = _log_state.setdefault(name, [0, 0, -math.inf])
        state[0] += 1
        seen, logged_at, last = state
        should_log = seen <= _LOG_FIRST or now - last >= _LOG_EVERY_S
        if should_log:
            state[1], state[2] = seen, now
    if should_log:
        what = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        suppressed = int(seen - logged_at - 1) if seen > _LOG_FIRST else 0
        more = f" ({suppressed} similar errors not shown)" if suppressed > 0 else ""
        logger.warning("reward %r failed on one sample, scored 0.0: %s%s", name, str(what)[:500], more)


def _per_sample(value: Any, n: int) -> bool:
    """Dataset columns arrive as one list entry per sample; everything else is passed through."""
    return isinstance(value, (list, tuple)) and len(value) == n


class RobustReward:
    """A reward that never raises: a failing or timed-out sample scores 0.0 and is counted.

    The wrapped function is first called on the whole batch (fast path). If
    that raises, or returns the wrong number of values, it is called again one
    sample at a time so that only the guilty samples get 0.0. With `timeout`
    set (seconds), every sample is evaluated on its own in a daemon thread and
    abandoned after `timeout` (Python cannot kill a thread: a hung function
    keeps running in the background, so prefer rewards that time out
    themselves, as the built-ins do).
    """

    def __init__(
        self,
        fn: RewardFunc,
        name: str | None = None,
        timeout: float | None = None,
        spec: str | None = None,
        bound: dict | None = None,
    ):
        self.fn = functools.partial(fn, **bound) if bound else fn
        self.__name__ = name or getattr(fn, "__name__", type(fn).__name__)
        self.timeout = timeout
        self.spec = spec  # "module:function" for custom rewards: lets the wrapper be pickled by reference
        self.bound = dict(bound or {})  # keyword options bound to a custom function
        self.error_count = 0
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self) -> str:
        return f"RobustReward({self.__name__!r})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.spec is not None:
            state["fn"] = None  # re-imported on unpickling; functions from files cannot be pickled by value
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.fn is None and self.spec is not None:
            fn = import_reward(self.spec)
            self.fn = functools.partial(fn, **self.bound) if self.bound else fn

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        n = len(completions)
        prompts = list(prompts) if prompts is not None else [None] * n
        if self.timeout is None:
            try:
                return self._clean(self._call(prompts, completions, kwargs), n)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - find the guilty samples below
                logger.debug("reward %r failed on the batch (%s); retrying sample by sample", self.__name__, exc)
        return [self._one(prompts, completions, kwargs, i, n) for i in range(n)]

    def _one(self, prompts: list, completions: Sequence[Any], kwargs: dict, i: int, n: int) -> float | None:
        sub = {k: ([v[i]] if _per_sample(v, n) else v) for k, v in kwargs.items()}
        args = ([prompts[i]], [completions[i]], sub)
        try:
            return self._clean(self._call(*args) if self.timeout is None else self._call_timed(*args), 1)[0]
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the whole point: never raise (Ctrl-C still does)
            return self._fail(exc)

    def _fail(self, exc: BaseException | str) -> float:
        self.error_count += 1
        _record_error(self.__name__, exc)
        return 0.0

    def _call(self, prompts: list, completions: Sequence[Any], kwargs: dict) -> Any:
        out = self.fn(prompts=prompts, completions=completions, **kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out

    def _call_timed(self, prompts: list, completions: Sequence[Any], kwargs: dict) -> Any:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["out"] = self._call(prompts, completions, kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["exc"] = exc

        worker = threading.Thread(target=target, name=f"reward-{self.__name__}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise TimeoutError(f"no result after {self.timeout:g}s")
        if "exc" in box:
            raise box["exc"]
        return box["out"]

    def _clean(self, out: Any, n: int) -> list[float | None]:
        """Check the shape and turn every value into a float or None (None = 'does not apply', as in TRL)."""
        if not isinstance(out, (list, tuple)) and hasattr(out, "tolist"):
            out = out.tolist()
        if not isinstance(out, (list, tuple)) or len(out) != n:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise ValueError(f"expected a list of {n} rewards, got {got}")
        clean: list[float | None] = []
        for value in out:
            if value is None:
                clean.append(None)
                continue
            if isinstance(value, BaseException):  # a reward may flag one sample's error without failing the batch
                clean.append(self._fail(value))
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                clean.append(self._fail(f"reward is not a number: {value!r:.80}"))
                continue
            clean.append(value if math.isfinite(value) else self._fail(f"reward is {value}"))
        return clean


async def _await(awaitable: Any) -> Any:
    return await awaitable


def robust(
    fn: RewardFunc,
    name: str | None = None,
    timeout: float | None = None,
    spec: str | None = None,
    bound: dict | None = None,
) -> RobustReward:
    """Wrap `fn` (idempotent: an already wrapped reward is returned as is unless a new name/timeout is given)."""
    if isinstance(fn, RobustReward):
        if name in (None, fn.__name__) and timeout in (None, fn.timeout):
            return fn
        renamed = RobustReward(fn.fn, name=name or fn.__name__, timeout=timeout or fn.timeout, spec=fn.spec)
        renamed.bound = dict(fn.bound)  # fn.fn already has them bound
        return renamed
    return RobustReward(fn, name=name or getattr(fn, "__name__", None), timeout=timeout, spec=spec, bound=bound)

"""Find a user's function by `package.module:function` or `path/to/file.py:function`.

Rewards, tools and environments are named this way, and plug-in algorithms (`module:Class`, through
`load_user_module`); a file is imported once per resolved path. Wrapping the
function (`robust.py`) and combining rewards (`custom.py`) build on this; it imports nothing of theirs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable


class RewardError(ValueError):
    """A reward cannot be found or built (bad name, file, function or option)."""


def import_reward(spec: str, what: str = "custom reward") -> Callable[..., Any]:
    """The function named by `module:function` or `file.py:function` (not wrapped).

    `what` names the config field in errors; tools and environments are loaded the same way.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise RewardError(f"{what} {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    module = load_user_module(target, f"{what} {spec!r}", RewardError)
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        defined = ", ".join(public) or "nothing callable"
        raise RewardError(f"{what} {spec!r}: {target} has no function {attr!r} (it defines: {defined})")
    if not callable(fn):
        raise RewardError(f"{what} {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def load_user_module(target: str, where: str, error: type[Exception] = RewardError) -> ModuleType:
    """The module `package.module`, or the file `path/to/file.py` imported once per resolved path under a stable
    private name (registered in `sys.modules`: dataclasses and pickling look a class's module up there).

    Rewards, tools, environments and plug-in algorithms (`rlsd.algorithms.registry`) are all found this way;
    every failure is one `error` starting with `where`.
    """
    if not (target.endswith(".py") or "/" in target or "\\" in target):
        try:
            return importlib.import_module(target)
        except ImportError as exc:
            raise error(f"{where}: cannot import module {target!r}: {exc}") from None
    path = Path(target).expanduser()
    if not path.is_file():
        raise error(f"{where}: file {str(path)!r} does not exist")
    resolved = path.resolve()
    name = f"rlsd_user_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise error(f"{where}: cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise error(f"{where}: importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from None
    return module

"""Algorithms by name, like verl's advantage-estimator and policy-loss registries.

- `register_algorithm(cls)` (also a class decorator) adds a method under `cls.name`; a name already taken by
  another class is refused unless `replace=True`.
- `get_algorithm(spec)` returns the class for a registered name, or imports a user's class from
  `path/to/file.py:ClassName` or `package.module:ClassName` (registering it under its `name`, or under the
  spec itself when it has none). So `algorithm: my_method.py:MyMethod` works in a run config, in `RLSDConfig`,
  in `rlsd compare --algorithms` and under `accelerate launch` (every process imports the same file).
- `algorithm_variant(name)` reads the names `rlsd compare` and the benchmarks take: an algorithm or spec, or
  `X+contrast` (X with `teacher_contrast="wrong_reference"`).
Every error is one line naming the spec and what is wrong.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..rewards.importing import load_user_module
from .base import Algorithm, config_error
from .contrast import TEACHER_CONTRASTS

_REGISTRY: dict[str, type[Algorithm]] = {}
CONTRAST_SUFFIX = "+contrast"


def register_algorithm(cls: type[Algorithm] | None = None, *, name: str | None = None, replace: bool = False):
    """Register an `Algorithm` subclass under `name` (default `cls.name`). Usable as `@register_algorithm`.

    Raises ValueError if the class is not a usable algorithm or the name is taken by another class.
    """
    def add(klass: type[Algorithm]) -> type[Algorithm]:
        key = name or getattr(klass, "name", "")
        check_algorithm_class(klass, f"register_algorithm({getattr(klass, '__name__', klass)!r})")
        if not key:
            raise ValueError(f"register_algorithm: {klass.__name__} has no `name`; set the class attribute "
                             "`name = \"my_method\"` or pass name=")
        current = _REGISTRY.get(key)
        if current is not None and current is not klass and not replace and _qualname(current) != _qualname(klass):
            raise ValueError(f"register_algorithm: the name {key!r} is already taken by {_qualname(current)}; "
                             f"rename {klass.__name__}.name or pass replace=True")
        if not klass.name:
            klass.name = key
        _REGISTRY[key] = klass
        return klass

    return add if cls is None else add(cls)


def check_algorithm_class(cls: Any, where: str) -> None:
    """A usable algorithm: an `Algorithm` subclass that overrides `token_advantages` or `loss` (else it is GRPO)."""
    if not inspect.isclass(cls) or not issubclass(cls, Algorithm):
        kind = cls.__name__ if inspect.isclass(cls) else type(cls).__name__
        raise ValueError(f"{where}: {kind} is not a subclass of rlsd.algorithms.Algorithm")
    if cls.token_advantages is Algorithm.token_advantages and cls.loss is Algorithm.loss:
        raise ValueError(f"{where}: {cls.__name__} defines neither token_advantages() nor loss(); an algorithm "
                         "must say how it changes the update (see docs/new-method.md)")


def algorithm_names() -> tuple[str, ...]:
    """The registered names, built-ins first, in registration order."""
    return tuple(_REGISTRY)


def is_spec(name: str) -> bool:
    """Whether `name` is an import spec (`file.py:Class`, `module:Class`) rather than a registered name."""
    return ":" in name


def get_algorithm(spec: str) -> type[Algorithm]:
    """The algorithm class for a registered name or an import spec; ValueError naming the choices otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"RLSDConfig.algorithm: expected a name or 'file.py:Class', got {spec!r}")
    spec = spec.strip()
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if not is_spec(spec):
        raise ValueError(f"RLSDConfig.algorithm: unknown algorithm {spec!r}; choose one of "
                         f"{', '.join(_REGISTRY)}, or your own as 'path/to/file.py:ClassName' or 'module:ClassName'")
    cls = _import_class(spec)
    register_algorithm(cls, name=cls.name or spec)
    _REGISTRY.setdefault(spec, cls)  # the spec keeps resolving to the same class, in every later config
    return cls


def display_name(spec: str) -> str:
    """A short name for run directories and report labels: the class's `name` for a spec, else `spec`."""
    return get_algorithm(spec).name if is_spec(spec) else spec


def _import_class(spec: str) -> type[Algorithm]:
    where = f"algorithm {spec!r}"
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise ValueError(f"{where}: expected 'path/to/file.py:ClassName' or 'module:ClassName'")
    module = load_user_module(source, where, ValueError)
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"{where}: {source} has no {attr!r}")
    check_algorithm_class(cls, where)
    return cls


def algorithm_variant(name: str) -> tuple[str, dict]:
    """`rlsd compare` / benchmark names: an algorithm (or spec), or one with `+contrast`
    (teacher_contrast=wrong_reference). Returns (algorithm, extra RLSDConfig fields); ValueError otherwise."""
    name = name.strip()
    base, extra = name, {}
    if name.endswith(CONTRAST_SUFFIX):
        base, extra = name[: -len(CONTRAST_SUFFIX)], {"teacher_contrast": "wrong_reference"}
        try:
            cls = get_algorithm(base)
        except ValueError:
            cls = None
        if cls is None or not cls.supports_contrast:
            raise ValueError(f"{name!r}: {CONTRAST_SUFFIX} needs one of {', '.join(contrast_algorithms())}")
        return base, extra
    try:
        get_algorithm(base)
    except ValueError as err:
        if is_spec(base):
            raise
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(_REGISTRY)} "
                         f"(or X{CONTRAST_SUFFIX} for X in {', '.join(contrast_algorithms())}, "
                         "or 'file.py:Class')") from err
    return base, extra


def contrast_algorithms() -> tuple[str, ...]:
    """Registered algorithms a wrong reference can be contrasted with."""
    return tuple(name for name, cls in _REGISTRY.items() if cls.supports_contrast and not is_spec(name))


def validate_algorithm_config(args) -> None:
    """What `RLSDConfig` asks of its algorithm: the contrast only where it applies, then its own fields."""
    cls = get_algorithm(args.algorithm)
    if args.teacher_contrast not in TEACHER_CONTRASTS:
        raise config_error("teacher_contrast", f"must be one of {TEACHER_CONTRASTS}, got {args.teacher_contrast!r}")
    if args.teacher_contrast != "none" and not cls.supports_contrast:
        raise config_error("teacher_contrast", f"needs a self-teacher shown a reference (algorithm in "
                                               f"{contrast_algorithms()}), got algorithm={args.algorithm!r}")
    cls.check_config(args)


def build_algorithm(args) -> Algorithm:
    """The algorithm instance for a config."""
    return get_algorithm(args.algorithm)(args)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


__all__ = ["CONTRAST_SUFFIX", "algorithm_names", "algorithm_variant", "build_algorithm", "check_algorithm_class",
           "contrast_algorithms", "display_name", "get_algorithm", "is_spec", "register_algorithm",
           "validate_algorithm_config"]

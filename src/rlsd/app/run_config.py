"""Run configuration files (YAML): the run-level keys plus any `RLSDConfig`/`GRPOConfig` field, and `--set` overrides.

`load_run_config` turns a file and `key=value` overrides into a run dict (`training` holds the `RLSDConfig`
keyword arguments, typed); `rlsd.app.run` builds the run from it.
"""

from __future__ import annotations

import difflib
import os
import typing
from dataclasses import fields

import yaml

from ..config import RLSDConfig

# A run file holds the run-level keys below plus any RLSDConfig/GRPOConfig field, either at the top level or under
# `training:`. `--set key=value` overrides use the same names (dotted for nested run keys, e.g. `lora.r=8`).
RUN_KEYS = {
    "model": None,  # hub id or local path
    "task": None,  # built-in task name (rlsd.tasks), instead of `data`
    "task_difficulty": None,
    "task_train_size": 2000,
    "task_eval_size": 100,
    "data": None,  # {train, eval, eval_fraction, prompt_column, answer_column, solution_column, system_prompt, ...}
    "rewards": None,  # e.g. ["math", "format:0.1", "my_rewards.py:fn:0.5"]; default: the task's reward
    "tools": None,  # agent tools by import path, e.g. ["my_tools.py:calculator"]; default: the task's tools
    "environment": None,  # a TRL environment class by import path, e.g. "my_env.py:MyEnv"
    "lora": None,  # {r, lora_alpha, lora_dropout, target_modules, language_only (VLMs: text model only)}
    "eval_every": 10,  # held-out greedy accuracy every N steps (0: never)
    "eval_max_new_tokens": None,  # default: max_completion_length
    "samples_every": 10,  # write sampled completions with rewards every N steps (0: never)
    "wandb_mode": None,  # online | offline | disabled (sets WANDB_MODE) for report_to: [wandb]
    "training": None,
}


def _parse_value(text: str):
    if text.strip().lower() in ("no", "yes", "on", "off", "y", "n"):
        return text.strip()  # YAML 1.1 would make these booleans: `save_strategy=no` means "no"
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(mapping: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        if mapping.get(key) is None:
            mapping[key] = {}
        mapping = mapping[key]
        if not isinstance(mapping, dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a mapping")
    mapping[keys[-1]] = value


def config_field_names() -> set[str]:
    return {f.name for f in fields(RLSDConfig)}


def _coerce(name: str, value, field_types: dict):
    """YAML reads `1e-5` as a string and users write `true` on the command line: convert to the field's type."""
    if name not in field_types:
        return value
    ftype = field_types[name]
    options = typing.get_args(ftype) or (ftype,)
    if isinstance(value, bool) and bool not in options:
        return "yes" if value else "no"  # a YAML file's `save_strategy: no` arrives as False
    if not isinstance(value, str):
        return value
    for option in (bool, int, float):
        if option in options:
            try:
                if option is bool:
                    if value.lower() in ("true", "false", "1", "0", "yes", "no"):
                        return value.lower() in ("true", "1", "yes")
                    continue
                return option(value)
            except ValueError:
                continue
    return value


def load_run_config(path: str | None, overrides: list[str] | None = None) -> dict:
    """Read a run YAML, apply `key=value` overrides, and split it into run keys and `training` (RLSDConfig kwargs).

    Unknown keys raise one `ValueError` naming the key, the file and the closest valid names.
    """
    raw: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            try:
                raw = yaml.safe_load(handle) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level must be a mapping of keys to values")

    trainer_fields = config_field_names()

    def unknown(source: str, key: str, names) -> ValueError:
        close = difflib.get_close_matches(key, list(names), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return ValueError(f"{source}: unknown key {key!r}{hint}")

    run = {key: default for key, default in RUN_KEYS.items() if key != "training"}
    training = dict(raw.get("training") or {})
    for key, value in raw.items():
        if key == "training":
            continue
        if key in RUN_KEYS:
            run[key] = value
        elif key in trainer_fields:
            training[key] = value
        else:
            raise unknown(path, key, list(RUN_KEYS) + sorted(trainer_fields))
    for key in training:
        if key not in trainer_fields:
            raise unknown(f"{path} (training)", key, sorted(trainer_fields))

    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, value = (part.strip() for part in item.split("=", 1))
        key = key.removeprefix("training.")
        if key.split(".")[0] in RUN_KEYS:
            _set_dotted(run, key, _parse_value(value))
        elif key in trainer_fields:
            training[key] = _parse_value(value)
        else:
            raise unknown("--set", key, list(RUN_KEYS) + sorted(trainer_fields))

    field_types = typing.get_type_hints(RLSDConfig)
    run["training"] = {key: _coerce(key, value, field_types) for key, value in training.items()}
    return run


__all__ = ["RUN_KEYS", "config_field_names", "load_run_config"]

"""Map the user's columns onto `prompt` / `answer` / `solution` and check every row, one column at a time.

A column Arrow has typed as text is checked with vectorised Arrow compute (no Python object per row); a
column of mixed or nested values (chat messages, numbers mixed with text) is checked value by value. Either
way each problem is `(row index, source column, message)`; the caller turns them into `FILE:ROW` lines.
"""

from __future__ import annotations

import math
import string
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .problems import DatasetError, fail
from .source import Source

PROMPT_NAMES = ("prompt", "problem", "question", "input")
ANSWER_NAMES = ("answer", "final_answer", "target", "label")
SOLUTION_NAMES = ("solution", "reasoning", "rationale", "explanation")
ROLES = {"system", "user", "assistant", "tool", "developer"}

Issue = tuple[int, str | None, str]  # (row index in the source, source column, message)


def is_arrow(values: Any) -> bool:
    return isinstance(values, (pa.Array, pa.ChunkedArray))


def _is_text(values: Any) -> bool:
    return is_arrow(values) and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type))


def _where(mask: Any) -> np.ndarray:
    """Indices where an Arrow boolean array is true (nulls count as false)."""
    return np.flatnonzero(np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool))


def to_list(values: Any) -> list:
    return values.to_pylist() if is_arrow(values) else values


def template_columns(template: str) -> set[str]:
    """The columns a `prompt_template` reads: its placeholders cut to the column name (`{a.b}`, `{a[0]}` read `a`)."""
    try:
        return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}
    except ValueError as exc:
        raise DatasetError(f"prompt_template {template!r} is not a valid format string: {exc}") from None


# ------------------------------------------------------------------------------------------ columns
def _pick_column(keys: list[str], explicit: str | None, names: tuple, role: str, label: str) -> str | None:
    if explicit is not None:
        if explicit not in keys:
            columns = ", ".join(keys) or "none"
            raise fail(label, f"no column {explicit!r} (given as the {role} column); columns: {columns}")
        return explicit
    return next((name for name in names if name in keys), None)


def resolve_columns(src: Source, options: dict) -> dict[str, str | None]:
    """Which source column feeds `prompt`, `answer`, `solution` (explicit mapping wins over auto-detection)."""
    keys = list(src.columns)
    if not src.size:
        return {"prompt": None, "answer": None, "solution": None}  # every row is broken: reported per row
    cols = {
        "prompt": _pick_column(keys, options["prompt_column"], PROMPT_NAMES, "prompt", src.label),
        "answer": _pick_column(keys, options["answer_column"], ANSWER_NAMES, "answer", src.label),
        "solution": _pick_column(keys, options["solution_column"], SOLUTION_NAMES, "solution", src.label),
    }
    for role, names, flag in (("prompt", PROMPT_NAMES, "prompt_column"), ("answer", ANSWER_NAMES, "answer_column")):
        if cols[role] is None:
            raise fail(
                src.label,
                f"no {role} column: looked for {', '.join(names)}; columns are {', '.join(keys) or 'none'}; "
                f"pass {flag}=NAME (CLI: --{flag.replace('_', '-')} NAME)",
            )
    template = options["prompt_template"]
    if template is not None:
        fields = template_columns(template)
        secret = fields & {"answer", "solution", cols["answer"], cols["solution"]} - {None}
        if secret:
            used = ", ".join(sorted(secret))
            raise DatasetError(f"prompt_template uses {used}: the student must never see the reference answer")
        unknown = fields - set(keys) - {"prompt"}
        if unknown:
            raise fail(src.label, f"prompt_template uses {sorted(unknown)} but there is no such column")
    return cols


# ------------------------------------------------------------------------------------------- values
def as_text(value: Any) -> str | None:
    """Answers may be numbers in the file: 42 -> "42", 3.0 -> "3", 0.5 -> "0.5", true -> "true"."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _type_name(value: Any) -> str:
    return type(value).__name__


def messages_problem(messages: list) -> str | None:
    if not messages:
        return "empty list of messages"
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or m.get("role") is None or m.get("content") is None:
            return f"message {i} must be an object with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i} has unknown role {m['role']!r} (use {', '.join(sorted(ROLES))})"
        content = m["content"]
        if not isinstance(content, (str, list)):
            return f"message {i} content must be text, got {_type_name(content)}"
        if isinstance(content, list):
            for j, block in enumerate(content, start=1):
                kind = block.get("type") if isinstance(block, dict) else None
                if kind not in ("text", "image"):
                    return f"message {i} content block {j}: type must be 'text' or 'image', got {kind!r}"
                if kind == "text" and not isinstance(block.get("text"), str):
                    return f"message {i} content block {j}: a text block needs a 'text' string"
    if not any(m["role"] == "user" and _has_content(m["content"]) for m in messages):
        return "no non-empty user message"
    return None


def _has_content(content: str | list) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(b["type"] == "image" or b["text"].strip() for b in content)


def shown_text(prompt: Any) -> str:
    """The prompt's text as the model reads it (image blocks count as nothing)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] if isinstance(m["content"], str) else _blocks_text(m["content"]) for m in prompt)


def _blocks_text(blocks: list) -> str:
    return "".join(b["text"] for b in blocks if b.get("type") == "text" and b.get("text"))


def check_prompts(values: Any, name: str) -> tuple[Any, list[Issue]]:
    """Prompts must be non-empty text or valid chat messages; returns the values (Arrow or list) and issues."""
    if _is_text(values):
        missing = _where(values.is_null())
        blank = _where(pc.or_(pc.equal(pc.utf8_length(values), 0), pc.utf8_is_space(values)))
        issues = [(int(i), name, "missing") for i in missing] + [(int(i), name, "empty") for i in blank]
        return values, sorted(issues)
    if _is_text_messages(values):
        return values, _check_messages_arrow(values, name)
    values = to_list(values)
    issues: list[Issue] = []
    for i, prompt in enumerate(values):
        if prompt is None:
            issues.append((i, name, "missing"))
        elif isinstance(prompt, str):
            if not prompt.strip():
                issues.append((i, name, "empty"))
        elif isinstance(prompt, list):
            why = messages_problem(prompt)
            if why:
                issues.append((i, name, why))
        else:
            shown = f"{prompt!r:.40}"
            issues.append((i, name, f"expected text or a list of chat messages, got {_type_name(prompt)} {shown}"))
    return values, issues


def _is_text_messages(values: Any) -> bool:
    """A column Arrow typed as list<struct<role: string, content: string, ...>> (the common chat format)."""
    if not is_arrow(values) or not pa.types.is_list(values.type) or not pa.types.is_struct(values.type.value_type):
        return False
    fields = {f.name: f.type for f in values.type.value_type}
    return all(pa.types.is_string(fields.get(k, pa.null())) for k in ("role", "content"))


def _check_messages_arrow(values: Any, name: str) -> list[Issue]:
    """`messages_problem` for every row at once: the first bad message of each row, else a row with no
    non-empty user message. Only the rows with a problem are looked at in Python (for the message text)."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    n = len(array)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False))
    messages = pc.list_flatten(array)  # nulls and empty lists contribute nothing
    parent = np.asarray(pc.list_parent_indices(array).to_numpy(zero_copy_only=False))
    role, content = pc.struct_field(messages, "role"), pc.struct_field(messages, "content")
    incomplete = np.asarray(pc.fill_null(pc.or_(role.is_null(), content.is_null()), True).to_numpy(zero_copy_only=False))
    known = np.asarray(pc.fill_null(pc.is_in(role, pa.array(sorted(ROLES))), False).to_numpy(zero_copy_only=False))
    bad = incomplete | ~known
    speaks = np.zeros(n, dtype=bool)
    user = pc.and_(pc.equal(role, "user"), pc.invert(pc.or_(pc.equal(pc.utf8_length(content), 0), pc.utf8_is_space(content))))
    speaks[parent[_where(user)]] = True
    first_bad = {}
    for k in np.flatnonzero(bad):  # message order: the first bad message of a row wins
        first_bad.setdefault(int(parent[k]), int(k))
    issues: list[Issue] = []
    for i in range(n) if (lengths <= 0).any() or first_bad or not speaks.all() else ():
        if lengths[i] < 0:
            issues.append((i, name, "missing"))
        elif lengths[i] == 0:
            issues.append((i, name, "empty list of messages"))
        elif i in first_bad:
            issues.append((i, name, messages_problem(array[i].as_py()) or "invalid messages"))
        elif not speaks[i]:
            issues.append((i, name, "no non-empty user message"))
    return issues


def check_texts(values: Any, name: str | None, n: int, required: bool) -> tuple[Any, list[Issue]]:
    """Answer (required) or solution column -> text values; numbers become text (`as_text`)."""
    if name is None:
        return pa.array([""] * n, pa.string()), []
    kind = "text or a number" if required else "text"
    if is_arrow(values) and (_is_text(values) or pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)):
        if pa.types.is_integer(values.type):
            values = pc.cast(values, pa.string())
        elif pa.types.is_boolean(values.type):
            values = pc.if_else(values, "true", "false")
        if not required:
            return pc.fill_null(values, ""), []
        missing = _where(values.is_null())
        blank = _where(pc.or_(pc.equal(pc.utf8_length(values), 0), pc.utf8_is_space(values)))
        return values, sorted([(int(i), name, "missing") for i in missing] + [(int(i), name, "empty") for i in blank])
    texts: list[str | None] = []
    issues: list[Issue] = []
    for i, value in enumerate(to_list(values)):
        text = as_text(value)
        if value is None:
            text = None if required else ""
            if required:
                issues.append((i, name, "missing"))
        elif text is None:
            issues.append((i, name, f"expected {kind}, got {_type_name(value)}"))
        elif required and not text.strip():
            issues.append((i, name, "empty"))
        texts.append(text)
    return texts, issues


def column_values(src: Source, names: Iterable[str], rows: np.ndarray) -> dict[str, list]:
    """Python values of some columns at some row indices (for templates)."""
    out = {}
    for name in names:
        values = src.columns[name]
        out[name] = values.take(pa.array(rows)).to_pylist() if is_arrow(values) else [values[i] for i in rows]
    return out


def shape_prompts(prompts: Any, src: Source, rows: np.ndarray, options: dict, name: str) -> tuple[list, list[Issue]]:
    """Apply `prompt_template` (to the text, or the last user message) and `system_prompt` to some rows."""
    template, system = options["prompt_template"], options["system_prompt"]
    fields = sorted(template_columns(template) - {"prompt"}) if template is not None else []
    extra = column_values(src, fields, rows)
    values = prompts.take(pa.array(rows)).to_pylist() if is_arrow(prompts) else [prompts[i] for i in rows]
    out, issues = [], []
    for k, (i, prompt) in enumerate(zip(rows, values)):
        if template is not None:
            row = {f: extra[f][k] for f in fields}
            try:
                if isinstance(prompt, str):
                    prompt = template.format_map({**row, "prompt": prompt})
                else:
                    last = max(j for j, m in enumerate(prompt) if m["role"] == "user")
                    fill = lambda text: template.format_map({**row, "prompt": text})  # noqa: E731
                    prompt = [
                        dict(m, content=fill(m["content"]) if isinstance(m["content"], str) else m["content"])
                        if j == last else dict(m)
                        for j, m in enumerate(prompt)
                    ]  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a format spec that does not fit this row's value
                issues.append((int(i), name, f"prompt_template cannot be applied: {type(exc).__name__}: {exc}"))
        if isinstance(prompt, str) and system is not None:
            prompt = [{"role": "user", "content": prompt}]
        if system is not None and not any(m["role"] == "system" for m in prompt):
            prompt = [{"role": "system", "content": system}, *prompt]
        out.append(prompt)
    return out, issues


def prompt_sizes(prompts: Any, bad: set[int]) -> np.ndarray:
    """Characters of each prompt as the model sees it (0 for rows in `bad`, whose prompt may not be valid)."""
    if _is_text(prompts):
        return np.asarray(pc.fill_null(pc.utf8_length(prompts), 0).to_numpy(zero_copy_only=False))
    return np.fromiter((0 if i in bad else len(shown_text(p)) for i, p in enumerate(prompts)), dtype=np.int64)


def prompt_key(prompt: Any) -> str:
    """What 'the same prompt' means for train/eval overlap: same text up to spacing and case."""
    if not isinstance(prompt, str):
        prompt = shown_text(prompt)
    return " ".join(prompt.split()).casefold()


def as_chat(prompts: Any) -> Any:
    """Text prompts -> one user message each (Arrow needs one prompt type per column)."""
    if is_arrow(prompts) and not _is_text(prompts):
        return prompts  # already messages
    if _is_text(prompts):
        content = prompts.combine_chunks() if isinstance(prompts, pa.ChunkedArray) else prompts
        role = pa.array(np.full(len(content), "user", dtype=object), pa.string())
        messages = pa.StructArray.from_arrays([role, content], names=["role", "content"])
        return pa.ListArray.from_arrays(pa.array(np.arange(len(content) + 1, dtype=np.int32)), messages)
    return [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in to_list(prompts)]


def is_chat(prompts: Any, keep: np.ndarray) -> bool:
    """Whether any kept row's prompt is a list of messages."""
    if is_arrow(prompts):
        return pa.types.is_list(prompts.type) or pa.types.is_large_list(prompts.type)
    return any(isinstance(p, list) for p, k in zip(prompts, keep) if k)

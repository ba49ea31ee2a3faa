"""Load users' problem sets, map their columns onto `prompt` / `answer` / `solution`, validate them.

Why validate up front: a bad row found at step 3,000 of a GPU run costs hours;
found before step 0, it costs one line of output naming the file, the row and
the field. Every problem is collected (not just the first), so one fix-up
pass is enough. Input files are only ever read.

Output rows: `prompt` (a string, or chat messages `[{"role", "content"}]` when
the input had messages or a `system_prompt` is given), `answer` (string),
`solution` (string, "" if absent), plus every other original column (rewards
may need them, e.g. `tests`). The source columns that were mapped onto
`prompt`/`answer`/`solution` are not repeated.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import datasets

PROMPT_NAMES = ("prompt", "problem", "question", "input")
ANSWER_NAMES = ("answer", "final_answer", "target", "label")
SOLUTION_NAMES = ("solution", "reasoning", "rationale", "explanation")
MAX_LISTED = 20
FORMATS = ".jsonl, .json, .csv, .tsv, .parquet (optionally .gz), or a directory saved with datasets.save_to_disk"
SKIP_HINT = "pass skip_bad_rows=True (CLI: --skip-bad-rows) to drop them"
_ROLES = {"system", "user", "assistant", "tool", "developer"}


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message lists every problem found (`FILE:ROW: field ...`)."""


class DatasetWarning(UserWarning):
    """Rows were dropped because `skip_bad_rows=True`."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (row None: the whole file)."""

    file: str
    row: int | None
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"{where}: field {self.field!r}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class DatasetReport:
    """What loading did: on `load_dataset(...).report`. `problems` lists the dropped rows' problems."""

    files: list[str] = field(default_factory=list)
    columns: dict[str, str | None] = field(default_factory=dict)  # canonical name -> source column (train file)
    rows_total: int = 0
    rows_dropped: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def rows_kept(self) -> int:
        return self.rows_total - self.rows_dropped


@dataclass
class _Rows:
    """Rows read from one source: (row number as the user sees it, row dict or a read problem)."""

    label: str
    items: list[tuple[int, dict | Problem]]


# ----------------------------------------------------------------------------------------- reading
def _fail(label: str, message: str) -> DatasetError:
    return DatasetError(f"{label}: {message}")


def _bad_byte(value: Any) -> int | None:
    """The first byte that was not UTF-8 in a decoded value (surrogateescape turns it into a surrogate)."""
    if isinstance(value, str):
        return next((ord(ch) - 0xDC00 for ch in value if "\udc80" <= ch <= "\udcff"), None)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return next((b for b in map(_bad_byte, value) if b is not None), None)
    return None


def _utf8_problem(row: dict, label: str, number: int) -> Problem | None:
    for key, value in row.items():
        bad = _bad_byte(value)
        if bad is not None:
            return Problem(label, number, f"not valid UTF-8 (byte 0x{bad:02x}); re-save the file as UTF-8", str(key))
    return None


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """File bytes (gunzipped if .gz) and the format suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    data = path.read_bytes()
    if suffixes and suffixes[-1] == ".gz":
        data, suffixes = gzip.decompress(data), suffixes[:-1]
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data, (suffixes[-1] if suffixes else "")


def _jsonl(text: str, label: str) -> _Rows:
    items: list[tuple[int, dict | Problem]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            items.append((number, Problem(label, number, f"invalid JSON: {exc.msg} (column {exc.colno})")))
            continue
        if not isinstance(row, dict):
            items.append((number, Problem(label, number, f"expected a JSON object, got {type(row).__name__}")))
            continue
        items.append((number, row))
    return _Rows(label, items)


def _json(text: str, label: str) -> _Rows:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file
            return _jsonl(text, label)
        raise _fail(f"{label}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if "data" in data and isinstance(data["data"], list):
            data = data["data"]
        elif len(lists) == 1:
            data = lists[0]
        elif all(isinstance(v, list) for v in data.values()) and len({len(v) for v in data.values()}) == 1:
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*data.values())]  # column-oriented
        else:
            raise _fail(label, "expected a JSON list of objects (or {\"data\": [...]})")
    if not isinstance(data, list):
        raise _fail(label, f"expected a JSON list of objects, got {type(data).__name__}")
    items = [
        (i, row if isinstance(row, dict) else Problem(label, i, f"expected a JSON object, got {type(row).__name__}"))
        for i, row in enumerate(data, start=1)
    ]
    return _Rows(label, items)


def _csv(text: str, label: str, delimiter: str) -> _Rows:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise _fail(label, "no header row")
    width = len(reader.fieldnames)
    items: list[tuple[int, dict | Problem]] = []
    for number, row in enumerate(reader, start=1):
        extra = row.pop(None, None)
        if extra is not None or any(v is None for v in row.values()):
            got = width + len(extra or []) - sum(v is None for v in row.values())
            items.append((number, Problem(label, number, f"has {got} fields, the header has {width}")))
            continue
        items.append((number, row))
    return _Rows(label, items)


def _table(rows: list[dict], label: str) -> _Rows:
    return _Rows(label, [(i, row) for i, row in enumerate(rows, start=1)])


def _read_file(path: Path, label: str) -> _Rows:
    """Read one file into rows, keeping each row's number as the user would count it."""
    try:
        data, suffix = _read_bytes(path)
    except OSError as exc:
        raise _fail(label, f"cannot read: {exc.strerror or exc}") from None
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return _table(pq.read_table(io.BytesIO(data)).to_pylist(), label)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise _fail(label, f"not a readable Parquet file: {exc}") from None
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        raise _fail(label, f"unknown format {suffix or '(no extension)'!r}; use {FORMATS}")
    try:
        text, bad_bytes = data.decode("utf-8"), False
    except UnicodeDecodeError:  # keep going: bad bytes are reported per row, with the field they are in
        text, bad_bytes = data.decode("utf-8", errors="surrogateescape"), True
    if suffix == ".json":
        rows = _json(text, label)
    elif suffix in (".csv", ".tsv"):
        rows = _csv(text, label, "\t" if suffix == ".tsv" else ",")
    else:
        rows = _jsonl(text, label)
    if bad_bytes:
        rows.items = [(n, (_utf8_problem(r, label, n) or r) if isinstance(r, dict) else r) for n, r in rows.items]
    return rows


def _read_source(source: str | Path, split: str | None, from_hub: bool) -> tuple[_Rows, _Rows | None]:
    """Rows of the requested split, and rows of a held-out split when a saved DatasetDict has one."""
    path = Path(source).expanduser()
    label = str(source)
    if from_hub:
        try:
            ds = datasets.load_dataset(str(source), split=split or "train")
        except Exception as exc:  # noqa: BLE001 - network, auth, missing split...
            raise _fail(label, f"cannot load from the Hugging Face Hub: {exc}") from None
        return _table(ds.to_list(), f"{label}[{split or 'train'}]"), None
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001
            raise _fail(label, f"not a directory saved with datasets.save_to_disk ({exc}); use {FORMATS}") from None
        if isinstance(loaded, datasets.DatasetDict):
            name = split or "train"
            if name not in loaded:
                raise _fail(label, f"no split {name!r}; splits: {', '.join(loaded)}")
            held = next((s for s in ("eval", "validation", "test") if s in loaded and s != name), None)
            held_rows = _table(loaded[held].to_list(), f"{label}[{held}]") if split is None and held else None
            return _table(loaded[name].to_list(), f"{label}[{name}]"), held_rows
        return _table(loaded.to_list(), label), None
    if not path.exists():
        raise _fail(label, "no such file or directory (for a Hugging Face Hub dataset pass from_hub=True / --from-hub)")
    if split not in (None, "train"):
        raise _fail(label, f"split={split!r} only applies to saved DatasetDicts and hub datasets, not to one file")
    return _read_file(path, label), None


# ------------------------------------------------------------------------------------- mapping rows
def _pick_column(keys: Iterable[str], explicit: str | None, names: tuple, role: str, label: str) -> str | None:
    keys = list(keys)
    if explicit is not None:
        if explicit not in keys:
            columns = ", ".join(keys) or "none"
            raise _fail(label, f"no column {explicit!r} (given as the {role} column); columns: {columns}")
        return explicit
    return next((name for name in names if name in keys), None)


def _resolve_columns(rows: _Rows, options: dict) -> dict[str, str | None]:
    """Which source column feeds `prompt`, `answer`, `solution` (explicit mapping wins over auto-detection)."""
    keys = list(dict.fromkeys(k for _, r in rows.items if isinstance(r, dict) for k in r))
    if not any(isinstance(r, dict) for _, r in rows.items):
        return {"prompt": None, "answer": None, "solution": None}  # every row is broken: reported per row
    cols = {
        "prompt": _pick_column(keys, options["prompt_column"], PROMPT_NAMES, "prompt", rows.label),
        "answer": _pick_column(keys, options["answer_column"], ANSWER_NAMES, "answer", rows.label),
        "solution": _pick_column(keys, options["solution_column"], SOLUTION_NAMES, "solution", rows.label),
    }
    for role, names, flag in (("prompt", PROMPT_NAMES, "prompt_column"), ("answer", ANSWER_NAMES, "answer_column")):
        if cols[role] is None:
            raise _fail(
                rows.label,
                f"no {role} column: looked for {', '.join(names)}; columns are {', '.join(keys) or 'none'}; "
                f"pass {flag}=NAME (CLI: --{flag.replace('_', '-')} NAME)",
            )
    template = options["prompt_template"]
    if template is not None:
        try:
            fields = {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}
        except ValueError as exc:
            raise DatasetError(f"prompt_template {template!r} is not a valid format string: {exc}") from None
        secret = fields & {"answer", "solution", cols["answer"], cols["solution"]} - {None}
        if secret:
            used = ", ".join(sorted(secret))
            raise DatasetError(f"prompt_template uses {used}: the student must never see the reference answer")
        unknown = fields - set(keys) - {"prompt"}
        if unknown:
            raise _fail(rows.label, f"prompt_template uses {sorted(unknown)} but there is no such column")
    return cols


def _as_text(value: Any) -> str | None:
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


def _messages_problem(messages: list) -> str | None:
    if not messages:
        return "empty list of messages"
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i} must be an object with 'role' and 'content'"
        if m["role"] not in _ROLES:
            return f"message {i} has unknown role {m['role']!r} (use {', '.join(sorted(_ROLES))})"
        if not isinstance(m["content"], (str, list)):
            return f"message {i} content must be text, got {type(m['content']).__name__}"
    if not any(m["role"] == "user" and str(m["content"]).strip() for m in messages):
        return "no non-empty user message"
    return None


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] if isinstance(m["content"], str) else json.dumps(m["content"]) for m in prompt)


def _convert(number: int, row: dict, cols: dict, options: dict, label: str) -> tuple[dict | None, list[Problem]]:
    """One source row -> one canonical row, or the list of what is wrong with it."""
    problems: list[Problem] = []
    bad = lambda name, message: problems.append(Problem(label, number, message, name))  # noqa: E731
    src_prompt, src_answer, src_solution = cols["prompt"], cols["answer"], cols["solution"]
    prompt = row.get(src_prompt)
    if src_prompt not in row or prompt is None:
        bad(src_prompt, "missing")
    elif isinstance(prompt, str):
        if not prompt.strip():
            bad(src_prompt, "empty")
    elif isinstance(prompt, list):
        why = _messages_problem(prompt)
        if why:
            bad(src_prompt, why)
    else:
        bad(src_prompt, f"expected text or a list of chat messages, got {type(prompt).__name__} {prompt!r:.40}")
    answer = _as_text(row.get(src_answer))
    if src_answer not in row or row.get(src_answer) is None:
        bad(src_answer, "missing")
    elif answer is None:
        bad(src_answer, f"expected text or a number, got {type(row[src_answer]).__name__}")
    elif not answer.strip():
        bad(src_answer, "empty")
    solution = "" if src_solution is None or row.get(src_solution) is None else _as_text(row[src_solution])
    if solution is None:
        bad(src_solution, f"expected text, got {type(row[src_solution]).__name__}")
    if problems:
        return None, problems
    prompt = _shape_prompt(prompt, row, options)
    limit = options["max_prompt_chars"]
    size = len(_prompt_text(prompt))
    if limit is not None and size > limit:
        why = f"{size:,} characters, over the limit max_prompt_chars={limit:,}"
        return None, [Problem(label, number, why, src_prompt)]
    out = {k: v for k, v in row.items() if k not in (src_prompt, src_answer, src_solution)}
    out.update(prompt=prompt, answer=answer, solution=solution)
    return out, []


def _shape_prompt(prompt: Any, row: dict, options: dict) -> Any:
    """Apply `prompt_template` (to the text, or the last user message) and `system_prompt`."""
    template, system = options["prompt_template"], options["system_prompt"]
    if template is not None:
        fill = lambda text: template.format_map({**row, "prompt": text})  # noqa: E731
        if isinstance(prompt, str):
            prompt = fill(prompt)
        else:
            last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
            prompt = [dict(m, content=fill(m["content"])) if i == last else dict(m) for i, m in enumerate(prompt)]
    if isinstance(prompt, str) and system is not None:
        prompt = [{"role": "user", "content": prompt}]
    if system is not None and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system}, *prompt]
    return prompt


def _key(prompt: Any) -> str:
    """What 'the same prompt' means for train/eval overlap: same text up to spacing and case."""
    return " ".join(_prompt_text(prompt).split()).casefold()


# ----------------------------------------------------------------------------------------- assembly
def _canonical(rows: _Rows, options: dict) -> tuple[list[tuple[int, dict]], list[Problem], dict]:
    cols = _resolve_columns(rows, options)
    good: list[tuple[int, dict]] = []
    problems: list[Problem] = []
    for number, row in rows.items:
        if isinstance(row, Problem):
            problems.append(row)
            continue
        out, found = _convert(number, row, cols, options, rows.label)
        problems.extend(found)
        if out is not None:
            good.append((number, out))
    return good, problems, cols


def _build(rows: list[dict], label: str) -> datasets.Dataset:
    """An in-memory Dataset (so later `.map()` calls never write cache files next to the user's data)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))  # from_list would keep only the first row's keys
    rows = [{k: r.get(k) for k in keys} for r in rows]
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for mixed columns
        for key in keys:
            kinds = {type(r.get(key)).__name__ for r in rows if r.get(key) is not None}
            if len(kinds - {"int", "float"}) > 1 or (len(kinds) > 1 and kinds - {"int", "float"}):
                mixed = ", ".join(sorted(kinds))
                raise _fail(label, f"column {key!r} mixes types ({mixed}); make it one type") from None
        raise _fail(label, f"cannot build a dataset: {exc}") from None


def _summary(headline: str, problems: list[Problem]) -> str:
    lines = [headline]
    lines += [f"  {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more problems")
    return "\n".join(lines)


def load_dataset(
    path_or_name: str | Path,
    *,
    split: str | None = None,
    eval_path: str | Path | None = None,
    eval_fraction: float | None = None,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    solution_column: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    max_prompt_chars: int | None = None,
    skip_bad_rows: bool = False,
    from_hub: bool = False,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Load, map and validate a dataset; returns `DatasetDict` with "train" (and "eval").

    Raises `DatasetError` listing every bad row (`FILE:ROW: field 'NAME': ...`)
    unless `skip_bad_rows`, which drops them with a `DatasetWarning`. The
    result's `.report` (`DatasetReport`) says how many rows were dropped. A
    saved DatasetDict's eval/validation/test split is used as "eval" when no
    `split`, `eval_path` or `eval_fraction` is given.
    """
    if eval_path is not None and eval_fraction is not None:
        raise DatasetError("give either eval_path or eval_fraction, not both")
    if eval_fraction is not None and not 0 < eval_fraction < 1:
        raise DatasetError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    if max_prompt_chars is not None and max_prompt_chars <= 0:
        raise DatasetError(f"max_prompt_chars must be positive, got {max_prompt_chars}")
    options = dict(
        prompt_column=prompt_column, answer_column=answer_column, solution_column=solution_column,
        system_prompt=system_prompt, prompt_template=prompt_template, max_prompt_chars=max_prompt_chars,
    )  # fmt: skip
    train_src, held_src = _read_source(path_or_name, split, from_hub)
    if eval_path is not None:
        held_src = _read_source(eval_path, None, False)[0]
    elif eval_fraction is not None:
        held_src = None
    sources = [s for s in (train_src, held_src) if s is not None]
    train, problems, cols = _canonical(train_src, options)
    held: list[tuple[int, dict]] = []
    if held_src is not None:
        held, held_problems, _ = _canonical(held_src, options)
        problems += held_problems
        first_seen = {}
        for number, row in train:
            first_seen.setdefault(_key(row["prompt"]), number)
        kept = []
        for number, row in held:
            seen_at = first_seen.get(_key(row["prompt"]))
            if seen_at is None:
                kept.append((number, row))
            else:
                why = f"same prompt as {train_src.label}:{seen_at} (train and eval must not overlap)"
                problems.append(Problem(held_src.label, number, why, cols["prompt"]))
        held = kept
    total = len(train_src.items) + (len(held_src.items) if held_src is not None else 0)
    bad_rows = len({(p.file, p.row) for p in problems})
    report = DatasetReport([s.label for s in sources], cols, total, bad_rows if skip_bad_rows else 0)
    if problems:
        if not skip_bad_rows:
            raise DatasetError(_summary(f"{bad_rows} of {total} rows are invalid; {SKIP_HINT}:", problems))
        report.problems = problems
        dropped = _summary(f"dropped {bad_rows} of {total} rows as invalid:", problems)
        warnings.warn(DatasetWarning(dropped), stacklevel=2)
    if not train:
        raise _fail(train_src.label, "no usable rows")
    if any(isinstance(r["prompt"], list) for _, r in train + held):  # Arrow needs one prompt type per column
        for _, r in train + held:
            if isinstance(r["prompt"], str):
                r["prompt"] = [{"role": "user", "content": r["prompt"]}]
    if eval_fraction is not None:
        train, held = _split(train, eval_fraction, seed, train_src.label)
    result = datasets.DatasetDict({"train": _build([r for _, r in train], train_src.label)})
    if held:
        result["eval"] = _build([r for _, r in held], held_src.label if held_src else train_src.label)
    result.report = report  # type: ignore[attr-defined]
    return result


def _split(rows: list[tuple[int, dict]], fraction: float, seed: int, label: str) -> tuple[list, list]:
    """Hold out a fraction of the distinct prompts; repeats of a prompt stay on the same side."""
    keys = list(dict.fromkeys(_key(r["prompt"]) for _, r in rows))
    if len(keys) < 2:
        raise _fail(label, f"cannot hold out eval_fraction={fraction}: fewer than 2 distinct prompts")
    random.Random(seed).shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    held = set(keys[:n_eval])
    return [x for x in rows if _key(x[1]["prompt"]) not in held], [x for x in rows if _key(x[1]["prompt"]) in held]

"""Rows read from one source as columns (`Source`), and the row-level helpers every reader shares.

The exact Python parsers (`readers.py` for whole files, `jsonl.py` for the JSONL chunks Arrow refused) build a
`Source` from (row number, row or problem) pairs with `from_rows`; Arrow readers build one with `from_table`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from .problems import Problem, fail


@dataclass
class Source:
    """Rows read from one source, column by column.

    `columns` holds the rows that parsed: an Arrow array when the column has one type, a Python list when
    its values mix types (they are checked one by one). `problems` are the rows that did not parse at all.
    """

    label: str
    columns: dict[str, Any]
    size: int
    problems: list[Problem] = field(default_factory=list)
    numbers: np.ndarray | None = None  # row number (as the user counts) of each parsed row; None: 1..size
    base_dir: Path | None = None  # relative image paths start here
    features: dict[str, Any] = field(default_factory=dict)  # `datasets` features of Arrow columns, when known

    @property
    def total(self) -> int:
        return self.size + len(self.problems)

    def number(self, index: int) -> int:
        return int(self.numbers[index]) if self.numbers is not None else index + 1


def from_table(table: pa.Table, label: str, features: datasets.Features | None = None, **kw) -> Source:
    names = list(dict.fromkeys(table.column_names))
    features = dict(features or {})
    return Source(label, {n: table.column(n) for n in names}, table.num_rows, features=features, **kw)


def from_rows(items: list[tuple[int, dict | Problem]], label: str, base_dir: Path | None) -> Source:
    """Rows parsed in Python: (row number, row or problem) -> columns of Python values."""
    rows = [(n, r) for n, r in items if isinstance(r, dict)]
    keys = list(dict.fromkeys(k for _, r in rows for k in r))
    columns = {str(k): [r.get(k) for _, r in rows] for k in keys}
    problems = [r for _, r in items if isinstance(r, Problem)]
    numbers = np.fromiter((n for n, _ in rows), dtype=np.int64, count=len(rows))
    return Source(label, columns, len(rows), problems, numbers, base_dir)


# ------------------------------------------------------------------------------------- row-level parsing
def bad_byte(value: Any) -> int | None:
    """The first byte that was not UTF-8 in a decoded value (surrogateescape turns it into a surrogate)."""
    if isinstance(value, str):
        return next((ord(ch) - 0xDC00 for ch in value if "\udc80" <= ch <= "\udcff"), None)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return next((b for b in map(bad_byte, value) if b is not None), None)
    return None


def utf8_problem(row: dict, label: str, number: int) -> Problem | None:
    for key, value in row.items():
        bad = bad_byte(value)
        if bad is not None:
            return Problem(label, number, f"not valid UTF-8 (byte 0x{bad:02x}); re-save the file as UTF-8", str(key))
    return None


def parse_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"


def jsonl_rows(text: str, label: str, first: int = 1) -> list[tuple[int, dict | Problem]]:
    items: list[tuple[int, dict | Problem]] = []
    for number, line in enumerate(text.split("\n"), start=first):
        if not line.strip():
            continue
        row, why = parse_json(line)
        if why is None and not isinstance(row, dict):
            why = f"expected a JSON object, got {type(row).__name__}"
        items.append((number, Problem(label, number, why) if why else row))
    return items


def decompress_error(label: str, suffix: str, exc: BaseException) -> Exception:
    why = str(exc) or type(exc).__name__
    return fail(label, f"not a readable {suffix} file ({why}): it is truncated or corrupt; re-download or re-compress it")

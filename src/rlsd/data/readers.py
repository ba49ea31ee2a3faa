"""Read one source (file, saved dataset, hub dataset) into columns, never raising anything but `DatasetError`.

Fast path: Arrow's own readers (`pyarrow.json` chunk by chunk (see `jsonl.py`), `pyarrow.csv`, Parquet,
memory-mapped saved datasets), which build the columns in C++ with no Python object per row. Where Arrow
refuses the input (a bad line, a column whose type changes between rows, bytes that are not UTF-8, ...) the
exact Python parser reads it row by row so every problem can be named by its row: for JSONL only the chunk
concerned, for CSV/TSV the whole file (rows with the wrong number of fields are named by Arrow itself); a
good file never pays for that.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import zlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from .jsonl import read_jsonl
from .problems import FORMATS, Problem, fail
from .source import Source, decompress_error, from_rows, from_table, jsonl_rows, utf8_problem

COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
TEXT_FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


def _json(text: str, label: str) -> list[tuple[int, dict | Problem]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file
            return jsonl_rows(text, label)
        raise fail(f"{label}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise fail(label, "invalid JSON: nested too deeply") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if "data" in data and isinstance(data["data"], list):
            data = data["data"]
        elif len(lists) == 1:
            data = lists[0]
        elif data and all(isinstance(v, list) for v in data.values()) and len({len(v) for v in data.values()}) == 1:
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*data.values())]  # column-oriented
        else:
            raise fail(label, "expected a JSON list of objects (or {\"data\": [...]})")
    if not isinstance(data, list):
        raise fail(label, f"expected a JSON list of objects, got {type(data).__name__}")
    return [
        (i, row if isinstance(row, dict) else Problem(label, i, f"expected a JSON object, got {type(row).__name__}"))
        for i, row in enumerate(data, start=1)
    ]


def _csv(text: str, label: str, delimiter: str) -> list[tuple[int, dict | Problem]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        if not reader.fieldnames:
            raise fail(label, "no header row")
        width = len(reader.fieldnames)
        items: list[tuple[int, dict | Problem]] = []
        for number, row in enumerate(reader, start=1):
            extra = row.pop(None, None)
            if extra is not None or any(v is None for v in row.values()):
                got = width + len(extra or []) - sum(v is None for v in row.values())
                items.append((number, Problem(label, number, f"has {got} fields, the header has {width}")))
                continue
            items.append((number, row))
    except csv.Error as exc:  # e.g. a NUL byte, or a field over the size limit
        raise fail(f"{label}:{reader.line_num}", f"not a readable CSV file: {exc}") from None
    return items


def _python_read(path: Path, label: str, fmt: str, opener) -> Source:
    """The exact, row-by-row reader: used for .json, and when Arrow refused the file."""
    data = _read_all(path, label, opener)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text, bad_bytes = data.decode("utf-8"), False
    except UnicodeDecodeError:  # keep going: bad bytes are reported per row, with the field they are in
        text, bad_bytes = data.decode("utf-8", errors="surrogateescape"), True
    del data
    if fmt == ".json":
        items = _json(text, label)
    elif fmt in (".csv", ".tsv"):
        items = _csv(text, label, "\t" if fmt == ".tsv" else ",")
    else:
        items = jsonl_rows(text, label)
    if bad_bytes:
        items = [(n, (utf8_problem(r, label, n) or r) if isinstance(r, dict) else r) for n, r in items]
    return from_rows(items, label, path.parent)


# ------------------------------------------------------------------------------------ streams and arrow
def _read_all(path: Path, label: str, opener) -> bytes:
    try:
        if opener is None:
            return path.read_bytes()
        with opener(path, "rb") as fh:
            return fh.read()
    except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise decompress_error(label, path.suffix, exc) from None
    except OSError as exc:
        if opener is not None and exc.errno is None:  # bz2/gzip raise bare OSError for bad data
            raise decompress_error(label, path.suffix, exc) from None
        raise fail(label, f"cannot read: {exc.strerror or exc}") from None


def _arrow_csv(path: Path, label: str, opener, delimiter: str) -> Source | None:
    """CSV/TSV through pyarrow.csv with every column read as text (as the csv module does). Rows with the
    wrong number of fields are collected (a second, single-threaded pass, which knows their row numbers)."""
    import pyarrow.csv as pc

    invalid: list[tuple[int | None, int]] = []

    def collect(row) -> str:
        invalid.append((row.number, row.actual_columns))
        return "skip"

    def read(names: list[str], threads: bool, handler) -> pa.Table:
        with (opener or open)(path, "rb") as fh:
            return pc.read_csv(
                fh if opener is not None else str(path),
                read_options=pc.ReadOptions(block_size=4 << 20, use_threads=threads),
                parse_options=pc.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=handler),
                convert_options=pc.ConvertOptions(
                    column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )  # fmt: skip

    try:
        with (opener or open)(path, "rt", encoding="utf-8-sig", newline="") as fh:
            names = next(csv.reader(fh, delimiter=delimiter), None)
        if not names or len(set(names)) != len(names):
            return None
        try:
            table = read(names, True, None)
        except pa.ArrowInvalid:
            table = read(names, False, collect)
    except Exception:  # noqa: BLE001 - the Python reader names the row (or the archive problem)
        return None
    # pyarrow counts the header as row 1; the user's (and the csv module's) data rows start after it
    if table.column_names != names or any(n is None or n < 2 for n, _ in invalid):
        return None
    width = len(names)
    problems = [Problem(label, n - 1, f"has {got} fields, the header has {width}") for n, got in invalid]
    numbers = None
    if invalid:
        numbers = np.delete(np.arange(1, table.num_rows + len(invalid) + 1, dtype=np.int64), [n - 2 for n, _ in invalid])
    return Source(label, {n: table.column(n) for n in names}, table.num_rows, problems, numbers, path.parent)


def _parquet(path: Path, label: str, opener) -> Source:
    import pyarrow.parquet as pq

    source: Any = path if opener is None else pa.BufferReader(_read_all(path, label, opener))
    try:
        table = pq.read_table(source)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise fail(label, f"not a readable Parquet file: {str(exc)[:300]}") from None
    try:  # a file written by `datasets` says which columns are images (datasets.Image) in its metadata
        features = datasets.Features.from_arrow_schema(table.schema) if table.schema.metadata else None
    except Exception:  # noqa: BLE001 - metadata `datasets` cannot read: plain Arrow types are enough
        features = None
    return from_table(table, label, features, base_dir=path.parent)


def read_file(path: Path, label: str) -> Source:
    """Read one file into columns, keeping each row's number as the user would count it."""
    suffixes = [s.lower() for s in path.suffixes]
    opener = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if opener is not None:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if not path.is_file():
        raise fail(label, "not a regular file")
    if fmt in (".parquet", ".pq"):
        return _parquet(path, label, opener)
    if fmt not in TEXT_FORMATS:
        raise fail(label, f"unknown format {fmt or '(no extension)'!r}; use {FORMATS}")
    fast = None
    if fmt in (".jsonl", ".ndjson"):
        return read_jsonl(path, label, opener)
    if fmt in (".csv", ".tsv"):
        fast = _arrow_csv(path, label, opener, "\t" if fmt == ".tsv" else ",")
    return fast if fast is not None else _python_read(path, label, fmt, opener)


def read_dataset(ds: datasets.Dataset, label: str, base_dir: Path | None = None) -> Source:
    """A `datasets.Dataset` as Arrow columns, without decoding (images stay encoded, nothing is copied)."""
    try:
        table = ds.with_format("arrow")[:]
    except Exception as exc:  # noqa: BLE001
        raise fail(label, f"cannot read the saved dataset: {exc}") from None
    return from_table(table, label, ds.features, base_dir=base_dir)

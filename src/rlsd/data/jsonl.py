"""JSONL at scale: line-aligned chunks, each parsed by `pyarrow.json`; a chunk Arrow refuses (or must not
see) is parsed line by line in Python, so one bad line costs one chunk's time, not the file's.

Columns are joined across chunks: one Arrow type (or types Arrow can widen, e.g. int -> double, a struct
with more fields) stays Arrow; a column whose values mix types (an answer that is a number in some rows and
text in others) becomes a list of Python values, checked one by one. Pyarrow's JSON parser is never shown a
line that could crash it (nesting deeper than ~10k levels, a first line that is `null`): such chunks go to
Python, whose parser raises a clean `RecursionError`.
"""

from __future__ import annotations

import gzip
import json
import lzma
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .problems import Problem, fail
from .source import Source, decompress_error, jsonl_rows, utf8_problem

CHUNK = 8 << 20
MAX_OPEN_BRACKETS = 1000  # per line; deeper JSON goes to the Python parser (pyarrow crashes near 10k levels)


def _chunks(path: Path, label: str, opener) -> Iterator[bytes]:
    """The (decompressed) file in pieces that end at a line end; archive damage is a DatasetError."""
    carry = b""
    try:
        with (opener or open)(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                buf = carry + chunk
                cut = buf.rfind(b"\n") + 1
                if cut:
                    yield buf[:cut]
                carry = buf[cut:]
    except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise decompress_error(label, path.suffix, exc) from None
    except OSError as exc:
        if opener is not None and exc.errno is None:  # bz2/gzip raise a bare OSError for bad data
            raise decompress_error(label, path.suffix, exc) from None
        raise fail(label, f"cannot read: {exc.strerror or exc}") from None
    if carry:
        yield carry


def _lines(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(starts, ends, non-blank mask, safe for Arrow) of the lines of one chunk."""
    data = np.frombuffer(buf, np.uint8)
    ends = np.flatnonzero(data == 10)
    if not len(ends) or ends[-1] != len(buf) - 1:
        ends = np.r_[ends, len(buf)]
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts
    nonblank = lengths > 0
    for i in np.flatnonzero(lengths < 16):
        nonblank[i] = bool(buf[int(starts[i]) : int(ends[i])].strip())
    safe = True
    for i in np.flatnonzero(lengths > MAX_OPEN_BRACKETS):
        s, e = int(starts[i]), int(ends[i])
        if buf.count(b"[", s, e) + buf.count(b"{", s, e) > MAX_OPEN_BRACKETS:
            safe = False
    firsts = data[np.minimum(starts, len(buf) - 1)] if len(buf) else np.array([], np.uint8)
    for i in np.flatnonzero(nonblank & (firsts != ord("{"))):
        if not buf[int(starts[i]) : int(ends[i])].strip().startswith(b"{"):  # pyarrow crashes on some
            safe = False
    return starts, ends, nonblank, safe


def _temporal(t: pa.DataType) -> bool:
    return "timestamp" in str(t) or "date" in str(t)


def _arrow_chunk(buf: bytes, longest: int) -> pa.Table | None:
    import pyarrow.json as pj

    def read(schema: pa.Schema | None = None) -> pa.Table:
        parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
        options = pj.ReadOptions(block_size=max(1 << 20, longest + 2))
        return pj.read_json(pa.BufferReader(pa.py_buffer(buf)), read_options=options, parse_options=parse)

    try:
        table = read()
        if any(_temporal(f.type) for f in table.schema):  # Arrow turns "2020-01-01" into a timestamp: keep text
            if any(_temporal(f.type) and (pa.types.is_nested(f.type)) for f in table.schema):
                return None
            table = read(pa.schema([pa.field(f.name, pa.string()) for f in table.schema if _temporal(f.type)]))
        table.validate(full=True)  # pyarrow.json does not check UTF-8; the Python parser names the bad byte
        return table
    except Exception:  # noqa: BLE001 - any refusal: the Python parser names the row
        return None


def _all_objects(text: str, lines: list[tuple[int, str]]) -> list[tuple[int, dict]] | None:
    """Every line parsed by one json.loads call (much faster than one call per line), or None if any line is
    not exactly one JSON object (then each line is parsed on its own, to name the bad ones)."""
    try:
        rows = json.loads("[" + ",".join(line for _, line in lines) + "]")
    except (ValueError, RecursionError):
        return None
    if len(rows) != len(lines) or not all(isinstance(r, dict) for r in rows):
        return None
    return [(n, r) for (n, _), r in zip(lines, rows)]


def _python_chunk(buf: bytes, first_line: int, label: str) -> tuple[dict[str, Any], np.ndarray, list[Problem]]:
    try:
        text, bad_bytes = buf.decode("utf-8"), False
    except UnicodeDecodeError:  # keep going: bad bytes are reported per row, with the field they are in
        text, bad_bytes = buf.decode("utf-8", errors="surrogateescape"), True
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=first_line) if line.strip()]
    items = None if bad_bytes else _all_objects(text, lines)
    if items is None:
        items = jsonl_rows(text, label, first_line)
    if bad_bytes:
        items = [(n, (utf8_problem(r, label, n) or r) if isinstance(r, dict) else r) for n, r in items]
    rows = [(n, r) for n, r in items if isinstance(r, dict)]
    keys = list(dict.fromkeys(k for _, r in rows for k in r))
    columns = {str(k): _arrow_if_typed([r.get(k) for _, r in rows]) for k in keys}
    numbers = np.fromiter((n for n, _ in rows), dtype=np.int64, count=len(rows))
    return columns, numbers, [r for _, r in items if isinstance(r, Problem)]


def _arrow_if_typed(values: list) -> Any:
    """Arrow when the values have one type (far less memory than Python objects until the chunks are joined)."""
    try:
        return pa.array(values)
    except Exception:  # noqa: BLE001 - mixed values stay Python values
        return values


def _join(parts: list[Any], sizes: list[int]) -> Any:
    """One column from its per-chunk pieces (Arrow array, Python list, or None where a chunk lacks it)."""
    arrays = []
    for part, n in zip(parts, sizes):
        if part is None:
            part = pa.nulls(n)
        elif isinstance(part, list):
            try:
                part = pa.array(part)
            except Exception:  # noqa: BLE001 - mixed values: the whole column is checked in Python
                return _python_column(parts, sizes)
        arrays.append(part)
    types = list(dict.fromkeys(a.type for a in arrays))
    if len(types) > 1:
        try:
            schemas = [pa.schema([("x", t)]) for t in types]
            wide = pa.unify_schemas(schemas, promote_options="permissive").field("x").type
            arrays = [a.cast(wide) for a in arrays]
        except Exception:  # noqa: BLE001 - e.g. numbers in one chunk, text in another
            return _python_column(parts, sizes)
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]  # no copy
    return pa.chunked_array(chunks, type=arrays[0].type) if arrays else pa.chunked_array([], pa.null())


def _python_column(parts: list[Any], sizes: list[int]) -> list:
    out: list = []
    for part, n in zip(parts, sizes):
        out.extend([None] * n if part is None else part if isinstance(part, list) else part.to_pylist())
    return out


def read_jsonl(path: Path, label: str, opener) -> Source:
    pieces: list[tuple[dict[str, Any], int]] = []
    numbers: list[np.ndarray] = []
    problems: list[Problem] = []
    line = 0  # lines before the current chunk
    for buf in _chunks(path, label, opener):
        starts, ends, nonblank, safe = _lines(buf)
        table = _arrow_chunk(buf, int((ends - starts).max(initial=0))) if safe else None
        if table is not None and table.num_rows == int(nonblank.sum()):
            pieces.append(({n: table.column(n) for n in dict.fromkeys(table.column_names)}, table.num_rows))
            numbers.append(line + 1 + np.flatnonzero(nonblank))
        else:
            columns, rows, found = _python_chunk(buf, line + 1, label)
            pieces.append((columns, len(rows)))
            numbers.append(rows)
            problems += found
        line += len(starts)
    names = list(dict.fromkeys(n for columns, _ in pieces for n in columns))
    sizes = [n for _, n in pieces]
    columns = {name: _join([c.get(name) for c, _ in pieces], sizes) for name in names}
    all_numbers = np.concatenate(numbers) if numbers else np.zeros(0, np.int64)
    return Source(label, columns, sum(sizes), problems, all_numbers, path.parent)

"""Malformed inputs of every supported format: each is one `DatasetError` (never another exception, never a
crash), and `skip_bad_rows=True` keeps exactly the good rows of files that are only partly bad."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import shutil
import warnings
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlsd.data import DatasetError, DatasetWarning, load_dataset

GOOD = [{"question": f"What is {i}+1?", "answer": str(i + 1), "solution": f"{i}+1={i + 1}"} for i in range(12)]
GOOD_PROMPTS = [r["question"] for r in GOOD]
COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def deep(n: int, open_: str = "[", close: str = "]") -> str:
    return open_ * n + close * n


# Lines that make one JSONL row bad (the file stays otherwise good).
BAD_LINES = [
    '{"question": "cut in the mid', "[1, 2, 3]", "42", '"just a string"', "null", "{", "}",
    deep(50_000), '{"question": ' + deep(20_000) + ', "answer": "1"}', '{"question": "q", "answer": NaN}',
    '{"question": "q", "answer": Infinity}', '{"question": "q", "answer": 1e999}', '{"question": "", "answer": "1"}',
    '{"question": "q", "answer": ""}', '{"question": "q"}', '{"answer": "1"}', '{"question": "q", "answer": [1]}',
    '{"question": "q", "answer": {"a": 1}}', '{"question": [], "answer": "1"}', '{"question": 7, "answer": "1"}',
    '{"question": [{"role": "wizard", "content": "x"}], "answer": "1"}', '{"question": [{"content": "x"}], "answer": "1"}',
    '{"question": "q", "answer": "1", "solution": [1]}', "\x00\x01\x02", '{"question": "q", "answer": 123456789012345678901234567890, "x": }',
    '{"question": "\\ud800 lone surrogate escape", "answer": 1, ', "{{}}", '{"question": "q" "answer": "1"}',
    '{"question": "q", "answer": "1",}', "[" * 5000 + "{",
]  # fmt: skip


def jsonl_text(rows: list, bad: dict[int, str]) -> bytes:
    lines = [json.dumps(r) for r in rows]
    for at, line in sorted(bad.items(), reverse=True):
        lines.insert(at, line)
    return ("\n".join(lines) + "\n").encode("utf-8", errors="surrogatepass")


def partial_jsonl_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """(id, content): the good rows plus one or more bad lines."""
    cases = [(f"line-{i}", jsonl_text(GOOD, {rng.randrange(len(GOOD)): line})) for i, line in enumerate(BAD_LINES)]
    cases.append(("bad-bytes", jsonl_text(GOOD, {3: "x"}).replace(b'"x"', b'{"question": "caf\xe9", "answer": "1"}')))
    cases.append(("three-bad", jsonl_text(GOOD, {0: BAD_LINES[0], 5: BAD_LINES[7], 9: BAD_LINES[3]})))
    return cases


def whole_file_cases(rng: random.Random, text: bytes) -> list[tuple[str, bytes]]:
    """Files that are bad as a whole (no good row can be trusted)."""
    cases = [("empty", b""), ("bom-only", b"\xef\xbb\xbf"), ("spaces", b" \n\n \n"), ("nul", b"\x00" * 64)]
    cases += [(f"random-{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))) for i in range(6)]
    cases += [("deep-array", deep(100_000).encode()), ("deep-object", ('{"a":' * 50_000 + "1" + "}" * 50_000).encode())]
    cases += [("no-columns", b'{"x": 1}\n{"y": 2}\n'), ("mixed-extra-column", b'{"question":"a?","answer":"1","x":1}\n{"question":"b?","answer":"2","x":"s"}\n')]  # fmt: skip
    return cases


def compressed_cases(rng: random.Random, raw: bytes, kind: str) -> list[tuple[str, bytes]]:
    """Archives that are truncated or have a flipped byte (past the gzip header's mtime/flags)."""
    blob = COMPRESS[kind](raw)
    cases = []
    for i in range(16):
        cut = rng.randrange(1, len(blob) - 1)
        cases.append((f"truncated-{i}", blob[:cut]))
    for i in range(12):
        at = rng.randrange(10, len(blob))
        flipped = bytearray(blob)
        flipped[at] ^= 1 << rng.randrange(8)
        cases.append((f"flipped-{i}", bytes(flipped)))
    cases += [("not-compressed", raw[:200]), ("empty", b""), ("header-only", blob[:10])]
    return cases


def check(path: Path, good: list[str] | None, failures: list[str], case: str) -> None:
    """`good`: the prompts skip_bad_rows must keep (None: the file is bad as a whole)."""
    try:
        load_dataset(path)
        failures.append(f"{case}: loaded without an error")
    except DatasetError as err:
        if "\n" in str(err) and good is None and "rows are invalid" not in str(err):
            failures.append(f"{case}: a file-level error spans several lines: {err}")
    except BaseException as exc:  # noqa: BLE001 - exactly what this test is about
        failures.append(f"{case}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    if good is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DatasetWarning)
            kept = load_dataset(path, skip_bad_rows=True)["train"]["prompt"]
        if kept != good:
            failures.append(f"{case}: skip_bad_rows kept {len(kept)} rows, expected the {len(good)} good ones")
    except BaseException as exc:  # noqa: BLE001
        failures.append(f"{case}: with skip_bad_rows: {type(exc).__name__}: {str(exc)[:200]}")


def csv_text(rows: list, delimiter: str) -> str:
    lines = [delimiter.join(["question", "answer", "solution"])]
    lines += [delimiter.join([r["question"], r["answer"], r["solution"]]) for r in rows]
    return "\n".join(lines) + "\n"


BAD_CSV_ROWS = [
    "only one field", "a{d}b{d}c{d}d", "a{d}b{d}c{d}d{d}e{d}f", "{d}1{d}x", "q{d}{d}x", "q{d}   {d}x", "{d}{d}",
    '"unterminated{d}1{d}x\nnext{d}2{d}y', '"a""b"{d}{d}x', "q{d}1",
]  # fmt: skip


def csv_cases(rng: random.Random, delimiter: str) -> list[tuple[str, bytes, list[str] | None]]:
    cases: list[tuple[str, bytes, list[str] | None]] = []
    for i, bad in enumerate(BAD_CSV_ROWS * 2):
        lines = csv_text(GOOD, delimiter).splitlines()
        lines.insert(rng.randrange(1, len(lines)), bad.format(d=delimiter))
        good = None if bad.startswith('"unterminated') else GOOD_PROMPTS
        cases.append((f"row-{i}", ("\n".join(lines) + "\n").encode(), good))
    lines = csv_text(GOOD, delimiter).encode().splitlines()
    lines.insert(4, f"caf\xe9{delimiter}1{delimiter}x".encode("latin-1"))
    cases.append(("latin1-row", b"\n".join(lines) + b"\n", GOOD_PROMPTS))
    cases += [(f"file-{name}", content, None) for name, content in whole_file_cases(rng, b"")]
    cases += [("header-only", b"question,answer\n", None), ("no-answer-column", b"question,reply\nq?,1\n", None)]
    return cases


def parquet_bytes(rows: list) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def parquet_cases(rng: random.Random) -> list[tuple[str, bytes, list[str] | None]]:
    blob = parquet_bytes(GOOD)
    cases: list[tuple[str, bytes, list[str] | None]] = []
    for i in range(14):
        cases.append((f"truncated-{i}", blob[: rng.randrange(0, len(blob) - 1)], None))
    for i in range(6):
        broken = bytearray(blob)
        broken[len(blob) - 1 - rng.randrange(4)] ^= 0xFF  # the trailing magic
        broken[rng.randrange(4)] ^= 0xFF  # the leading magic
        cases.append((f"bad-magic-{i}", bytes(broken), None))
    cases += [(f"garbage-{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), None) for i in range(5)]
    cases += [("empty", b"", None), ("csv-inside", csv_text(GOOD, ",").encode(), None)]
    bad_values = [{"question": "", "answer": "1"}, {"question": None, "answer": "1"}, {"question": "q", "answer": None},
                  {"question": "q", "answer": "  "}, {"question": "\t", "answer": "2"}]  # fmt: skip
    for i, bad in enumerate(bad_values):
        rows = [dict(r) for r in GOOD]
        rows.insert(rng.randrange(len(rows)), {**bad, "solution": ""})
        cases.append((f"bad-row-{i}", parquet_bytes(rows), GOOD_PROMPTS))
    cases.append(("no-answer-column", parquet_bytes([{"question": "q", "reply": "1"}]), None))
    cases.append(("list-answers", parquet_bytes([{**r, "answer": [1]} for r in GOOD]), None))
    return cases


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.bz2", "jsonl.xz", "json", "json.gz", "csv", "tsv",
                                 "csv.gz", "parquet", "disk"])  # fmt: skip
def test_every_malformed_file_is_one_dataset_error(tmp_path, fmt):
    rng = random.Random(fmt)
    cases: list[tuple[str, bytes, list[str] | None]] = []
    base = fmt.split(".")[0]
    if base == "jsonl":
        cases += [(name, content, GOOD_PROMPTS) for name, content in partial_jsonl_cases(rng)]
        cases += [(name, content, None) for name, content in whole_file_cases(rng, jsonl_text(GOOD, {}))]
    elif base == "json":
        text = json.dumps(GOOD).encode()
        cases += [(f"truncated-{i}", text[: rng.randrange(1, len(text) - 1)], None) for i in range(14)]
        cases += [(name, content, None) for name, content in whole_file_cases(rng, text)]
        tops = ["42", '"s"', "null", '{"a": 1}', '{"data": 5}', '{"a": [1], "b": [1, 2]}', "[1, 2]", "[[]]"]
        cases += [(f"top-{i}", t.encode(), None) for i, t in enumerate(tops)]
        cases.append(("items-not-objects", json.dumps([*GOOD[:6], 5, "x", None, *GOOD[6:]]).encode(), GOOD_PROMPTS))
        cases.append(("nested-item", json.dumps(GOOD).replace("]", ", " + deep(40_000) + "]", 1).encode(), None))
    elif base in ("csv", "tsv"):
        cases += csv_cases(rng, "\t" if base == "tsv" else ",")
    elif base == "parquet":
        cases += parquet_cases(rng)
    suffix = fmt.split(".", 1)[1] if "." in fmt else None
    if suffix:  # the compressed variants: every case above, compressed, plus broken archives
        raw = jsonl_text(GOOD, {}) if base == "jsonl" else json.dumps(GOOD).encode() if base == "json" else csv_text(GOOD, ",").encode()
        cases = [(n, COMPRESS[suffix](c), g) for n, c, g in cases[:12]]
        cases += [(f"{suffix}-{n}", c, None) for n, c in compressed_cases(rng, raw, suffix)]
    failures: list[str] = []
    if fmt == "disk":
        cases_run = _disk_cases(tmp_path, rng, failures)
    else:
        for i, (name, content, good) in enumerate(cases):
            path = tmp_path / f"case{i}.{fmt}"
            path.write_bytes(content)
            check(path, good, failures, f"{fmt}/{name}")
        cases_run = len(cases)
    assert cases_run >= 30, cases_run
    assert not failures, "\n".join(failures)


def _disk_cases(tmp_path: Path, rng: random.Random, failures: list[str]) -> int:
    """Directories written by datasets.save_to_disk, then damaged."""
    good_dir = tmp_path / "good"
    datasets.Dataset.from_list(GOOD).save_to_disk(str(good_dir))
    arrow = next(good_dir.glob("*.arrow")).name
    n = 0

    def case(name: str, damage, good: list[str] | None = None) -> None:
        nonlocal n
        path = tmp_path / f"disk{n}"
        shutil.copytree(good_dir, path)
        damage(path)
        check(path, good, failures, f"disk/{name}")
        n += 1

    for i in range(10):
        case(f"truncated-arrow-{i}", lambda p: _truncate(p / arrow, rng))
    for name in ("dataset_info.json", "state.json"):
        for i, junk in enumerate([b"", b"{", b"[]", b"\xff\xfe", b"null", b'{"features": {"question": {"_type": "Nope"}}}']):
            case(f"{name}-{i}", lambda p, name=name, junk=junk: (p / name).write_bytes(junk))
    case("no-arrow-file", lambda p: (p / arrow).unlink())
    case("arrow-is-garbage", lambda p: (p / arrow).write_bytes(bytes(rng.randrange(256) for _ in range(500))))
    case("empty-dir", lambda p: [f.unlink() for f in p.iterdir()])
    for i, bad in enumerate([{"question": "", "answer": "1", "solution": ""}, {"question": "q", "answer": " ", "solution": ""}]):
        rows = [dict(r) for r in GOOD]
        rows.insert(3 + i, bad)
        case(f"bad-row-{i}", lambda p, rows=rows: _resave(p, rows), GOOD_PROMPTS)
    for i in range(4):
        case(f"flipped-arrow-{i}", lambda p: _flip_header(p / arrow, rng))
    return n


def _truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(0, len(data) - 1)])


def _flip_header(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    for at in range(0, 8):  # the stream's first message length / continuation marker
        data[at] = rng.randrange(256)
    path.write_bytes(bytes(data))


def _resave(path: Path, rows: list) -> None:
    shutil.rmtree(path)
    datasets.Dataset.from_list(rows).save_to_disk(str(path))

"""Load users' problem sets, map their columns onto `prompt` / `answer` / `solution`, validate them.

Why validate up front: a bad row found at step 3,000 of a GPU run costs hours;
found before step 0, it costs one line of output naming the file, the row and
the field. Every problem is collected (not just the first), so one fix-up
pass is enough. Input files are only ever read, and nothing is written beside
them: the result is an in-memory Arrow dataset built by Arrow's own readers.

Output rows: `prompt` (a string, or chat messages `[{"role", "content"}]` when
the input had messages, a `system_prompt` is given, or rows carry images),
`answer` (string), `solution` (string, "" if absent), `images` (a list of
lazily decoded `datasets.Image`s, only when rows carry images), plus every
other original column (rewards may need them, e.g. `tests`). The source
columns that were mapped onto these are not repeated.

Modules: `readers` (files -> Arrow columns), `jsonl` (JSONL in chunks), `source` (the
columns read from one source, shared row-level parsing),
`columns` (mapping and per-column checks), `images` (image rows), `problems`
(errors and the report).
"""

from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from . import columns as C
from .images import ImageRows, check_images
from .problems import FORMATS, SKIP_HINT, DatasetError, DatasetReport, DatasetWarning, Problem, fail, summary
from .readers import read_dataset, read_file
from .source import Source

__all__ = ["DatasetError", "DatasetReport", "DatasetWarning", "Problem", "load_dataset"]


def _read_source(source: Any, split: str | None, from_hub: bool) -> tuple[Source, Source | None]:
    """Rows of the requested split, and rows of a held-out split when a saved DatasetDict has one."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        loaded, label, base = source, "<dataset>", None
    else:
        path, label = Path(source).expanduser(), str(source)
        base = path if path.is_dir() else path.parent
        if from_hub:
            try:
                ds = datasets.load_dataset(str(source), split=split or "train")
            except Exception as exc:  # noqa: BLE001 - network, auth, missing split...
                raise fail(label, f"cannot load from the Hugging Face Hub: {exc}") from None
            return read_dataset(ds, f"{label}[{split or 'train'}]"), None
        if not path.exists():
            raise fail(label, "no such file or directory (for a Hugging Face Hub dataset pass from_hub=True / --from-hub)")
        if not path.is_dir():
            if split not in (None, "train"):
                raise fail(label, f"split={split!r} only applies to saved DatasetDicts and hub datasets, not to one file")
            return read_file(path, label), None
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001
            raise fail(label, f"not a directory saved with datasets.save_to_disk ({exc}); use {FORMATS}") from None
    if isinstance(loaded, datasets.DatasetDict):
        name = split or "train"
        if name not in loaded:
            raise fail(label, f"no split {name!r}; splits: {', '.join(loaded)}")
        held = next((s for s in ("eval", "validation", "test") if s in loaded and s != name), None)
        held_src = read_dataset(loaded[held], f"{label}[{held}]", base) if split is None and held else None
        return read_dataset(loaded[name], f"{label}[{name}]", base), held_src
    return read_dataset(loaded, label, base), None


@dataclass
class _Checked:
    """One source after checking: canonical column values (all rows) and what is wrong with which row."""

    src: Source
    cols: dict[str, str | None]
    prompts: Any
    answers: Any
    solutions: Any
    images: ImageRows | None
    issues: list[C.Issue]

    def keep(self) -> np.ndarray:
        keep = np.ones(self.src.size, dtype=bool)
        keep[[i for i, _, _ in self.issues]] = False
        return keep

    def problems(self) -> list[Problem]:
        src = self.src
        found = [Problem(src.label, src.number(i), message, name) for i, name, message in self.issues]
        return sorted(src.problems + found, key=lambda p: p.row or 0)  # stable: a row's fields keep their order


def _check(src: Source, options: dict, cols: dict | None = None) -> _Checked:
    cols = cols or C.resolve_columns(src, options)
    if not src.size:
        return _Checked(src, cols, [], [], [], None, [])
    n, name = src.size, cols["prompt"]
    prompts, issues = C.check_prompts(src.columns[name], name)
    answers, found = C.check_texts(src.columns[cols["answer"]], cols["answer"], n, required=True)
    issues += found
    solution_values = src.columns[cols["solution"]] if cols["solution"] else None
    solutions, found = C.check_texts(solution_values, cols["solution"], n, required=False)
    issues += found
    if options["prompt_template"] is not None or options["system_prompt"] is not None:
        bad = {i for i, _, _ in issues}
        rows = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
        shaped, found = C.shape_prompts(prompts, src, rows, options, name)
        prompts = C.to_list(prompts)
        for i, prompt in zip(rows, shaped):
            prompts[i] = prompt
        issues += found
    images, prompts, found = check_images(src, cols, prompts, {i for i, _, _ in issues}, options)
    issues += found
    limit = options["max_prompt_chars"]
    if limit is not None:
        bad = {i for i, _, _ in issues}
        sizes = C.prompt_sizes(prompts, bad)
        for i in np.flatnonzero(sizes > limit):
            if int(i) not in bad:
                why = f"{int(sizes[i]):,} characters, over the limit max_prompt_chars={limit:,}"
                issues.append((int(i), name, why))
    return _Checked(src, cols, prompts, answers, solutions, images, issues)


def _keys(ch: _Checked, rows: np.ndarray) -> list[str]:
    """Overlap keys of some rows: prompt text up to spacing and case, plus the identity of its images."""
    prompts = ch.prompts.take(pa.array(rows)).to_pylist() if C.is_arrow(ch.prompts) else [ch.prompts[i] for i in rows]
    keys = [C.prompt_key(p) for p in prompts]
    if ch.images is not None:
        keys = [f"{k}\x00{ch.images.identity(i)}" for k, i in zip(keys, rows)]
    return keys


def _column(values: Any, keep: np.ndarray, label: str, key: str, kind: pa.DataType | None = None) -> pa.Array:
    if C.is_arrow(values):
        return values if keep.all() else values.filter(pa.array(keep))
    kept = [v for v, k in zip(values, keep) if k]
    try:
        return pa.array(kept, kind)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, RecursionError) as exc:
        kinds = {type(v).__name__ for v in kept if v is not None}
        if len(kinds - {"int", "float"}) > 1 or (len(kinds) > 1 and kinds - {"int", "float"}):
            raise fail(label, f"column {key!r} mixes types ({', '.join(sorted(kinds))}); make it one type") from None
        raise fail(label, f"cannot build a dataset from column {key!r}: {str(exc)[:200]}") from None


def _build(ch: _Checked, keep: np.ndarray, chat: bool) -> datasets.Dataset:
    """An in-memory Dataset (so later `.map()` calls never write cache files next to the user's data)."""
    src, mapped = ch.src, {ch.cols["prompt"], ch.cols["answer"], ch.cols["solution"]}
    mapped |= {"prompt", "answer", "solution"}  # the canonical columns replace any source column of that name
    if ch.images is not None:
        mapped |= {ch.images.column, "images"}
    names, arrays = [], []
    for key, values in src.columns.items():
        if key not in mapped:
            names.append(key)
            arrays.append(_column(values, keep, src.label, key))
    prompts = C.as_chat(ch.prompts) if chat else ch.prompts
    for key, values, kind in (
        ("prompt", prompts, None), ("answer", ch.answers, pa.string()), ("solution", ch.solutions, pa.string())
    ):  # fmt: skip
        names.append(key)
        arrays.append(_column(values, keep, src.label, key, kind))
    if ch.images is not None:
        names.append("images")
        arrays.append(ch.images.arrow(keep))
    try:
        table = pa.Table.from_arrays(arrays, names=names)
        features = datasets.Features.from_arrow_schema(table.schema)
        for key in names:
            if key in src.features and key not in mapped and src.features[key].__class__ is not dict:
                features[key] = src.features[key]
        if ch.images is not None:
            features["images"] = datasets.List(datasets.Image())
        fingerprint = _fingerprint(src, table, keep)  # datasets would otherwise pickle the whole table to hash it
        return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=fingerprint)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow/datasets raise several types for odd columns
        raise fail(src.label, f"cannot build a dataset: {str(exc)[:300]}") from None


def _fingerprint(src: Source, table: pa.Table, keep: np.ndarray) -> str:
    """A cheap, deterministic identity: the source (and its file's size and mtime), the schema, the kept rows."""
    digest = hashlib.sha256(f"{src.label}|{table.schema}|{table.num_rows}".encode())
    try:
        stat = Path(src.label).stat()
        digest.update(f"{stat.st_size}|{stat.st_mtime_ns}".encode())
    except (OSError, ValueError):
        pass
    digest.update(np.packbits(keep).tobytes())
    return digest.hexdigest()[:16]


def load_dataset(
    path_or_name: str | Path | datasets.Dataset | datasets.DatasetDict,
    *,
    split: str | None = None,
    eval_path: str | Path | None = None,
    eval_fraction: float | None = None,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    solution_column: str | None = None,
    image_column: str | None = None,
    allow_image_urls: bool = False,
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
    `split`, `eval_path` or `eval_fraction` is given. Rows may carry images
    (`image`/`images` column, or image blocks in chat prompts; see docs/datasets.md).
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
        image_column=image_column, allow_image_urls=allow_image_urls,
    )  # fmt: skip
    train_src, held_src = _read_source(path_or_name, split, from_hub)
    if eval_path is not None:
        held_src = _read_source(eval_path, None, False)[0]
    elif eval_fraction is not None:
        held_src = None
    train = _check(train_src, options)
    held = _check(held_src, options) if held_src is not None else None
    if held is not None and held.src.size:
        keep, rows = train.keep(), held.keep()
        first_seen: dict[str, int] = {}
        for key, i in zip(_keys(train, np.flatnonzero(keep)), np.flatnonzero(keep)):
            first_seen.setdefault(key, train_src.number(int(i)))
        for key, i in zip(_keys(held, np.flatnonzero(rows)), np.flatnonzero(rows)):
            if key in first_seen:
                why = f"same prompt as {train_src.label}:{first_seen[key]} (train and eval must not overlap)"
                held.issues.append((int(i), train.cols["prompt"], why))
    checked = [c for c in (train, held) if c is not None]
    problems = [p for c in checked for p in c.problems()]
    total = sum(c.src.total for c in checked)
    bad_rows = len({(p.file, p.row) for p in problems})
    report = DatasetReport([c.src.label for c in checked], train.cols, total, bad_rows if skip_bad_rows else 0)
    if problems:
        if not skip_bad_rows:
            raise DatasetError(summary(f"{bad_rows} of {total} rows are invalid; {SKIP_HINT}:", problems))
        report.problems = problems
        warnings.warn(DatasetWarning(summary(f"dropped {bad_rows} of {total} rows as invalid:", problems)), stacklevel=2)
    train_keep = train.keep()
    if not train_keep.any():
        raise fail(train_src.label, "no usable rows")
    held_keep = held.keep() if held is not None else None
    chat = any(C.is_chat(c.prompts, c.keep()) or c.images is not None for c in checked if c.src.size)
    if eval_fraction is not None:
        train_keep, held_keep = _split(train, train_keep, eval_fraction, seed)
        held = train
    result = datasets.DatasetDict({"train": _build(train, train_keep, chat)})
    if held is not None and held_keep is not None and held_keep.any():
        result["eval"] = _build(held, held_keep, chat)
    result.report = report  # type: ignore[attr-defined]
    return result


def _split(ch: _Checked, keep: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a fraction of the distinct prompts; repeats of a prompt stay on the same side."""
    rows = np.flatnonzero(keep)
    row_keys = _keys(ch, rows)
    keys = list(dict.fromkeys(row_keys))
    if len(keys) < 2:
        raise fail(ch.src.label, f"cannot hold out eval_fraction={fraction}: fewer than 2 distinct prompts")
    random.Random(seed).shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    held_keys = set(keys[:n_eval])
    in_eval = np.zeros(len(keep), dtype=bool)
    in_eval[rows[[k in held_keys for k in row_keys]]] = True
    return keep & ~in_eval, in_eval

"""What can be wrong with a dataset, and how it is reported: one `FILE:ROW: field 'X': ...` line per problem."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LISTED = 20
FORMATS = (
    ".jsonl, .json, .csv, .tsv, .parquet (optionally .gz, .bz2 or .xz), "
    "or a directory saved with datasets.save_to_disk"
)
SKIP_HINT = "pass skip_bad_rows=True (CLI: --skip-bad-rows) to drop them"


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


def fail(label: str, message: str) -> DatasetError:
    return DatasetError(f"{label}: {message}")


def summary(headline: str, problems: list[Problem]) -> str:
    lines = [headline]
    lines += [f"  {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more problems")
    return "\n".join(lines)

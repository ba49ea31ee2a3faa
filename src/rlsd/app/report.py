"""Run reports from logged metrics alone: curves (PNG), a summary table, a Markdown page.

A run directory holds `metrics.jsonl` (one JSON object per trainer log) and,
optionally, `run_config.json` or `config.yaml` naming the `algorithm`. Reports
read nothing else, so they work on runs that were killed half-way (a truncated
last line is skipped) and on runs copied from another machine without
checkpoints.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..credit.records import CREDIT_FILE
from ..runlog import read_records
from .inspect import write_page
from .plotting import pyplot

METRICS_FILE = "metrics.jsonl"
CONFIG_FILES = ("run_config.json", "config.yaml", "config.yml")

# Canonical metric -> names it may be logged under (TRL, HF Trainer's `eval_` prefix, SPEC.md suggestions).
ALIASES: dict[str, tuple[str, ...]] = {
    "reward": ("reward", "reward/mean"),
    "eval/accuracy": ("eval/accuracy", "eval_accuracy"),
    "completions/mean_length": ("completions/mean_length", "completion_length"),
}

# name of the PNG -> (title, metrics plotted in it, one subplot each)
REPORT_PLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reward": ("Training reward", ("reward",)),
    "heldout_accuracy": ("Held-out accuracy", ("eval/accuracy",)),
    "rlsd_weights": ("RLSD token weights", ("rlsd/weight_mean", "rlsd/clip_low_frac", "rlsd/clip_high_frac")),
    "teacher_time": ("Teacher pass share of step time", ("teacher/time_frac",)),
    "response_length": ("Completion length", ("completions/mean_length",)),
}

PathLike = str | os.PathLike


# ---- reading ----------------------------------------------------------------------------------------------------
def load_metrics(run_dir: PathLike) -> list[dict[str, Any]]:
    """Every parsable log line of `run_dir/metrics.jsonl` (a path to the file itself works too), in order.

    Unparsable lines (a run killed mid-write) and non-object lines are skipped, not fatal: a report of a
    crashed run is exactly when one is needed.
    """
    return read_records(run_dir, METRICS_FILE)


def load_saved_config(run_dir: PathLike) -> dict[str, Any]:
    """The run's saved config (`run_config.json`, else `config.yaml`), or {} when there is none or it is unreadable."""
    for name in CONFIG_FILES:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                config = json.loads(text)
            else:
                import yaml

                config = yaml.safe_load(text)
        except Exception:  # a broken config must not stop the report: fall back to the directory name
            continue
        if isinstance(config, dict):
            return config
    return {}


def run_algorithm(run_dir: PathLike) -> str | None:
    """`algorithm` from the run's config, looking one level into nested sections (e.g. `training:`)."""
    config = load_saved_config(run_dir)
    if isinstance(config.get("algorithm"), str):
        return config["algorithm"]
    for value in config.values():
        if isinstance(value, dict) and isinstance(value.get("algorithm"), str):
            return value["algorithm"]
    return None


def run_label(run_dir: PathLike) -> str:
    """The algorithm name (`X+contrast` with a teacher contrast) if the run recorded it, else the directory name."""
    algorithm = run_algorithm(run_dir)
    if algorithm is None:
        return Path(run_dir).resolve().name
    config = load_saved_config(run_dir)
    sections = [config, *(v for v in config.values() if isinstance(v, dict))]
    contrast = next((s["teacher_contrast"] for s in sections if isinstance(s.get("teacher_contrast"), str)), "none")
    return algorithm if contrast == "none" else f"{algorithm}+contrast"


def run_labels(run_dirs: Sequence[PathLike]) -> list[str]:
    """`run_label` for each run, with the directory name added where two runs would share a label."""
    labels = [run_label(d) for d in run_dirs]
    return [f"{label} ({Path(d).resolve().name})" if labels.count(label) > 1 and label != Path(d).resolve().name
            else label for label, d in zip(labels, run_dirs)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """The finite numeric value of `metric` (or one of its aliases) in one log record, else None."""
    for name in ALIASES.get(metric, (metric,)):
        value = _number(record.get(name))
        if value is not None:
            return value
    return None


def series(records: Iterable[dict[str, Any]], metric: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `metric`; records without a `step` use their position, so x always increases."""
    steps, values = [], []
    for index, record in enumerate(records):
        value = metric_value(record, metric)
        if value is None:
            continue
        step = _number(record.get("step"))
        steps.append(step if step is not None else float(index))
        values.append(value)
    return steps, values


# ---- plots ------------------------------------------------------------------------------------------------------
SMOOTHED = ("reward",)  # per-step metrics drawn raw (faint) with a moving average over them
SMOOTHING_WINDOW = 10


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start), same length as `values`."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_panels(runs: list[tuple[str, list[dict]]], out_png: PathLike, metrics: Sequence[str],
                 title: str | None = None) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        plotted = 0
        for label, records in runs:
            steps, values = series(records, metric)
            if not values:
                continue
            if metric in SMOOTHED and len(values) >= 2 * SMOOTHING_WINDOW:
                # Per-step values are noisy: the raw line faint, a trailing moving average on top in the same colour.
                raw, = ax.plot(steps, values, alpha=0.3, linewidth=0.8)
                ax.plot(steps, moving_average(values, SMOOTHING_WINDOW), color=raw.get_color(),
                        label=f"{label} ({SMOOTHING_WINDOW}-step mean)")
            else:
                ax.plot(steps, values, marker="o" if len(values) < 20 else None, markersize=3, label=label)
            plotted += 1
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_curves(run_dirs: Sequence[PathLike], out_png: PathLike,
                metrics: Sequence[str] = ("eval/accuracy", "reward"), title: str | None = None) -> Path:
    """One PNG, one subplot per metric, one line per run (x = step). Runs lacking a metric are left out of it."""
    runs = list(zip(run_labels(run_dirs), [load_metrics(d) for d in run_dirs]))
    return _plot_panels(runs, out_png, metrics, title)


def plot_report(run_dirs: Sequence[PathLike], out_dir: PathLike) -> dict[str, Path]:
    """The standard figures (see `REPORT_PLOTS`) as `out_dir/<name>.png`; figures no run has data for are skipped."""
    runs = list(zip(run_labels(run_dirs), [load_metrics(d) for d in run_dirs]))
    written = {}
    for name, (title, metrics) in REPORT_PLOTS.items():
        if not any(series(records, m)[1] for _, records in runs for m in metrics):
            continue
        written[name] = _plot_panels(runs, Path(out_dir) / f"{name}.png", metrics, title)
    return written


# ---- summary ----------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_run(run_dir: PathLike, last_n: int = 5, label: str | None = None) -> dict[str, Any]:
    """One run's headline numbers; a number the run never logged is None.

    final_reward is the mean of the last `last_n` logged rewards (single logs are noisy); step time and
    teacher share are plain means over all logs; peak memory is the maximum logged.
    """
    records = load_metrics(run_dir)
    _, accuracy = series(records, "eval/accuracy")  # in log order, which is step order
    _, rewards = series(records, "reward")
    steps = [s for s in (_number(r.get("step")) for r in records) if s is not None]
    memory = series(records, "memory/peak_mb")[1]
    return {
        "run": label or run_label(run_dir),
        "algorithm": run_algorithm(run_dir),
        "run_dir": str(run_dir),
        "steps": int(max(steps)) if steps else len(records),
        "num_logs": len(records),
        "first_heldout_accuracy": accuracy[0] if accuracy else None,
        "final_heldout_accuracy": accuracy[-1] if accuracy else None,
        "best_heldout_accuracy": max(accuracy) if accuracy else None,
        "final_reward": _mean(rewards[-last_n:]),
        "mean_step_time": _mean(series(records, "step_time")[1]),
        "peak_memory_mb": max(memory) if memory else None,
        "mean_teacher_time_frac": _mean(series(records, "teacher/time_frac")[1]),
    }


def summarize(run_dirs: Sequence[PathLike], last_n: int = 5) -> list[dict[str, Any]]:
    """`summarize_run` for each run, labels made unique."""
    return [summarize_run(d, last_n, label) for d, label in zip(run_dirs, run_labels(run_dirs))]


# (summary key, column header, format)
TABLE_COLUMNS = (
    ("run", "run", "{}"),
    ("steps", "steps", "{}"),
    ("first_heldout_accuracy", "held-out acc (first)", "{:.3f}"),
    ("final_heldout_accuracy", "held-out acc (final)", "{:.3f}"),
    ("best_heldout_accuracy", "held-out acc (best)", "{:.3f}"),
    ("final_reward", "final reward", "{:.3f}"),
    ("mean_step_time", "step time (s)", "{:.3f}"),
    ("peak_memory_mb", "peak memory (MB)", "{:.0f}"),
    ("mean_teacher_time_frac", "teacher time share", "{:.1%}"),
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of `summarize` rows; missing numbers show as an em dash."""
    lines = ["| " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join(" --- " if k == "run" else " ---: " for k, _, _ in TABLE_COLUMNS) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            value = row.get(key)
            cells.append("—" if value is None else fmt.format(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown_summary(run_dirs: Sequence[PathLike], out_md: PathLike, title: str = "RLSD run report",
                           images: Iterable[PathLike] | None = None, summary: Sequence[dict] | None = None) -> Path:
    """A Markdown page: the summary table, then each figure linked by a path relative to the page.

    `images` defaults to the PNGs already in the page's folder (what `plot_report` wrote there).
    """
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    rows = list(summary) if summary is not None else summarize(run_dirs)
    images = sorted(out_md.parent.glob("*.png")) if images is None else [Path(p) for p in images]
    parts = [f"# {title}", "", markdown_table(rows), "", "Runs:", ""]
    parts += [f"- `{row['run']}`: `{row['run_dir']}`" for row in rows]
    if images:
        parts += ["", "## Curves", ""]
        for image in images:
            rel = Path(os.path.relpath(Path(image).resolve(), out_md.parent.resolve())).as_posix()
            parts += [f"![{Path(image).stem}]({rel})", ""]
    out_md.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return out_md


def report(run_dirs: PathLike | Sequence[PathLike], out_dir: PathLike, title: str = "RLSD run report") -> dict[str, Any]:
    """Figures, `summary.json` and `report.md` in `out_dir` for one or more runs; returns what it wrote."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_report(run_dirs, out_dir)
    curves = plot_curves(run_dirs, out_dir / "curves.png", title="Held-out accuracy and reward")
    rows = summarize(run_dirs)
    summary_json = out_dir / "summary.json"
    summary_json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    images = [curves, *plots.values()]
    markdown = write_markdown_summary(run_dirs, out_dir / "report.md", title=title, images=images, summary=rows)
    credit_pages = _write_credit_pages(run_dirs, out_dir, markdown)
    return {"plots": {"curves": curves, **plots}, "summary": rows, "summary_json": summary_json, "markdown": markdown,
            "credit_pages": credit_pages}


def _write_credit_pages(run_dirs: Sequence[PathLike], out_dir: Path, markdown: Path) -> list[Path]:
    """`rlsd inspect` pages of the runs that recorded per-token credit, linked at the end of the report."""
    pages = []
    for run_dir, label in zip(run_dirs, run_labels(run_dirs)):
        if (Path(run_dir) / CREDIT_FILE).is_file():
            slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
            pages.append((label, write_page(run_dir, out_dir / f"credit-{slug}.html")))
    if pages:
        links = [f"- [{label}]({page.name})" for label, page in pages]
        text = markdown.read_text(encoding="utf-8").rstrip() + "\n\n## Per-token credit (`rlsd inspect`)\n\n"
        markdown.write_text(text + "\n".join(links) + "\n", encoding="utf-8")
    return [page for _, page in pages]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m rlsd.app.report RUN_DIR [RUN_DIR ...] --out DIR`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report for one run)")
    parser.add_argument("--title", default="RLSD run report")
    args = parser.parse_args(argv)
    out = args.out or (str(Path(args.run_dirs[0]) / "report") if len(args.run_dirs) == 1 else "report")
    result = report(args.run_dirs, out, title=args.title)
    print(markdown_table(result["summary"]))
    print(f"\nreport: {result['markdown']}")


if __name__ == "__main__":
    main()


__all__ = ["load_metrics", "load_saved_config", "run_label", "run_labels", "series", "plot_curves", "plot_report",
           "summarize", "summarize_run", "markdown_table", "write_markdown_summary", "report"]

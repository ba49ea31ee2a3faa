"""Statistics and tables for `benchmarks/learning.py`: curves over seeds and warm starts, 95% intervals, pairs.

A run is one (task, warm start, variant, seed); its curve is held-out greedy accuracy at the evaluated steps
(step 0 = before RL). Everything here is a pure function of those curves, so it is tested without training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Curve = list[tuple[float, float]]  # (step, held-out accuracy)

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.96 is within 2%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of its 95% t-interval); half-width None with fewer than 2 values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    if len(values) < 2:
        return statistics.mean(values), None
    return statistics.mean(values), t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def mean_curve(curves: Sequence[Curve]) -> list[tuple[float, float, float, float]]:
    """(step, mean, min, max) over runs, at the steps every run logged."""
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    return [(s, statistics.mean(v), min(v), max(v)) for s, v in sorted(by_step.items()) if len(v) == len(curves)]


def final(curve: Curve) -> float:
    return curve[-1][1]


def best(curve: Curve) -> float:
    return max(v for _, v in curve)


def late(curve: Curve, fraction: float = 0.4) -> float:
    """Mean over the last `fraction` of the steps: less noisy than the last point alone."""
    last = curve[-1][0]
    return statistics.mean(v for step, v in curve if step >= (1 - fraction) * last)


def curve_mean(curve: Curve) -> float:
    """Mean held-out accuracy over the evaluations after step 0 (the area under the curve, per step): higher when a
    method learns faster even if the finals tie."""
    return statistics.mean(v for step, v in curve if step > 0)


def steps_to_reach(curve: list[tuple[float, float, float, float]], target: float) -> float | None:
    """First step > 0 where the mean curve reaches `target` (step 0 is the warm start, not progress)."""
    return next((step for step, mean, _, _ in curve if step > 0 and mean >= target - 1e-9), None)


def baseline_target(baseline_curves: Sequence[Curve]) -> float | None:
    """The baseline's final mean accuracy, if it improved on its start; else None (nothing to reach)."""
    curve = mean_curve(baseline_curves)
    if len(curve) < 2 or curve[-1][1] <= curve[0][1] + 1e-9:
        return None
    return curve[-1][1]


def summarize(runs: dict[str, dict[object, Curve]], baseline: str = "grpo") -> list[dict]:
    """One row per variant over all its runs. `runs[variant][(warm_start, seed)] = curve`."""
    target = baseline_target(list(runs[baseline].values())) if baseline in runs else None
    rows = []
    for name, by_key in runs.items():
        curves = [c for c in by_key.values() if c]
        means = mean_curve(curves)
        row = {"variant": name, "runs": len(curves), "start": means[0][1] if means else None}
        for stat, fn in (("final", final), ("best", best), ("late", late)):
            row[f"{stat}_mean"], row[f"{stat}_ci"] = mean_ci([fn(c) for c in curves])
        row["final_min"] = min((final(c) for c in curves), default=None)
        row["final_max"] = max((final(c) for c in curves), default=None)
        row["steps_to_baseline_final"] = steps_to_reach(means, target) if target is not None else None
        rows.append(row)
    return rows


def paired_differences(runs: dict[str, dict[object, Curve]], variant: str, baseline: str = "grpo") -> dict | None:
    """`variant - baseline` over runs sharing (warm start, seed): same checkpoint, seed and data order."""
    if variant not in runs or baseline not in runs:
        return None
    keys = sorted(set(runs[variant]) & set(runs[baseline]), key=str)
    if not keys:
        return None
    out: dict = {"variant": variant, "baseline": baseline, "pairs": len(keys)}
    for stat, fn in (("final", final), ("late", late), ("curve", curve_mean)):
        diffs = [fn(runs[variant][k]) - fn(runs[baseline][k]) for k in keys]
        out[f"{stat}_diff"], out[f"{stat}_ci"] = mean_ci(diffs)
        out[f"{stat}_wins"] = sum(d > 1e-9 for d in diffs)
        out[f"{stat}_losses"] = sum(d < -1e-9 for d in diffs)
        out[f"{stat}_per_pair"] = {str(k): round(d, 4) for k, d in zip(keys, diffs)}
    return out


def _fmt(value, spec=".3f") -> str:
    return "—" if value is None else format(value, spec)


def _with_ci(mean, half) -> str:
    return _fmt(mean) if half is None else f"{_fmt(mean)} ± {_fmt(half)}"


def task_markdown(task: str, warm_starts: list[dict], summary: list[dict], per_warm_start: dict[str, list[dict]],
                  pairs: list[dict], teacher_stats: dict[str, dict], baseline: str = "grpo",
                  notes: Sequence[str] = ()) -> str:
    """The Markdown section of one task: warm starts, pooled table, per warm start, paired differences."""
    lines = [f"### {task}", ""]
    lines += [*notes, ""] if notes else []
    lines += ["| warm start (SFT seed) | held-out acc. | in band | with reference in prompt | SFT steps |",
              "| --- | ---: | --- | ---: | ---: |"]
    for ws in warm_starts:
        lines.append(f"| {ws['name']} | {_fmt(ws['accuracy'])} | {'yes' if ws['in_band'] else 'NO'} "
                     f"| {_fmt(ws.get('with_reference'))} | {ws['steps']} |")
    target_note = ("" if any(r["steps_to_baseline_final"] is not None for r in summary)
                   else f" ({baseline} did not end above its start, so there is no final of {baseline}'s to reach)")
    lines += ["", f"All warm starts and seeds pooled; ± is the 95% t-interval of the mean over runs{target_note}.", "",
              "| variant | runs | acc. at start | final | final min–max | best | last 40% of steps "
              f"| steps to {baseline}'s final |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary:
        lines.append(f"| {r['variant']} | {r['runs']} | {_fmt(r['start'])} | {_with_ci(r['final_mean'], r['final_ci'])} "
                     f"| {_fmt(r['final_min'])}–{_fmt(r['final_max'])} | {_with_ci(r['best_mean'], r['best_ci'])} "
                     f"| {_with_ci(r['late_mean'], r['late_ci'])} | {_fmt(r['steps_to_baseline_final'], '.0f')} |")
    if len(per_warm_start) > 1:
        lines += ["", "Per warm start (final held-out accuracy, mean ± 95% interval over seeds):", "",
                  "| variant | " + " | ".join(per_warm_start) + " |",
                  "| --- | " + " | ".join("---:" for _ in per_warm_start) + " |"]
        names = [r["variant"] for r in summary]
        for name in names:
            cells = []
            for rows in per_warm_start.values():
                row = next((r for r in rows if r["variant"] == name), None)
                cells.append(_with_ci(row["final_mean"], row["final_ci"]) if row else "—")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "Paired difference variant − baseline (same warm start, seed and data order), mean ± 95% "
                  "interval over pairs; wins/losses count the pairs (variants of RLSD are also paired with rlsd):", "",
                  "| variant | − baseline | pairs | final diff. | wins/losses (final) | last-40% diff. | wins/losses (late) "
                  "| whole-curve diff. | wins/losses (curve) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in pairs:
            lines.append(f"| {p['variant']} | {p['baseline']} | {p['pairs']} | {_with_ci(p['final_diff'], p['final_ci'])} "
                         f"| {p['final_wins']}/{p['final_losses']} | {_with_ci(p['late_diff'], p['late_ci'])} "
                         f"| {p['late_wins']}/{p['late_losses']} | {_with_ci(p['curve_diff'], p['curve_ci'])} "
                         f"| {p['curve_wins']}/{p['curve_losses']} |")
        lines += ["", "Whole-curve: the mean of every evaluation after step 0 (learning speed as well as the end)."]
    if teacher_stats:
        lines += ["", "What the teacher's token weights did (means over all logged steps of all runs):", "",
                  "| variant | delta mean | delta std | weight mean | clipped low | clipped high | teacher time frac. |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, s in teacher_stats.items():
            lines.append(f"| {name} | {_fmt(s.get('rlsd/delta_mean'), '.4f')} | {_fmt(s.get('rlsd/delta_std'), '.4f')} "
                         f"| {_fmt(s.get('rlsd/weight_mean'), '.4f')} | {_fmt(s.get('rlsd/clip_low_frac'))} "
                         f"| {_fmt(s.get('rlsd/clip_high_frac'))} | {_fmt(s.get('teacher/time_frac'))} |")
    return "\n".join(lines) + "\n"

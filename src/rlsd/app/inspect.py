"""`rlsd inspect`: per-token credit pages from a run's `credit.jsonl` (see `rlsd.credit.records`).

One self-contained HTML file (inline CSS and a few lines of inline JS for the step selector, nothing fetched):
per recorded step, a summary of where RLSD's weights clipped, then per group the student prompt, the
privileged reference, and each completion with its reward and sequence advantage and its tokens coloured by
the recorded signal (RLSD: the weight w_t on a diverging scale around 1.0; OPSD/OPD: the per-token
divergence or teacher-minus-student log-prob around 0). Hovering a token shows every recorded value.
`plot_group` draws one group as a PNG for READMEs.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..credit.records import CREDIT_FILE, load_credit_records
from .plotting import pyplot

PAGE_FILE = "credit.html"
PNG_FILE = "credit_group.png"
# Diverging colours: below the neutral value (damped credit/blame) blue, above it (amplified) orange.
LOW_RGB, MID_RGB, HIGH_RGB = (49, 110, 198), (255, 255, 255), (226, 106, 20)
SIGNAL_LABELS = {
    "weight": "RLSD weight w_t",
    "delta": "delta_t = q_t - s_old_t",
    "token_advantage": "token advantage A_t",
    "teacher_minus_student": "teacher - student log-prob",
    "divergence": "per-token divergence D(teacher || student)",
}


# ---- colour scale -------------------------------------------------------------------------------------------
def colour_scale(records: Sequence[dict[str, Any]]) -> tuple[str | None, float, float]:
    """(signal name, neutral value, half-width) shared by a set of records.

    RLSD weights use the clip range eps_w as half-width, so the scale's ends mean "clipped"; other signals
    use the largest distance from the neutral value that occurs.
    """
    name = next((r.get("color") for r in records if r.get("color")), None)
    if name is None:
        return None, 0.0, 1.0
    center = float(next((r.get("center") for r in records if r.get("color") == name), 0.0) or 0.0)
    if name == "weight":
        eps = next((r.get("params", {}).get("eps_w") for r in records if r.get("params")), None)
        if eps:
            return name, center, float(eps)
    spread = [abs(v - center) for r in records for c in r["completions"]
              for v in c.get("signals", {}).get(name, []) if v is not None]
    return name, center, max(spread, default=0.0) or 1.0


def colour(value: float | None, center: float, half_width: float) -> str:
    """Hex colour of `value` on the diverging scale; None (no signal) is light grey."""
    if value is None or not math.isfinite(value):
        return "#eeeeee"
    t = max(-1.0, min(1.0, (value - center) / half_width))
    end = HIGH_RGB if t > 0 else LOW_RGB
    rgb = [round(m + abs(t) * (e - m)) for m, e in zip(MID_RGB, end)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


# ---- summaries ----------------------------------------------------------------------------------------------
def clip_summary(records: Sequence[dict[str, Any]], tolerance: float = 1e-3) -> dict[str, Any]:
    """Where RLSD weights sat at their clip bounds, over tokens of completions with A != 0.

    Returns counts of acting tokens, shares clipped low/high split by correct (A > 0) and wrong (A < 0)
    completions, the share of clipped tokens in the first/middle/last third of their completion, and the
    most often clipped token pieces. Empty when the records hold no RLSD weights.
    """
    out: dict[str, Any] = {}
    position = Counter()
    pieces = Counter()
    for record in records:
        eps = (record.get("params") or {}).get("eps_w")
        if eps is None:
            continue
        low, high = 1.0 - eps + tolerance, 1.0 + eps - tolerance
        for completion in record["completions"]:
            weights = completion.get("signals", {}).get("weight")
            adv = completion.get("advantage") or 0.0
            if not weights or adv == 0:
                continue
            side = "correct" if adv > 0 else "wrong"
            stats = out.setdefault(side, {"tokens": 0, "clip_low": 0, "clip_high": 0})
            n = len(weights)
            for i, (w, piece) in enumerate(zip(weights, completion["tokens"])):
                if w is None:
                    continue
                stats["tokens"] += 1
                clipped = "clip_low" if w <= low else "clip_high" if w >= high else None
                if clipped:
                    stats[clipped] += 1
                    position[("first", "middle", "last")[min(3 * i // max(n, 1), 2)]] += 1
                    pieces[piece] += 1
    total_clipped = sum(position.values())
    if out:
        out["position"] = {k: position[k] / total_clipped if total_clipped else 0.0
                           for k in ("first", "middle", "last")}
        out["top_pieces"] = pieces.most_common(5)
    return out


# ---- HTML ---------------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}h3{font-size:1em}
pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap;margin:.3em 0}
.completion{display:flex;gap:1em;align-items:flex-start;margin:.4em 0;padding:.3em;border-left:4px solid #ccc}
.completion.pos{border-left-color:#2a9d4b}.completion.neg{border-left-color:#c0392b}
.meta{min-width:9.5em;font-size:.85em;font-variant-numeric:tabular-nums}
.tokens{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;line-height:1.7;word-break:break-all}
.tok{padding:1px 0;border-radius:2px}.tok:hover{outline:1px solid #000}
#legend{display:flex;align-items:center;gap:.6em;margin:.8em 0;font-size:.85em}
#legend .bar{width:240px;height:14px;border:1px solid #999}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
"""

SCRIPT = """
function showStep(v){document.querySelectorAll('section.step').forEach(function(s){
 s.style.display=(v==='all'||s.dataset.step===v)?'':'none';});}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _visible(piece: str) -> str:
    """Newlines stay line breaks but get a visible mark; a token of pure spaces stays visible by its colour."""
    return html.escape(piece.replace("\n", "\u21b5\n"))


def _token_spans(completion: dict[str, Any], name: str | None, center: float, half_width: float) -> str:
    signals = completion.get("signals") or {}
    spans = []
    for i, piece in enumerate(completion["tokens"]):
        values = {k: (v[i] if i < len(v) else None) for k, v in signals.items()}
        value = values.get(name) if name else None
        tip = " | ".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "no per-token signal recorded"
        data = "".join(f' data-{k.replace("_", "-")}="{_fmt(v)}"' for k, v in values.items())
        spans.append(f'<span class="tok" style="background:{colour(value, center, half_width)}" '
                     f'title="{html.escape(repr(piece))}: {html.escape(tip)}"{data}>{_visible(piece)}</span>')
    return "".join(spans)


def _legend(name: str | None, center: float, half_width: float) -> str:
    if name is None:
        return ('<div id="legend"><span>No per-token signal recorded (GRPO: every token gets the sequence '
                'advantage A).</span></div>')
    stops = ",".join(colour(center + half_width * t / 4, center, half_width) for t in range(-4, 5))
    label = SIGNAL_LABELS.get(name, name)
    meaning = ("blue: the teacher damped this token's credit/blame; orange: it amplified it (ends of the bar = "
               "clipped)" if name == "weight" else "blue: below the neutral value; orange: above it")
    return (f'<div id="legend"><b>{html.escape(label)}</b><span>{center - half_width:.3g}</span>'
            f'<span class="bar" style="background:linear-gradient(to right,{stops})"></span>'
            f'<span>{center + half_width:.3g}</span><span>(neutral {center:g}) {meaning}</span></div>')


def _clip_table(summary: dict[str, Any]) -> str:
    if not summary:
        return ""
    rows = ["<tr><th>completions</th><th>acting tokens</th><th>clipped low</th><th>clipped high</th></tr>"]
    for side in ("correct", "wrong"):
        s = summary.get(side)
        if s:
            n = max(s["tokens"], 1)
            rows.append(f"<tr><td>{side} (A {'>' if side == 'correct' else '<'} 0)</td><td>{s['tokens']}</td>"
                        f"<td>{s['clip_low'] / n:.1%}</td><td>{s['clip_high'] / n:.1%}</td></tr>")
    pos = summary.get("position", {})
    where = ", ".join(f"{k} third {v:.0%}" for k, v in pos.items())
    top = ", ".join(f"{html.escape(repr(p))} ({c})" for p, c in summary.get("top_pieces", []))
    return (f'<div class="clip-summary"><h3>Where weights clipped</h3><table>{"".join(rows)}</table>'
            f"<p>Clipped tokens by position: {where or '—'}. Most often clipped: {top or '—'}.</p></div>")


def _group_html(record: dict[str, Any], name: str | None, center: float, half_width: float) -> str:
    reference = record.get("reference") or {}
    ref = "\n".join(f"{k}: {v}" for k, v in reference.items()) or "(none)"
    parts = [f'<div class="group" data-group="{record.get("group")}"><h3>Group {record.get("group")}</h3>',
             f"<div><b>Student prompt</b><pre class=\"prompt\">{html.escape(str(record.get('prompt', '')))}</pre></div>",
             f"<div><b>Privileged reference (teacher only)</b><pre class=\"reference\">{html.escape(ref)}</pre></div>"]
    for index, completion in enumerate(record["completions"]):
        adv = completion.get("advantage") or 0.0
        cls = "pos" if adv > 0 else "neg" if adv < 0 else ""
        note = " (truncated)" if completion.get("truncated") else ""
        parts.append(
            f'<div class="completion {cls}" data-index="{index}" data-n-tokens="{len(completion["tokens"])}">'
            f'<div class="meta">reward {_fmt(completion.get("reward"))}<br>advantage {_fmt(adv)}<br>'
            f'{len(completion["tokens"])} tokens{note}</div>'
            f'<div class="tokens">{_token_spans(completion, name, center, half_width)}</div></div>')
    parts.append("</div>")
    return "".join(parts)


def render_page(records: Sequence[dict[str, Any]], title: str = "rlsd: per-token credit") -> str:
    """The whole page as one HTML string (one section per recorded step, newest first)."""
    name, center, half_width = colour_scale(records)
    steps = sorted({int(r.get("step", 0)) for r in records}, reverse=True)
    algorithms = sorted({str(r.get("algorithm")) for r in records})
    options = "".join(f'<option value="{s}">step {s}</option>' for s in steps)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(records)} groups from {len(steps)} recorded steps; algorithm: {', '.join(algorithms)}. "
            "Hover a token for its recorded values. Left border: green A &gt; 0, red A &lt; 0.</p>",
            _legend(name, center, half_width)]
    if len(steps) > 1:
        body.append(f'<label>Step: <select id="step-select" onchange="showStep(this.value)">'
                    f'<option value="all">all</option>{options}</select></label>')
    for step in steps:
        chosen = [r for r in records if int(r.get("step", 0)) == step]
        chosen.sort(key=lambda r: not any(c.get("advantage") for c in r["completions"]))  # informative groups first
        body.append(f'<section class="step" data-step="{step}"><h2>Step {step}</h2>{_clip_table(clip_summary(chosen))}')
        body += [_group_html(r, name, center, half_width) for r in chosen]
        body.append("</section>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>" + "".join(body) + "</body></html>\n")


def select_records(run_dir: str | Path, step: int | None = None) -> list[dict[str, Any]]:
    records = load_credit_records(run_dir)
    if not records:
        raise FileNotFoundError(f"{Path(run_dir) / CREDIT_FILE}: no credit records (the run records them every "
                                f"`samples_every` steps; set samples_every > 0)")
    if step is not None:
        steps = sorted({int(r.get("step", 0)) for r in records})
        records = [r for r in records if int(r.get("step", 0)) == step]
        if not records:
            raise ValueError(f"--step {step}: not recorded in {run_dir}; recorded steps: {steps}")
    return records


def write_page(run_dir: str | Path, out: str | Path | None = None, step: int | None = None) -> Path:
    """Write the credit page of `run_dir` (default `run_dir/credit.html`); returns its path."""
    records = select_records(run_dir, step)
    out = Path(out) if out else Path(run_dir) / PAGE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(records, title=f"rlsd: per-token credit of {Path(run_dir).resolve().name}"),
                   encoding="utf-8")
    return out


# ---- PNG ----------------------------------------------------------------------------------------------------
def most_informative(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The latest step's group whose coloured signal varies most (ties: the first)."""
    name, center, _ = colour_scale(records)
    latest = max(int(r.get("step", 0)) for r in records)

    def spread(record):
        values = [abs(v - center) for c in record["completions"] for v in c.get("signals", {}).get(name or "", [])
                  if v is not None]
        return sum(values) / len(values) if values else 0.0

    return max((r for r in records if int(r.get("step", 0)) == latest), key=spread)


def plot_group(record: dict[str, Any], out_png: str | Path, scale_records: Sequence[dict[str, Any]] | None = None,
               line_chars: int = 72) -> Path:
    """One group as a PNG: each completion's tokens as coloured boxes, reward and advantage on the left."""
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    plt = pyplot()
    name, center, half_width = colour_scale(scale_records or [record])
    label_chars, font_pt = 22, 9.0
    char_in = 0.6 * font_pt / 72  # width of one monospace character: x is measured in characters
    lines: list[tuple[str, list[tuple[str, str]]]] = []  # (left label, [(text, colour)])
    for completion in record["completions"]:
        values = (completion.get("signals") or {}).get(name or "", [])
        label = f"R={_fmt(completion.get('reward'))} A={_fmt(completion.get('advantage'))}"
        row: list[tuple[str, str]] = []
        used = 0
        for i, piece in enumerate(completion["tokens"]):
            text = piece.replace("\n", "\u21b5") or " "
            if used + len(text) > line_chars and row:
                lines.append((label, row))
                label, row, used = "", [], 0
            row.append((text, colour(values[i] if i < len(values) else None, center, half_width)))
            used += len(text)
        lines.append((label, row))
        lines.append(("", []))
    units = label_chars + line_chars
    axes_w, height = units * char_in, 0.7 + 0.22 * len(lines)
    width = axes_w + 1.4
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([0.1 / width, 0.0, axes_w / width, 1.0 - 0.5 / height])
    ax.set_xlim(0, units)
    ax.set_ylim(len(lines) - 0.5, -0.5)
    ax.axis("off")
    for y, (label, row) in enumerate(lines):
        ax.text(0, y, label, family="monospace", fontsize=font_pt - 1, va="center")
        x = float(label_chars)
        for text, hex_colour in row:
            ax.add_patch(plt.Rectangle((x, y - 0.45), len(text), 0.9, color=hex_colour, linewidth=0))
            ax.text(x, y, text, family="monospace", fontsize=font_pt, va="center")
            x += len(text)
    prompt = " ".join(str(record.get("prompt", "")).split())
    prompt = prompt if len(prompt) < 90 else prompt[:87] + "..."
    fig.suptitle(f"step {record.get('step')}, group {record.get('group')} ({record.get('algorithm')}): {prompt}",
                 fontsize=8, x=0.1 / width, ha="left", y=1.0 - 0.12 / height)
    if name is not None:
        cax = fig.add_axes([(axes_w + 0.3) / width, 0.1, 0.12 / width, 0.75])
        cmap = LinearSegmentedColormap.from_list("credit", [colour(center + half_width * t / 4, center, half_width)
                                                            for t in range(-4, 5)])
        bar = fig.colorbar(plt.cm.ScalarMappable(Normalize(center - half_width, center + half_width), cmap), cax=cax)
        bar.set_label(SIGNAL_LABELS.get(name, name), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def inspect(run_dir: str | Path, out: str | Path | None = None, step: int | None = None,
            png: str | Path | None = None) -> dict[str, Path]:
    """`rlsd inspect`: the HTML page and a PNG of the most informative group beside it."""
    records = select_records(run_dir, step)
    page = write_page(run_dir, out, step)
    png = Path(png) if png else page.with_name(PNG_FILE)
    return {"page": page, "png": plot_group(most_informative(records), png, scale_records=records)}


__all__ = ["PAGE_FILE", "PNG_FILE", "clip_summary", "colour", "colour_scale", "inspect", "plot_group",
           "render_page", "select_records", "write_page"]

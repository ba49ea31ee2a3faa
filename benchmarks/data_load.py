"""Data loading at scale: `rlsd.data.load_dataset` vs `datasets.load_dataset("json")` on the same JSONL.

    OMP_NUM_THREADS=1 python benchmarks/data_load.py --rows 1000000 [--repeats 2] [--out benchmarks/results/data_load.json]

Each measurement runs in a fresh child process (so peak memory is its own): wall time of the load call, and
peak RSS growth over the process's RSS right before the call (libraries already imported). Both loaders run in
the same invocation, alternating, on the same file; `datasets` gets a fresh empty cache directory each time (a
user's first load). Targets (issue 16): rlsd <= 2x the time of `datasets`, peak memory <= 2x the file size,
no file written next to the data. Also timed, for information: the same file with one malformed line, which
sends that chunk through the row-by-row Python reader (with `skip_bad_rows=True`), and the same rows with
answers that are numbers in every other row (text in the others), which Arrow cannot type as one column.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time, warnings
kind, path, cache = sys.argv[1], sys.argv[2], sys.argv[3]
import datasets, pyarrow
from rlsd.data import load_dataset
datasets.disable_progress_bars()
def rss_kb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
base = rss_kb()
start = time.perf_counter()
if kind == "datasets":
    try:
        rows = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache).num_rows
    except Exception as exc:  # e.g. a column mixing numbers and text
        rows = f"{type(exc).__name__}: {str(exc)[:120]}"
else:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(path, skip_bad_rows=(kind == "rlsd-skip"))["train"]  # rlsd, rlsd-skip, rlsd-mixed
    rows = ds.num_rows
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"kind": kind, "rows": rows, "wall_s": wall, "peak_growth_mb": (peak - base) / 1024,
                  "rss_before_mb": base / 1024}))
"""


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "the of and to in is that for it with as was on be by at this from or an are".split()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            question = f"Problem {i}: " + " ".join(rng.choices(words, k=rng.randint(4, 16))) + f" What is {a} * {b}?"
            row = {"question": question, "answer": str(a * b), "solution": f"{a} * {b} = {a * b}", "level": i % 5}
            fh.write(json.dumps(row) + "\n")


def measure(kind: str, path: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), cache], env=env, check=True,
                             capture_output=True, text=True, timeout=1800)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--skip-bad", action="store_true", help="also time a file with one malformed line")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        path = data_dir / "train.jsonl"
        make_file(path, args.rows)
        size_mb = path.stat().st_size / 2**20
        before = sorted(os.listdir(data_dir))
        runs: list[dict] = []
        for _ in range(args.repeats):
            for kind in ("datasets", "rlsd"):
                runs.append(measure(kind, path, env))
                print(json.dumps(runs[-1]), flush=True)
        written = sorted(set(os.listdir(data_dir)) - set(before))
        bad_runs = []
        if args.skip_bad:  # one broken line in the middle; then answers that are numbers in half the rows
            bad, mixed = data_dir / "bad.jsonl", data_dir / "mixed.jsonl"
            with open(path, "rb") as src, open(bad, "wb") as dst, open(mixed, "wb") as mix:
                for i, line in enumerate(src):
                    dst.write(line if i != args.rows // 2 else b'{"question": "broken\n')
                    if i % 2:
                        row = json.loads(line)
                        line = (json.dumps({**row, "answer": int(row["answer"])}) + "\n").encode()
                    mix.write(line)
            for kind, file in (("rlsd-skip", bad), ("rlsd-mixed", mixed), ("datasets", mixed)):
                bad_runs.append({**measure(kind, file, env), "file": file.name})
                print(json.dumps(bad_runs[-1]), flush=True)

    def best(kind: str, key: str) -> float:
        return min(r[key] for r in runs if r["kind"] == kind)

    result = {
        "rows": args.rows, "file_mb": round(size_mb, 1), "repeats": args.repeats,
        "datasets_wall_s": round(best("datasets", "wall_s"), 2), "rlsd_wall_s": round(best("rlsd", "wall_s"), 2),
        "rlsd_peak_growth_mb": round(max(r["peak_growth_mb"] for r in runs if r["kind"] == "rlsd"), 1),
        "datasets_peak_growth_mb": round(max(r["peak_growth_mb"] for r in runs if r["kind"] == "datasets"), 1),
        "files_written_next_to_data": written, "runs": runs, "one_bad_line_runs": bad_runs,
        "total_wall_s": round(time.perf_counter() - started, 1), "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    result["time_ratio"] = round(result["rlsd_wall_s"] / result["datasets_wall_s"], 2)
    result["memory_ratio_to_file"] = round(result["rlsd_peak_growth_mb"] / size_mb, 2)
    ok_time, ok_mem = result["time_ratio"] <= 2.0, result["memory_ratio_to_file"] <= 2.0
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "one_bad_line_runs")}, indent=1))
    print(f"targets: time <= 2x datasets: {'met' if ok_time else 'MISSED'}; peak memory <= 2x file: "
          f"{'met' if ok_mem else 'MISSED'}; no files next to the data: {'met' if not written else 'MISSED'}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())

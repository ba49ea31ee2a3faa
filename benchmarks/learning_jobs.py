"""Run `learning.py`'s grid as parallel jobs (one process per run), then summarise what finished.

    python benchmarks/learning_jobs.py --jobs 12 --deadline-s 480 -- \
        --tasks chain --algorithms grpo,rlsd --warm-starts 0,1 --seeds 0,1,2 --eval-size 500 \
        --privileged-fraction 0.5 --out benchmarks/results/learning-chain

Everything after `--` is `learning.py`'s own arguments (`--full` included). Phase 1 builds each (task, warm start)
in its own process; phase 2 runs every (task, warm start, variant, seed) as its own `learning.py` process, `--jobs`
at a time, each with one CPU thread (on a GPU they share the device). At `--deadline-s` the running jobs are
stopped (their runs count as unfinished and are rerun next time; finished runs are reused), and
`learning.py --only-finished` writes the summary (`table.md`, `summary.json`, `learning.png`) of the finished
runs alone, saying how many seeds each variant has. Job logs go to `OUT/logs/`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import learning  # noqa: E402


def child_args(args, task: str, variants: str, seeds: str, warm_starts: str) -> list[str]:
    """`learning.py` arguments for one slice of the grid, with every other setting as the parent parsed it."""
    return ["--tasks", task, "--algorithms", variants, "--seeds", seeds, "--warm-starts", warm_starts,
            "--eval-size", str(args.eval_size), "--steps", str(args.steps),
            "--privileged-fraction", str(args.privileged_fraction), "--student-budget-s", str(args.student_budget_s),
            "--student-max-steps", str(args.student_max_steps),
            "--student-eval-every", str(args.student_eval_every), "--band", args.band,
            "--teacher-contrast", args.teacher_contrast, "--out", str(args.out),
            *(["--reproducible-warm-start", "--warm-start-threads", str(args.warm_start_threads)]
              if args.reproducible_warm_start else [])]


class Pool:
    """At most `size` child processes, each in its own process group so that a stop reaches its workers too."""

    def __init__(self, size: int, logs: Path, deadline: float):
        self.size, self.logs, self.deadline, self.running = size, logs, deadline, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> None:
        while len(self.running) >= self.size:
            self.reap()
            time.sleep(1.0)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed in reap()
        proc = subprocess.Popen([sys.executable, str(HERE / "learning.py"), *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running.append((name, proc, log))
        print(f"[jobs] started {name} ({len(self.running)} running)", flush=True)

    def reap(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError
        for item in list(self.running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                self.running.remove(item)
                print(f"[jobs] {name} ended with code {proc.returncode}", flush=True)

    def wait(self) -> None:
        while self.running:
            self.reap()
            time.sleep(1.0)

    def stop(self) -> None:
        for name, proc, log in self.running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"[jobs] {name} stopped at the deadline (unfinished)", flush=True)
            log.close()
        self.running = []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=max((os.cpu_count() or 2) - 1, 1))
    parser.add_argument("--deadline-s", type=float, default=float("inf"),
                        help="stop launching and stop running jobs after this many seconds, then summarise")
    ours = parser.parse_args(argv[:split])
    args = learning.parse_args(argv[split + 1:])
    if args.ablation or args.quick:
        parser.error("--ablation and --quick run in learning.py itself")
    out = Path(args.out)
    start = time.monotonic()
    pool = Pool(ours.jobs, out / "logs", start + ours.deadline_s)
    seeds = [s for s in args.seeds.split(",") if s]
    warm_starts = [w for w in args.warm_starts.split(",") if w]
    try:
        for task, names in args.plan.items():  # phase 1: the warm starts (each with its first run)
            variants = [n for n in names.split(",") if n]
            if any(learning.variants_from(v, False)[v][0] == "opd" for v in variants):
                parser.error("opd builds one shared teacher per task: run it with learning.py, not in parallel")
            for ws in warm_starts:
                pool.start(f"{task}-sft{ws}-{variants[0]}-seed{seeds[0]}",
                           child_args(args, task, variants[0], seeds[0], ws))
        pool.wait()
        # phase 2: every other run, seed by seed, so that a deadline leaves whole (warm start, seed) pairs
        for seed in seeds:
            for task, names in args.plan.items():
                for ws in warm_starts:
                    for variant in (n for n in names.split(",") if n):
                        if (variant, seed) != (names.split(",")[0], seeds[0]):
                            pool.start(f"{task}-sft{ws}-{variant}-seed{seed}", child_args(args, task, variant, seed, ws))
        pool.wait()
    except TimeoutError:
        print(f"[jobs] deadline of {ours.deadline_s:.0f}s reached", flush=True)
        pool.stop()
    elapsed = time.monotonic() - start
    print(f"[jobs] runs took {elapsed:.0f}s; summarising the finished ones", flush=True)
    summary = subprocess.run([sys.executable, str(HERE / "learning.py"), *argv[split + 1:], "--only-finished"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    return summary.returncode


if __name__ == "__main__":
    sys.exit(main())

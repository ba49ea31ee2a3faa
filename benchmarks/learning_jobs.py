"""Run `learning.py`'s grid as parallel jobs (one process per run), then summarise what finished.

    python benchmarks/learning_jobs.py --jobs 12 --deadline-s 480 -- \
        --tasks chain --algorithms grpo,rlsd --warm-starts 0,1 --seeds 0,1,2 --eval-size 500 \
        --privileged-fraction 0.5 --out benchmarks/results/learning-chain

Everything after `--` is `learning.py`'s own arguments (`--full` included). Every (task, warm start, variant,
seed) is its own `learning.py` process, `--jobs` at a time, each with one CPU thread (on a GPU they share the
device); a missing warm start is built by the first run that needs it, the runs that need it wait for that one, and
every other run starts beside it. Ctrl-C or SIGTERM (or `--launch-until-s`) starts nothing new and lets the running
runs finish (and commit, with `--commit`); a second Ctrl-C stops them. At `--deadline-s` the running jobs are
stopped (their runs count as unfinished and are rerun next time; finished runs are reused). Then
`learning.py --only-finished` writes the summary (`table.md`, `summary.json`, `learning.png`) of the finished
runs alone, saying how many seeds each variant has. Job logs go to `OUT/logs/`.
"""

from __future__ import annotations

import argparse
import json
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


def job_name(task: str, variant: str, seed: str, ws: str) -> str:
    return f"{task}-sft{ws}-{variant}-seed{seed}"


def result_file(args, task: str, variant: str, seed: str, ws: str) -> Path:
    return learning.result_path(Path(args.out), task, f"sft{ws}", variant, int(seed))


def warm_start_exists(args, task: str, ws: str) -> bool:
    return bool(args.warm_start_dir) and learning.load_result(Path(args.warm_start_dir) / f"{task}-sft{ws}") is not None


def commit(path: Path, message: str) -> None:
    """Commit one finished run's result file (and nothing else) so that a stopped session loses nothing finished."""
    for attempt in range(10):  # another git command (a person, another job) may hold the index lock for a moment
        added = subprocess.run(["git", "add", "--", str(path)], capture_output=True, text=True)
        done = added.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", str(path)], capture_output=True, text=True).returncode == 0
        if done:
            print(f"[jobs] committed {path}", flush=True)
            return
        time.sleep(2.0 + attempt)
    print(f"[jobs] could not commit {path} (it is on disk; commit it by hand)", flush=True)


def child_args(args, task: str, variants: str, seeds: str, warm_starts: str) -> list[str]:
    """`learning.py` arguments for one slice of the grid, with every other setting as the parent parsed it."""
    return ["--tasks", task, "--algorithms", variants, "--seeds", seeds, "--warm-starts", warm_starts,
            "--eval-size", str(args.eval_size), "--steps", str(args.steps),
            "--privileged-fraction", str(args.privileged_fraction), "--student-budget-s", str(args.student_budget_s),
            "--student-max-steps", str(args.student_max_steps),
            "--student-eval-every", str(args.student_eval_every), "--band", args.band,
            "--teacher-contrast", args.teacher_contrast, "--out", str(args.out),
            *(["--warm-start-dir", str(args.warm_start_dir)] if args.warm_start_dir else []),
            *(["--reproducible-warm-start", "--warm-start-threads", str(args.warm_start_threads)]
              if args.reproducible_warm_start else [])]


class Pool:
    """At most `size` child processes, each in its own process group so that a stop reaches its workers too."""

    def __init__(self, size: int, logs: Path, deadline: float, commit_results: bool = False):
        self.size, self.logs, self.deadline, self.running = size, logs, deadline, []
        self.commit_results = commit_results
        self.launch_until = float("inf")  # after this moment (or once `draining`), no new run starts
        self.draining = False
        logs.mkdir(parents=True, exist_ok=True)

    def launching(self) -> bool:
        return not self.draining and time.monotonic() < self.launch_until

    def start(self, name: str, argv: list[str], result: Path | None = None) -> None:
        while len(self.running) >= self.size:
            self.reap()
            time.sleep(1.0)
        if not self.launching():
            return
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed in reap()
        proc = subprocess.Popen([sys.executable, str(HERE / "learning.py"), *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running.append((name, proc, log, result))
        print(f"[jobs] started {name} ({len(self.running)} running)", flush=True)

    def is_running(self, name: str) -> bool:
        return any(running == name and proc.poll() is None for running, proc, _, _ in self.running)

    def reap(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError
        for item in list(self.running):
            name, proc, log, result = item
            if proc.poll() is not None:
                log.close()
                self.running.remove(item)
                print(f"[jobs] {name} ended with code {proc.returncode}", flush=True)
                if self.commit_results and proc.returncode == 0 and result is not None and result.is_file():
                    seconds = json.loads(result.read_text()).get("seconds")
                    commit(result, f"learning-full: {name} finished ({seconds}s of one CPU thread)")

    def wait(self) -> None:
        while self.running:
            self.reap()
            time.sleep(1.0)

    def stop(self) -> None:
        for name, proc, log, _ in self.running:
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
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each finished run's result file as it finishes (needs --warm-start-dir or "
                             "--full, whose results are files under OUT/results/)")
    parser.add_argument("--nice", type=int, default=0, help="run the jobs at this niceness (leave the cores to you)")
    parser.add_argument("--first", default="",
                        help="variants to run before the others, every seed (e.g. grpo,rlsd: the paired comparison "
                             "gets all its seeds before the other methods get any)")
    parser.add_argument("--deadline-s", type=float, default=float("inf"),
                        help="stop launching and stop running jobs after this many seconds, then summarise")
    parser.add_argument("--launch-until-s", type=float, default=float("inf"),
                        help="start no run after this many seconds; the running ones finish (nothing is wasted)")
    ours = parser.parse_args(argv[:split])
    args = learning.parse_args(argv[split + 1:])
    if args.ablation or args.quick:
        parser.error("--ablation and --quick run in learning.py itself")
    out = Path(args.out)
    start = time.monotonic()
    pool = Pool(ours.jobs, out / "logs", start + ours.deadline_s, commit_results=ours.commit)
    pool.launch_until = start + ours.launch_until_s

    def drain(signum, frame):
        """First Ctrl-C / SIGTERM: start nothing new, let the running runs finish and commit; second: stop them."""
        if pool.draining:
            raise KeyboardInterrupt
        pool.draining = True
        print(f"[jobs] {signal.Signals(signum).name}: no new runs; waiting for the {len(pool.running)} running "
              "(again: stop them now, losing their work)", flush=True)

    if ours.nice:
        os.nice(ours.nice)  # the children inherit it
    seeds = [s for s in args.seeds.split(",") if s]
    warm_starts = [w for w in args.warm_starts.split(",") if w]
    grid = []  # (task, variant, seed, warm start): seed-major, so that a deadline leaves whole (warm start, seed) pairs
    for seed in seeds:
        for task, names in args.plan.items():
            for ws in warm_starts:
                for variant, only in (learning.split_variant(n) for n in names.split(",") if n.strip()):
                    if only is None or int(ws) in only:
                        grid.append((task, variant, seed, ws))
    first_variants = [v for v in ours.first.split(",") if v]
    grid.sort(key=lambda job: job[1] not in first_variants)  # stable: seed-major order within each group
    for task, variant, seed, ws in grid:
        if learning.variants_from(variant, False)[variant][0] == "opd":
            parser.error("opd builds one shared teacher per task: run it with learning.py, not in parallel")
    todo = [job for job in grid if not (args.warm_start_dir and result_file(args, *job).is_file())]
    print(f"[jobs] {len(grid) - len(todo)} of {len(grid)} runs already have a result; {len(todo)} to run", flush=True)
    previous = {sig: signal.signal(sig, drain) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # The first run of each (task, warm start) without a finished warm start builds it; the runs that need
        # that warm start wait for their builder, every other run starts at once (no core idles during a build).
        builders = {}
        for job in todo:
            if not warm_start_exists(args, job[0], job[3]):
                builders.setdefault((job[0], job[3]), job)

        def ready(job) -> bool:
            key = (job[0], job[3])
            builder = builders.get(key)
            if builder is None or builder == job:
                return True
            if pool.is_running(job_name(*builder)):
                return False
            if not args.warm_start_dir or warm_start_exists(args, *key):
                return True
            builders[key] = job  # the build failed: this run tries again, alone
            return True

        queue = [*builders.values(), *(job for job in todo if job not in builders.values())]
        while queue and pool.launching():
            job = next((job for job in queue if ready(job)), None)
            if job is None:
                pool.reap()
                time.sleep(1.0)
                continue
            queue.remove(job)
            task, variant, seed, ws = job
            pool.start(job_name(*job), child_args(args, task, variant, seed, ws), result_file(args, *job))
        pool.wait()
    except (TimeoutError, KeyboardInterrupt) as stopped:
        print(f"[jobs] deadline of {ours.deadline_s:.0f}s reached" if isinstance(stopped, TimeoutError)
              else "[jobs] stopped by a second signal", flush=True)
        pool.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    elapsed = time.monotonic() - start
    print(f"[jobs] runs took {elapsed:.0f}s; summarising the finished ones", flush=True)
    # A slice of --full (--tasks/--warm-starts) still summarises the whole design: summary.json covers every
    # finished run, not only this invocation's.
    theirs = argv[split + 1:]
    summary_argv = ["--full", "--out", str(args.out)] if "--full" in theirs else theirs
    summary = subprocess.run([sys.executable, str(HERE / "learning.py"), *summary_argv, "--only-finished"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    return summary.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Run model-written Python against tests in a confined child process (the `code` reward).

Why a separate process with OS limits, not `exec` in the trainer: an RL policy
will, sooner or later, emit an infinite loop, a fork bomb, a memory bomb or a
network call, and it must cost that sample a 0 reward, not the run or the host.

Guarantees (Linux), all set before the untrusted code is compiled (the layers, and
where each one holds, are listed in docs/datasets.md and reported per run in
`SandboxResult.layers`):
  * CPU time (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE),
    open files (RLIMIT_NOFILE), processes (RLIMIT_NPROC), no core dumps;
  * a wall-clock timeout, after which the whole process group is SIGKILLed;
  * a fresh temporary working directory, removed afterwards;
  * network, mount (private /tmp, a tmpfs working directory of `disk_mb`) and PID
    namespaces: as root directly, otherwise inside an unprivileged user namespace
    where the kernel allows one; as root the code also runs as a fresh uid;
  * kernel-enforced confinement, root or not (`_sandbox_kernel.py`): no_new_privs,
    Landlock (files: write only in the working directory, read only where the
    interpreter and its libraries live; no TCP; no signals out) and a seccomp filter
    (no execve unless allowed, no sockets but AF_UNIX pairs, no ptrace, mount,
    namespaces, bpf, io_uring, ...). `require=` refuses to run without named layers;
  * a Python audit hook that refuses the same things with readable errors (a
    friendly first layer; native code does not pass through it).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ._text import completion_text, extract_code

logger = logging.getLogger("rlsd.rewards")

CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
UID_BASE = 1_900_000_000  # fresh uids are drawn from [UID_BASE, UID_BASE + 2**24): no real user lives there
_MAX_REPORT_BYTES = 1 << 20
_GRACE_S = 1.0
_fallback_uid = False  # set when fresh uids cannot be used here (e.g. rootless container): use nobody
_warned: set[str] = set()


# every layer the child can report, outermost first (docs/datasets.md says where each one holds)
LAYERS = ("rlimits", "netns", "mountns", "disk_quota", "pidns", "uid", "no_new_privs", "landlock", "landlock_net",
          "landlock_signal", "seccomp", "audit_hook")  # fmt: skip
_last_layers: tuple[str, ...] = ()
_TEST_SKIP_LAYERS: frozenset[str] = frozenset()  # tests only: act as if "landlock"/"seccomp" were unavailable


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not the solution's fault)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run. `cpu_s` defaults to the wall timeout, rounded up."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    nproc: int = 16
    file_size_mb: int = 16
    open_files: int = 256
    allow_subprocess: bool = False
    uid: int | None = None  # as root: run as this uid instead of a fresh one (its processes are killed afterwards)
    audit_hook: bool = True  # switch off only to test the kernel-level layers on their own
    disk_mb: int = 64  # total size of the working directory (a private tmpfs; where mount namespaces work)
    require: tuple[str, ...] = ()  # layers that must be in force (e.g. ("seccomp", "landlock")), else SandboxError

    def __post_init__(self) -> None:
        require = (self.require,) if isinstance(self.require, str) else tuple(self.require)
        unknown = [name for name in require if name not in LAYERS]
        if unknown:
            raise ValueError(f"require: unknown sandbox layer(s) {unknown}; known: {', '.join(LAYERS)}")
        object.__setattr__(self, "require", require)


@dataclass(frozen=True)
class SandboxResult:
    """What happened: tests passed out of total, and a status for logs and tests."""

    passed: int
    total: int
    status: str  # ok | solution_error | timeout | crashed
    uid: int | None = None
    network: str = ""  # netns | userns+netns | none (only the audit hook)
    seconds: float = 0.0
    layers: tuple[str, ...] = ()  # the confinement layers that were in force (see LAYERS)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def split_tests(tests: Any) -> list[tuple[str, bool]]:
    """Turn a `tests` value into ordered steps `(source, counts_as_a_test)`.

    A list: one test per element. A string: each top-level `assert` is a test
    and other statements (imports, helpers) are setup run in order; a string
    with no top-level assert (e.g. `def check(f): ...` then `check(f)`) is one
    test. A JSON-encoded list of strings (as CSV files store it) is a list.
    """
    if isinstance(tests, str):
        text = tests.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
            if isinstance(decoded, list):
                return split_tests(decoded)
        try:
            tree = ast.parse(tests)
        except SyntaxError as exc:
            raise ValueError(f"the tests are not valid Python: {exc}") from None
        if not any(isinstance(node, ast.Assert) for node in tree.body):
            return [(tests, True)]
        return [(ast.unparse(node), isinstance(node, ast.Assert)) for node in tree.body]
    if isinstance(tests, (list, tuple)):
        if not all(isinstance(t, str) for t in tests):
            raise ValueError("a list of tests must hold strings of Python code")
        return [(t, True) for t in tests]
    raise ValueError(f"tests must be a string of Python asserts or a list of them, got {type(tests).__name__}")


def _child_env(workdir: str) -> dict[str, str]:
    """A minimal environment: no secrets from the trainer's environment reach the child."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def run_python_tests(code: str, tests: Any, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code`, then its `tests`, in a confined child process; count the tests that pass."""
    if not sys.platform.startswith("linux"):
        raise SandboxError("the code sandbox needs Linux (rlimits, namespaces)")
    steps = split_tests(tests)
    total = sum(counted for _, counted in steps)
    as_root = os.geteuid() == 0
    uid = limits.uid if limits.uid is not None else (65534 if _fallback_uid else UID_BASE + secrets.randbelow(1 << 24))
    nonce = secrets.token_hex(16)
    cpu_s = limits.cpu_s if limits.cpu_s is not None else max(1, math.ceil(limits.timeout_s))
    workdir = tempfile.mkdtemp(prefix="rlsd_sandbox_")
    read_fd, write_fd = os.pipe()
    job = {
        "nonce": nonce,
        "result_fd": write_fd,
        "workdir": workdir,
        "timeout_s": float(limits.timeout_s),
        "uid": uid,
        "allow_subprocess": limits.allow_subprocess,
        "audit_hook": limits.audit_hook,
        "require": list(limits.require),
        "skip_layers": sorted(_TEST_SKIP_LAYERS),
        "protected_pids": [os.getpid(), os.getpgid(0)],  # the sandbox may not signal the trainer
        "limits": {
            "disk_mb": int(limits.disk_mb),
            "cpu_s": int(cpu_s),
            "memory": int(limits.memory_mb) << 20,
            "nproc": int(limits.nproc),
            "file_size": int(limits.file_size_mb) << 20,
            "open_files": int(limits.open_files),
        },
        "code": code,
        "steps": steps,
    }
    start = time.monotonic()
    proc, data, timed_out = None, b"", False
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,  # its own process group, so that one killpg reaches every fork
            cwd=workdir,
            env=_child_env(workdir),
        )
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        # as root, a supervisor in the child enforces the timeout (and reaps); this deadline is the backstop
        grace = _GRACE_S if as_root else 0.0
        data, timed_out = _collect(read_fd, proc, start + limits.timeout_s + grace, nonce)
        timed_out = timed_out or time.monotonic() - start >= limits.timeout_s
        if as_root:
            _wait_briefly(proc, start + limits.timeout_s + 2 * grace)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        if proc is not None:
            _kill_group(proc)
        ready = _ready_info(data, nonce)
        if as_root and ready is not None and ready[3] != "pidns":
            _kill_uid_after(ready[0], uid)  # no PID namespace to tear down: kill what the uid left behind
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(data, nonce, steps, total, timed_out, time.monotonic() - start)


def _collect(fd: int, proc: subprocess.Popen, deadline: float, nonce: str) -> tuple[bytes, bool]:
    """Read the child's reports until it says END, exits, or the wall-clock deadline passes."""
    end = f"{nonce} END".encode()
    data = bytearray()
    os.set_blocking(fd, False)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), True
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.05))
        exited = proc.poll() is not None
        if ready or exited:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    return bytes(data), False  # every writer has gone
                data += chunk
                if len(data) > _MAX_REPORT_BYTES:
                    return bytes(data[:_MAX_REPORT_BYTES]), False
            if end in data or exited:
                return bytes(data), False


def _wait_briefly(proc: subprocess.Popen, deadline: float) -> None:
    """Let the supervisor finish reaping (it exits right after the untrusted code) before any killpg."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (forks included), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
        logger.warning("sandbox child %d did not exit after SIGKILL", proc.pid)


def _ready_info(data: bytes, nonce: str) -> tuple[int, str, str, str, tuple[str, ...]] | None:
    """(uid, network, paths, pidns, layers) from the child's first report, or None if it never got that far."""
    head = data.split(b"\n", 1)[0].decode(errors="replace").split()
    if len(head) >= 7 and head[0] == nonce and head[1] == "READY" and head[2].isdigit():
        return int(head[2]), head[3], head[4], head[5], tuple(filter(None, head[6].split(",")))
    return None


def _kill_uid_after(actual: int, uid: int) -> None:
    """Kill every process left with the sandbox's fresh uid (a fork may have left the process group).

    Done by a helper that becomes that uid and calls kill(-1, SIGKILL), which
    reaches exactly the processes of that uid. Skipped when the child fell back
    to the shared `nobody` uid, where it would hit unrelated processes.
    """
    global _fallback_uid
    if actual != uid:
        if not _fallback_uid:
            _fallback_uid = True
            logger.warning("code sandbox: cannot switch to a fresh uid here; using nobody (65534) instead")
        return
    if uid == 65534:
        return
    killer = f"import os\nos.setgroups([])\nos.setgid({uid})\nos.setuid({uid})\n"
    killer += "try:\n os.kill(-1, 9)\nexcept OSError:\n pass"
    try:  # the helper drops to the uid itself: that uid may not be allowed to read the interpreter's directory
        subprocess.run(
            [sys.executable, "-I", "-S", "-c", killer],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover - logged, never raised
        logger.warning("code sandbox: could not clean up processes of uid %d: %s", uid, exc)


def _result(data: bytes, nonce: str, steps: list, total: int, timed_out: bool, seconds: float) -> SandboxResult:
    global _last_layers
    passed: set[int] = set()
    status = "crashed"
    uid, network, paths, _, layers = _ready_info(data, nonce) or (None, "", "", "", ())
    if layers:
        _last_layers = layers
    for line in data.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != nonce:
            continue  # anything the untrusted code itself wrote is ignored
        kind = words[1]
        if kind == "SETUP_ERROR":
            raise SandboxError(f"could not set up the code sandbox: {' '.join(words[2:])}")
        if kind == "PASS" and words[2].isdigit() and int(words[2]) < len(steps) and steps[int(words[2])][1]:
            passed.add(int(words[2]))
        elif kind == "MISSING" and len(words) > 2 and words[2] not in _warned:
            _warned.add(words[2])
            logger.warning("code sandbox: layer %r is not in force: %s", words[2], " ".join(words[3:]))
        elif kind == "SOLUTION_ERROR":
            status = "solution_error"
        elif kind == "END":
            status = "ok"
    if timed_out and status != "ok":
        status = "timeout"
    if network == "none" and "network" not in _warned:
        _warned.add("network")
        logger.warning("code sandbox: no network namespace available; network is blocked only by an audit hook")
    if paths == "hidden" and "paths" not in _warned:
        _warned.add("paths")
        logger.warning("code sandbox: the interpreter's directory is not readable by the sandbox uid; imports may fail")
    return SandboxResult(len(passed), total, status, uid, network, seconds, layers)


def sandbox_layers(probe: bool = True) -> dict[str, float]:
    """`rewards/sandbox_layers/<layer>` -> 1.0 (in force) or 0.0, for the trainer's metrics.

    From the most recent sandboxed run in this process; with `probe` and no run yet, one
    trivial run (~0.1 s) finds out. Empty when the sandbox cannot run here (not Linux).
    """
    if not _last_layers and probe and sys.platform.startswith("linux"):
        try:
            run_python_tests("", ["pass"], SandboxLimits(timeout_s=10))
        except SandboxError:
            return {}
    return {f"rewards/sandbox_layers/{name}": float(name in _last_layers) for name in LAYERS} if _last_layers else {}


class CodeReward:
    """Pass fraction of the row's `tests` when the completion's code runs in the sandbox.

    Options: `timeout_s`, `memory_mb`, `nproc`, `cpu_s`, `file_size_mb`,
    `allow_subprocess` (see `SandboxLimits`), `tests_column` (default
    "tests"), `max_workers` (parallel sandboxes; default: number of CPUs, at
    most 8). Rows without tests get None ("does not apply"). A sample whose
    sandbox cannot be set up comes back as the exception itself, which
    `RobustReward` (what `get_reward("code")` returns) scores 0.0 and counts.
    """

    __name__ = "code"

    def __init__(self, tests_column: str = "tests", max_workers: int | None = None, **limits: Any):
        self.tests_column = tests_column
        self.limits = SandboxLimits(**limits)
        self.max_workers = max_workers or min(8, os.cpu_count() or 1)
        if self.limits.require:  # fail at start-up, not as a 0 reward on every sample
            run_python_tests("", ["pass"], self.limits)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if self.tests_column not in kwargs:
            raise KeyError(f"the code reward needs the dataset column {self.tests_column!r}")
        tests = kwargs[self.tests_column]
        codes = [extract_code(completion_text(c)) for c in completions]
        jobs = list(zip(codes, tests))
        if len(jobs) <= 1 or self.max_workers <= 1:
            return [self._one(code, t) for code, t in jobs]
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="rlsd-sandbox") as pool:
            return list(pool.map(lambda job: self._one(*job), jobs))

    def _one(self, code: str, tests: Any) -> float | None | Exception:
        """One sample; an error is returned (not raised) so the other samples keep their scores."""
        if tests is None or (isinstance(tests, (str, list)) and not tests):
            return None
        try:
            return run_python_tests(code, tests, self.limits).fraction
        except Exception as exc:  # noqa: BLE001 - counted as this sample's error by RobustReward
            return exc

    def describe(self) -> dict[str, Any]:
        """The limits in force, for run reports."""
        return asdict(self.limits)

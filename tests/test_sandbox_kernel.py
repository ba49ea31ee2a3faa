"""Attacks on the code sandbox's kernel layers, with the Python audit hook switched OFF.

Every payload runs as real code in the sandbox; containment is checked from the host
(files untouched, listening socket not reached, sibling process alive, nothing left
running) and, where it explains the failure, by the errno the payload saw inside.
The same file is re-run as an unprivileged user (when the suite runs as root) and
from a virtual environment created under /tmp (see the last two tests).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

NESTED = os.environ.get("RLSD_SANDBOX_NESTED") == "1"  # this file re-run by the last two tests
if NESTED and "rlsd" not in sys.modules:  # the re-runs need only rlsd.rewards: skip rlsd/__init__ (torch, ~8 s)
    import types

    sys.modules["rlsd"] = types.ModuleType("rlsd")
    sys.modules["rlsd"].__path__ = [str(Path(__file__).resolve().parents[1] / "src" / "rlsd")]

from rlsd.rewards.sandbox import SandboxError, SandboxLimits, run_python_tests, sandbox_layers  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

IS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]
HOOK_OFF = SandboxLimits(timeout_s=30, memory_mb=512, nproc=8, audit_hook=False)


def load_kernel_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("k", REPO / "src/rlsd/rewards/_sandbox_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KERNEL = load_kernel_module()
LANDLOCK_ABI = KERNEL.landlock_abi()[0] if sys.platform.startswith("linux") else 0
needs_landlock = pytest.mark.skipif(LANDLOCK_ABI < 1, reason="this kernel has no Landlock (Linux < 5.13 or disabled)")


def run(code: str, tests, limits: SandboxLimits = HOOK_OFF):
    result = run_python_tests(code, tests, limits)
    assert "audit_hook" not in result.layers
    return result


def processes_of(uid: int) -> list[int]:
    """Live processes of `uid` (zombies waiting for the host's init to reap them do not run)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if int(status["Uid"].split()[1]) == uid and not status["State"].strip().startswith("Z"):
            found.append(int(pid))
    return found


@pytest.fixture
def outside(tmp_path):
    """A world-writable directory outside the sandbox holding a world-writable file: only the
    kernel layers (not file permissions, not the private /tmp) stand between it and the code."""
    base = Path(tempfile.mkdtemp(prefix=".sandbox_target_", dir=REPO)) if IS_ROOT else tmp_path / "target"
    base.mkdir(exist_ok=True)
    victim = base / "victim.txt"
    victim.write_text("original")
    os.chmod(victim, 0o666)
    os.chmod(base, 0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_kernel_layers_are_reported_and_can_be_required():
    result = run("x = 1", ["assert x == 1"])
    assert result.fraction == 1.0, result
    assert {"rlimits", "no_new_privs", "seccomp"} <= set(result.layers)
    if LANDLOCK_ABI >= 1:
        assert "landlock" in result.layers
    if IS_ROOT:
        assert {"netns", "mountns", "pidns", "uid", "disk_quota"} <= set(result.layers)
    metrics = sandbox_layers()
    assert metrics["rewards/sandbox_layers/seccomp"] == 1.0 and metrics["rewards/sandbox_layers/audit_hook"] == 0.0
    with pytest.raises(ValueError, match="unknown sandbox layer"):
        SandboxLimits(require=("selinux",))
    required = SandboxLimits(require=("seccomp", "landlock") if LANDLOCK_ABI else ("seccomp",))
    assert run_python_tests("x = 1", ["assert x == 1"], required).fraction == 1.0
    if not IS_ROOT:  # a layer that cannot hold here is a clear error, never an unconfined run
        with pytest.raises(SandboxError, match="uid"):
            run_python_tests("x = 1", ["assert x == 1"], SandboxLimits(require=("uid",)))


def test_a_missing_layer_is_logged_once_reported_and_refused_when_required(monkeypatch, caplog):
    from rlsd.rewards import sandbox

    monkeypatch.setattr(sandbox, "_TEST_SKIP_LAYERS", frozenset({"landlock", "seccomp"}))
    monkeypatch.setattr(sandbox, "_warned", set())
    with caplog.at_level("WARNING", logger="rlsd.rewards"):
        for _ in range(2):
            result = run("x = 1", ["assert x == 1"])
            assert result.fraction == 1.0 and not {"landlock", "seccomp"} & set(result.layers)
    warnings = [r.getMessage() for r in caplog.records if "is not in force" in r.getMessage()]
    assert sorted(w.split("'")[1] for w in warnings) == ["landlock", "seccomp"], warnings  # once each
    assert sandbox_layers()["rewards/sandbox_layers/landlock"] == 0.0
    with pytest.raises(SandboxError, match="landlock: skipped"):
        run_python_tests("x = 1", ["assert x"], SandboxLimits(require=("seccomp", "landlock")))
    from rlsd.rewards import get_reward

    with pytest.raises(SandboxError, match="required sandbox layers"):
        get_reward("code", require=["landlock"])  # refused when the reward is built, not per sample


# ---------------------------------------------------------------------------------------- the filter
def bpf_verdict(program: bytes, arch: int, nr: int, args=(0,) * 6) -> int:
    """Run a classic-BPF seccomp program on one syscall (a minimal interpreter: LD abs, JEQ/JGE/JSET, RET)."""
    import struct

    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & 0xFFFFFFFFFFFFFFFF for a in args])
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif code in (0x15, 0x35, 0x45):
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


@pytest.mark.parametrize("arch", sorted(KERNEL.ARCHES))
def test_seccomp_filter_verdicts(arch):
    audit, nrs = KERNEL.ARCHES[arch]
    allow, eperm, kill = KERNEL.SECCOMP_RET_ALLOW, KERNEL.SECCOMP_RET_ERRNO | 1, KERNEL.SECCOMP_RET_KILL_PROCESS
    prog = KERNEL.build_seccomp_filter(arch, allow_exec=False, protected_pids=(4242,))
    verdict = lambda nr, *args: bpf_verdict(prog, audit, nr, args + (0,) * (6 - len(args)))  # noqa: E731
    assert bpf_verdict(prog, 0x40000003, 11) == kill  # i386 execve on a 64-bit kernel: foreign arch
    assert verdict(nrs["execve"]) == verdict(nrs["execveat"]) == verdict(nrs["ptrace"]) == eperm
    assert verdict(nrs["setsid"]) == verdict(425) == verdict(nrs["unshare"]) == eperm  # 425: io_uring_setup
    assert verdict(435) == KERNEL.SECCOMP_RET_ERRNO | 38  # clone3: ENOSYS, so libc uses clone
    assert verdict(nrs["clone"], 0x01200011) == allow  # what fork() passes
    assert verdict(nrs["clone"], 0x01200011 | 0x10000000) == eperm  # ... plus CLONE_NEWUSER
    assert verdict(nrs["socket"], 2) == verdict(nrs["socket"], 1) == eperm
    assert verdict(nrs["socketpair"], 1) == allow and verdict(nrs["socketpair"], 2) == eperm
    assert verdict(nrs["kill"], -1, 9) == verdict(nrs["kill"], 4242, 9) == verdict(nrs["kill"], -4242, 9) == eperm
    assert verdict(nrs["kill"], 7, 9) == verdict(nrs["ioctl"], 0, 0x5401) == allow
    assert verdict(nrs["ioctl"], 0, KERNEL.TIOCSTI) == eperm
    assert verdict(0) == verdict(63) == allow  # read / uname (x86_64) or io_setup-ish (aarch64): harmless
    if arch == "x86_64":
        assert verdict(0x40000000 + 59) == kill  # x32 execve
    allowed = KERNEL.build_seccomp_filter(arch, allow_exec=True)
    assert bpf_verdict(allowed, audit, nrs["execve"]) == allow


HEADERS = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "aarch64": "/usr/include/asm-generic/unistd.h"}


@pytest.mark.parametrize("arch", sorted(HEADERS))
def test_syscall_numbers_match_the_kernel_headers(arch):
    import re

    if not os.path.exists(HEADERS[arch]):
        pytest.skip(f"{HEADERS[arch]} not installed")
    text = open(HEADERS[arch]).read()
    found = dict(re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text))
    numbers = {**KERNEL.ARCHES[arch][1], **KERNEL._GENERIC}
    checked = {name: nr for name, nr in numbers.items() if name in found}
    assert len(checked) >= len(numbers) - 2  # iopl/ioperm exist on x86 only
    assert {name: int(found[name]) for name in checked} == checked


# ---------------------------------------------------------------------------------------- processes
SPAWN_ROUTES = {
    "posix_spawn": "import os\npid = os.posix_spawn('/bin/true', ['true'], {})\n"
                   "STARTED = os.waitpid(pid, 0)[1] == 0",
    "fork_exec": "import os\npid = os.fork()\nif pid == 0:\n    try:\n        os.execv('/bin/true', ['true'])\n"
                 "    finally:\n        os._exit(9)\nSTARTED = os.waitpid(pid, 0)[1] == 0",
    "ctypes_execve": "import ctypes, os\nlibc = ctypes.CDLL(None)\npid = os.fork()\nif pid == 0:\n"
                     "    argv = (ctypes.c_char_p * 2)(b'/bin/true', None)\n"
                     "    libc.execve(b'/bin/true', argv, (ctypes.c_char_p * 1)(None))\n    os._exit(9)\n"
                     "STARTED = os.waitpid(pid, 0)[1] == 0",
    "raw_syscall_execve": "import ctypes, os\nlibc = ctypes.CDLL(None)\npid = os.fork()\nif pid == 0:\n"
                          "    argv = (ctypes.c_char_p * 2)(b'/bin/true', None)\n"
                          "    libc.syscall({nr}, b'/bin/true', argv, (ctypes.c_char_p * 1)(None))\n    os._exit(9)\n"
                          "STARTED = os.waitpid(pid, 0)[1] == 0",
    "libc_system": "import ctypes\nSTARTED = ctypes.CDLL(None).system(b'/bin/true') == 0",
    "os_system": "import os\nSTARTED = os.system('/bin/sh -c true') == 0",
    "posixsubprocess_fork_exec": "import subprocess\n"
                                 "STARTED = subprocess.run(['/bin/true'], close_fds=True).returncode == 0",
}  # fmt: skip
EXECVE_NR = {"x86_64": 59, "aarch64": 221}.get(os.uname().machine, 59)


@pytest.mark.parametrize("route", sorted(SPAWN_ROUTES))
def test_no_process_creation_by_any_route(route):
    code = SPAWN_ROUTES[route].replace("{nr}", str(EXECVE_NR))
    assert run(code, ["assert STARTED"]).fraction == 0.0
    # the same payload does start a program once subprocesses are allowed: the test above can fail
    allowed = SandboxLimits(timeout_s=30, nproc=8, audit_hook=False, allow_subprocess=True)
    assert run(code, ["assert STARTED"], allowed).fraction == 1.0


# _posixsubprocess.fork_exec raises no audit event: the hook never sees this one (the exploit)
DIRECT_FORK_EXEC = """import _posixsubprocess, os
r, w = os.pipe()
args = [[b'/bin/sh', b'-c', b'echo escaped > {target}'], [b'/bin/sh'], True, (w,), None, None,
        -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False]
try:
    pid = _posixsubprocess.fork_exec(*args)
except TypeError:  # a Python whose fork_exec takes no allow_vfork
    pid = _posixsubprocess.fork_exec(*args[:-1])
os.close(w)
FAILED_TO_EXEC = os.read(r, 100)
STARTED = os.waitpid(pid, 0)[1] == 0 and not FAILED_TO_EXEC
"""


@pytest.mark.parametrize("audit_hook", [True, False])
def test_a_shell_started_behind_the_audit_hooks_back_does_not_run(audit_hook, outside):
    target = outside / "escaped.txt"
    code = DIRECT_FORK_EXEC.replace("{target}", str(target))
    limits = SandboxLimits(timeout_s=30, nproc=8, audit_hook=audit_hook)
    assert run_python_tests(code, ["assert STARTED"], limits).fraction == 0.0
    assert not target.exists()
    # the payload itself works: with subprocesses allowed the shell starts (its write outside stays blocked)
    allowed = SandboxLimits(timeout_s=30, nproc=8, audit_hook=audit_hook, allow_subprocess=True)
    assert run_python_tests(code.replace(str(target), "inside.txt"), ["assert STARTED"], allowed).fraction == 1.0


# ---------------------------------------------------------------------------------------- files
@needs_landlock
def test_no_writes_or_deletes_outside_the_directory(outside):
    victim = outside / "victim.txt"
    ops = {
        "create": f"open({str(outside / 'new.txt')!r}, 'w').write('x')",
        "overwrite": f"open({str(victim)!r}, 'w').write('pwned')",
        "append": f"open({str(victim)!r}, 'a').write('pwned')",
        "delete": f"os.remove({str(victim)!r})",
        "rename": f"os.rename({str(victim)!r}, {str(outside / 'moved.txt')!r})",
        "truncate": f"os.truncate({str(victim)!r}, 0)",
        "mkdir": f"os.mkdir({str(outside / 'd')!r})",
        "symlink": f"os.symlink('/etc/passwd', {str(outside / 'link')!r})",
        "link": f"os.link({str(victim)!r}, {str(outside / 'hard')!r})",
        "chmod": f"os.chmod({str(victim)!r}, 0o777)",
        "tmp": f"open('/tmp/rlsd_escape_{uuid.uuid4().hex}', 'w').write('x')",
    }
    code = "import os\nERRORS = {}\n"
    for name, op in ops.items():
        code += f"try:\n    {op}\n    ERRORS[{name!r}] = 0\nexcept OSError as e:\n    ERRORS[{name!r}] = e.errno\n"
    inside = "open('scratch.txt', 'w').write('fine')\nos.rename('scratch.txt', 'b.txt')\nos.remove('b.txt')"
    allowed_errors = (errno.EACCES, errno.EPERM, errno.EXDEV, errno.ENOENT, errno.EROFS)
    checks = [inside, f"assert all(ERRORS[k] in {allowed_errors} for k in ERRORS if k != 'chmod'), ERRORS"]
    result = run(code, checks)
    assert result.fraction == 1.0, result
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "original"
    assert not list(Path("/tmp").glob("rlsd_escape_*"))


@needs_landlock
def test_no_reads_outside_the_interpreter_and_the_directory(outside):
    secret = outside / "secret.txt"
    secret.write_text("token")
    os.chmod(secret, 0o644)
    targets = [str(secret), str(Path(__file__).resolve()), str(REPO / "src/rlsd/trainer.py")]
    code = "import os\nREAD = []\n"
    for path in targets:
        code += f"try:\n    READ.append(open({path!r}).read()[:10])\nexcept OSError:\n    pass\n"
    code += f"try:\n    READ.append(os.listdir({str(REPO)!r}))\nexcept OSError:\n    pass\n"
    code += "import json, numpy\nOK = json.dumps([1]) == '[1]' and int(numpy.arange(3).sum()) == 3"
    result = run(code, ["assert READ == [], READ", "assert OK"])
    assert result.fraction == 1.0, result  # nothing leaked, while the stdlib and site-packages still import


# ---------------------------------------------------------------------------------------- network
def test_no_sockets_but_socket_pairs():
    code = "import socket\nCREATED = []\n"
    for family in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_UNIX"):
        kind = "SOCK_RAW" if family in ("AF_NETLINK", "AF_PACKET") else "SOCK_STREAM"
        code += f"try:\n    socket.socket(socket.{family}, socket.{kind}).close()\n    CREATED.append({family!r})\n"
        code += "except OSError:\n    pass\n"
    code += "a, b = socket.socketpair()\na.sendall(b'hi')\nPAIR = b.recv(2)"
    assert run(code, ["assert CREATED == [], CREATED", "assert PAIR == b'hi'"]).fraction == 1.0


def test_localhost_server_is_not_reached():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0)
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')"
    try:
        assert run(code + "\nX = 1", ["assert X"]).status == "solution_error"
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


# ---------------------------------------------------------------------------------------- signals
def test_no_signals_to_other_processes():
    """A sibling of the sandbox's own uid (as root: the uid it runs as) and the trainer survive."""
    uid = 1_999_970_000 + os.getpid() % 1000 if IS_ROOT else os.getuid()
    sibling = subprocess.Popen(["sleep", "30"], user=uid if IS_ROOT else None, start_new_session=True)
    try:
        code = "import os, signal\nDENIED = []\n"
        attacks = {
            "sibling": f"os.kill({sibling.pid}, signal.SIGKILL)",
            "sibling_group": f"os.killpg({sibling.pid}, signal.SIGKILL)",
            "trainer": f"os.kill({os.getpid()}, 0)",  # signal 0: a permission check that delivers nothing
            "everyone": "os.kill(-1, 0)",
            "pidfd": f"signal.pidfd_send_signal(os.pidfd_open({sibling.pid}), signal.SIGKILL)",
        }
        for name, attack in attacks.items():
            code += f"try:\n    {attack}\nexcept OSError:\n    DENIED.append({name!r})\n"
        code += "os.kill(os.getpid(), 0)\nSELF = True"  # signalling itself is fine
        limits = SandboxLimits(timeout_s=30, nproc=8, audit_hook=False, uid=uid if IS_ROOT else None)
        result = run(code, [f"assert sorted(DENIED) == {sorted(attacks)}, DENIED", "assert SELF"], limits)
        assert result.fraction == 1.0, result
        time.sleep(0.1)
        assert sibling.poll() is None, "the sandbox killed a process outside it"
    finally:
        sibling.kill()
        sibling.wait()


# ---------------------------------------------------------------------------------------- resources
def test_memory_fork_and_cpu_bombs_are_contained():
    uid = 1_999_960_000 + os.getpid() % 1000 if IS_ROOT else os.getuid()
    before = set(processes_of(uid))
    limits = SandboxLimits(timeout_s=2, memory_mb=256, nproc=8, audit_hook=False, uid=uid if IS_ROOT else None)
    memory = "x = []\nwhile True:\n    x.append(bytearray(10**7))"
    assert run(memory, ["assert True"], limits).status == "solution_error"
    fork = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    assert run(fork, ["assert True"], limits).fraction == 0.0
    cpu = "import threading\ndef burn():\n    while True:\n        pass\n"
    cpu += "for _ in range(4):\n    threading.Thread(target=burn, daemon=True).start()\nburn()"
    assert run(cpu, ["assert True"], limits).status == "timeout"  # the sandbox's own 2 s limit stopped it
    assert time.monotonic() - start < 300  # a safety net (the bombs never end by themselves), not the assertion
    time.sleep(0.2)
    assert set(processes_of(uid)) <= before, "a sandboxed process outlived its run"
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, timeout=300).returncode == 0


def test_disk_fill_stops_at_the_quota():
    if "disk_quota" not in run("x = 1", ["assert x"]).layers:
        pytest.skip("the disk quota is a private tmpfs: needs a mount namespace (root or unprivileged user namespaces)")
    fill = "import os\nWROTE = 0\ntry:\n    for i in range(400):\n        with open(f'f{i}', 'wb') as fh:\n"
    fill += "            fh.write(b'x' * (1 << 20))\n        WROTE += 1 << 20\nexcept OSError:\n    pass"
    limits = SandboxLimits(timeout_s=30, disk_mb=8, audit_hook=False)
    result = run(fill, ["assert WROTE <= 8 << 20, WROTE", "assert WROTE >= 4 << 20, WROTE"], limits)
    assert result.fraction == 1.0, result


# ------------------------------------------------------------------------- the same, as another user
@pytest.mark.skipif(NESTED, reason="already the nested run")
@pytest.mark.skipif(not IS_ROOT, reason="runs this file as a fresh unprivileged user: needs root to create one")
@pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd to create an unprivileged user")
def test_this_file_passes_as_an_unprivileged_user():
    import pwd

    name = "rlsd-sandbox-test"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    user = pwd.getpwnam(name)
    home = tempfile.mkdtemp(prefix="rlsd_user_home_")
    os.chown(home, user.pw_uid, user.pw_gid)
    # The interpreter may live where other users cannot enter (/root/.pyenv): a launcher puts the
    # user in a mount namespace where only it is exposed (as the sandbox does), then drops to the user.
    launcher = (
        "import ctypes, os, sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(REPO / 'src/rlsd/rewards/_sandbox_child.py')!r})\n"
        "c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]\n"
        "assert libc.unshare(c.CLONE_NEWNS) == 0 and libc.mount(None, b'/', None, c.MS_REC | c.MS_PRIVATE, None) == 0\n"
        f"c._expose_interpreter(libc, {str(REPO)!r})\n"
        f"os.setgroups([]); os.setgid({user.pw_gid}); os.setuid({user.pw_uid})\n"
        "os.execv(sys.executable, sys.argv[1:])\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "RLSD_SANDBOX_NESTED": "1",
           "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": home}  # fmt: skip
    cmd = [sys.executable, "-c", launcher, sys.executable, "-m", "pytest", "-q", "-rA", "-x", "--noconftest",
           "-p", "no:cacheprovider", "-o", "addopts=-rs", __file__]  # fmt: skip
    try:
        out = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout[-2000:]
    print(out.stdout[-3000:])


@pytest.mark.skipif(NESTED, reason="already the nested run")
def test_this_file_passes_from_a_venv_and_project_under_tmp():
    """The private /tmp used to be skipped when the interpreter lived under /tmp (issue 16)."""
    root = Path(tempfile.mkdtemp(prefix="rlsd_tmp_project_", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root / "venv")],
                       check=True, timeout=600)  # fmt: skip
        shutil.copytree(REPO / "src", root / "project/src", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "project/tests").mkdir()
        shutil.copy(__file__, root / "project/tests")
        env = {**os.environ, "RLSD_SANDBOX_NESTED": "1", "PYTHONPATH": str(root / "project/src"),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        cmd = [str(root / "venv/bin/python"), "-m", "pytest", "-q", "-x", "--noconftest", "-p", "no:cacheprovider",
               "-o", "addopts=-rs", "tests/test_sandbox_kernel.py",
               "-k", "not as_an_unprivileged_user and not bombs"]  # fmt: skip
        out = subprocess.run(cmd, cwd=root / "project", env=env, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        assert " passed" in out.stdout and " failed" not in out.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)

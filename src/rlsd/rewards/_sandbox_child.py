"""Sandbox child: confine this process, then run a solution and its tests.

Started by `rlsd.rewards.sandbox` as `python -I -B _sandbox_child.py` with a
JSON payload on stdin; not an API. Order matters: limits are set and
privileges dropped *before* any untrusted code is compiled.

New network, mount and PID namespaces (as root directly, otherwise inside a user
namespace); this process forks PID 1 of the new namespace (which, as root, drops
to the sandbox uid) and stays behind, out of its reach, to enforce the wall-clock
timeout. PID 1 then puts the kernel layers in force (`_sandbox_kernel.py`:
no_new_privs, Landlock, seccomp) and only then compiles the untrusted code.

Protocol: every line written to the result pipe starts with a random nonce the
untrusted code never sees in its own namespace; the parent counts a test as
passed only on `NONCE PASS i` from the original process (forks are ignored).
"""

import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_PATH_EVENTS = {
    "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.link", "os.chmod", "os.chown", "os.truncate",
    "os.utime", "os.chflags", "os.lchflags", "os.lchown", "os.removexattr", "os.setxattr", "shutil.copyfile",
    "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.chown", "shutil.move", "shutil.rmtree",
    "shutil.make_archive", "shutil.unpack_archive",
}  # fmt: skip
_NET_EVENTS = {
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo",
}  # fmt: skip
_EXEC_EVENTS = {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "os.forkpty"}
_AF_UNIX = 1
_CTYPES_EVENTS = {"ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer"}


def _unshare_network(libc, as_root: bool, extra_flags: int = 0) -> str:
    """Put this process in a new, empty network namespace (no interfaces up: nothing to connect to);
    without root, inside a new user namespace (plus `extra_flags` namespaces) that maps our own uid."""
    if as_root:
        return "netns" if libc.unshare(CLONE_NEWNET) == 0 else "none"
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | extra_flags) != 0:  # unprivileged user namespaces may be disabled
        return "none"
    try:  # keep our own uid/gid inside the new user namespace
        for path, text in (("/proc/self/uid_map", f"{uid} {uid} 1"), ("/proc/self/setgroups", "deny"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):  # fmt: skip
            with open(path, "w") as fh:
                fh.write(text)
    except OSError:
        pass
    return "userns+netns"


def _needed_paths(extra: str) -> set:
    """The interpreter, its libraries and `extra`: what the unprivileged child must still reach."""
    paths = [sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, extra, *sys.path]
    return {os.path.realpath(p) for p in paths if p and os.path.exists(p)}


def _blocked_dirs(extra: str) -> dict:
    """Directories other users cannot enter on the way to a needed path, mapped to the names of the
    entries below them that are needed."""
    blocked: dict = {}
    for path in sorted(_needed_paths(extra)):
        parts = path.split(os.sep)
        for i in range(1, len(parts)):
            ancestor = os.sep.join(parts[:i]) or os.sep
            if not os.stat(ancestor).st_mode & 0o001:
                blocked.setdefault(ancestor, set()).add(parts[i])
                break
    return blocked


def _expose_interpreter(libc, extra: str) -> str:
    """Let the unprivileged child reach the interpreter and its libraries when they live under a
    directory other users cannot enter (e.g. /root/.pyenv): in a private mount namespace, cover that
    directory with an empty tmpfs and bind back only the needed entries. The rest of it stays hidden.
    Must only run once mounts are private (a mount would otherwise show on the host).
    """
    blocked = _blocked_dirs(extra)
    if not blocked:
        return "visible"
    for ancestor in sorted(blocked, key=len):
        handles = {name: os.open(os.path.join(ancestor, name), os.O_PATH) for name in blocked[ancestor]}
        if libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k") != 0:
            return "hidden"
        for name, handle in handles.items():
            target = os.path.join(ancestor, name)
            if os.path.isdir(f"/proc/self/fd/{handle}"):
                os.mkdir(target)
            else:
                open(target, "w").close()
            if libc.mount(f"/proc/self/fd/{handle}".encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
                return "hidden"
            os.close(handle)
    return "exposed"


def _private_tmp(libc, workdir: str, disk_mb: int) -> str:
    """Cover the world-writable directories with private, size-limited tmpfs mounts that vanish with
    the sandbox, binding back only the entries the interpreter needs (a virtual environment in /tmp),
    then give the working directory its own tmpfs of `disk_mb` (the disk quota). Only after mounts
    are private. Returns "quota" when the working directory got its tmpfs, else "".
    """
    needed = _needed_paths("")
    for shared in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.islink(shared) or not os.path.isdir(shared) or shared in needed:
            continue
        names = {p[len(shared) + 1:].split(os.sep)[0] for p in needed if p.startswith(shared + os.sep)}
        handles = {name: os.open(os.path.join(shared, name), os.O_PATH) for name in names}
        if libc.mount(b"tmpfs", shared.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777,size=16m") != 0:
            continue
        for name, handle in handles.items():  # e.g. /tmp/venv: bound back, the rest of /tmp stays hidden
            target = os.path.join(shared, name)
            if os.path.isdir(f"/proc/self/fd/{handle}"):
                os.mkdir(target)
            else:
                open(target, "w").close()
            libc.mount(f"/proc/self/fd/{handle}".encode(), target.encode(), None, MS_BIND | MS_REC, None)
            os.close(handle)
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    options = f"mode=0700,size={max(1, disk_mb)}m,nr_inodes=16384".encode()
    return "quota" if libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0 else ""


def _isolate(libc, job: dict) -> tuple[str, str, bool]:
    """As root: new network, mount and PID namespaces. Returns (network, paths, pid namespace made)."""
    net = _unshare_network(libc, True)
    job["private_mounts"] = False
    if libc.unshare(CLONE_NEWNS) == 0 and libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
        job["private_mounts"] = True
        job["layers"].append("mountns")
        paths = _expose_interpreter(libc, job["workdir"])
        if _private_tmp(libc, job["workdir"], job["limits"]["disk_mb"]):
            job["layers"].append("disk_quota")
    else:
        paths = "hidden" if _blocked_dirs(job["workdir"]) else "visible"
    return net, paths, libc.unshare(CLONE_NEWPID) == 0


def _isolate_unprivileged(libc, job: dict) -> tuple[str, str, bool]:
    """Without root, where unprivileged user namespaces are allowed: the same network, mount (private
    /tmp, disk quota) and PID namespaces as root gets, inside a user namespace that maps only our
    own uid (so nothing is gained on the host). Falls back to a network namespace alone."""
    job["private_mounts"] = False
    net = _unshare_network(libc, False, CLONE_NEWNS)
    if net == "none":
        return _unshare_network(libc, False), "own", False
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
        job["private_mounts"] = True
        job["layers"].append("mountns")
        if _private_tmp(libc, job["workdir"], job["limits"]["disk_mb"]):
            job["layers"].append("disk_quota")
    return net, "own", libc.unshare(CLONE_NEWPID) == 0


def _drop_privileges(job: dict, libc, pid_ns: bool) -> int:
    """Limits first, then (as root) a fresh uid: RLIMIT_NPROC is only enforced for non-root users."""
    import resource

    lim = job["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_size"], lim["file_size"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    workdir, uid = job["workdir"], os.getuid()
    job["own_proc"] = False
    if pid_ns and job.get("private_mounts"):  # PID 1 of a new namespace: its own /proc, not the host's
        job["own_proc"] = libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0
    if os.geteuid() == 0:
        uid = job["uid"]
        os.setgroups([])
        try:
            os.chown(workdir, uid, uid)
            os.setgid(uid)
            os.setuid(uid)
        except OSError:  # the uid is not mapped (e.g. rootless container): fall back to nobody
            uid = 65534
            os.chown(workdir, uid, uid)
            os.setgid(uid)
            os.setuid(uid)
        if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()):
            raise RuntimeError("could not drop root privileges")
        job["layers"].append("uid")
    elif job.get("userns"):  # the capabilities we hold inside our own user namespace: not needed any more
        job["kernel"].drop_capabilities()
    os.chdir(workdir)
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory"], lim["memory"]))
    return uid


def _load_kernel_layers():
    """_sandbox_kernel.py from this file's directory (`python -I` cannot import the rlsd package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_kernel.py")
    spec = importlib.util.spec_from_file_location("_rlsd_sandbox_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _confine(job: dict, kernel) -> None:
    """The kernel layers, last step before untrusted code: no_new_privs, Landlock, then seccomp.

    Each one that cannot be put in force is recorded in job["missing"] with the reason."""
    layers, missing = job["layers"], job["missing"]
    why = kernel.set_no_new_privs()  # Landlock and seccomp need it when not root
    if why:
        missing["no_new_privs"] = why
    else:
        layers.append("no_new_privs")
    reads = kernel.interpreter_read_paths(job["allow_subprocess"], own_proc=job["own_proc"])
    if "landlock" in job["skip_layers"]:
        why, extras = "skipped (the fallback test)", []
    else:
        why, extras = kernel.apply_landlock(reads, [job["workdir"], *kernel.DEVICES])
    if why:
        missing["landlock"] = why
    else:
        layers += ["landlock", *extras]
    if "seccomp" in job["skip_layers"]:
        why = "skipped (the fallback test)"
    else:
        why = kernel.apply_seccomp(job["allow_subprocess"], tuple(job["protected_pids"]))
    if why:
        missing["seccomp"] = why
    else:
        layers.append("seccomp")


def _supervise(pid: int, timeout_s: float) -> None:
    """Wait for the namespace's PID 1 (the untrusted code) or SIGKILL it at the deadline.

    Its death tears the PID namespace down: the kernel kills and reaps every
    process left in it, even ones that left the process group, so nothing is
    orphaned on the host. This process stays root, out of the untrusted code's reach.
    """
    import select
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        if pidfd is not None:
            select.select([pidfd], [], [], remaining)
        else:
            time.sleep(min(remaining, 0.01))


def _audit_hook(workdir: str, allow_subprocess: bool):
    """A Python-level guard: no sockets, no writes outside `workdir`, no exec, no raw ctypes calls.

    Defence in depth only: native code can bypass it. The kernel-level limits
    (rlimits, uid, network namespace) are what hold when it is bypassed.
    """
    realpath, join, getcwd, fspath, fsdecode = os.path.realpath, os.path.join, os.getcwd, os.fspath, os.fsdecode
    getpid, getpgid = os.getpid, os.getpgid
    root = realpath(workdir)
    prefix = root + os.sep

    def inside(path) -> bool:
        if path is None or isinstance(path, int):
            return True
        try:
            path = fspath(path)
        except TypeError:
            return True
        if isinstance(path, bytes):
            path = fsdecode(path)
        full = realpath(join(getcwd(), path))
        return full == root or full.startswith(prefix) or full == "/dev/null"

    def deny(event: str, why: str):
        raise PermissionError(f"rlsd sandbox: {event} blocked ({why})")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = bool((flags or 0) & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                deny(event, f"writing outside the sandbox directory: {path!r}")
        elif event in _PATH_EVENTS:
            for path in args:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                    deny(event, f"outside the sandbox directory: {path!r}")
        elif event == "os.symlink":
            if not inside(args[1]):
                deny(event, "outside the sandbox directory")
        elif event in _NET_EVENTS:
            deny(event, "no network")
        elif event == "socket.__new__":
            if len(args) > 1 and args[1] != _AF_UNIX:
                deny(event, "no network (only AF_UNIX socket pairs)")
        elif event in _EXEC_EVENTS:
            if not allow_subprocess:
                deny(event, "no subprocesses")
        elif event in _CTYPES_EVENTS or (event == "ctypes.dlopen" and args and args[0] is not None):
            deny(event, "no foreign function calls")
        elif event in ("os.kill", "os.killpg"):
            target = args[0]
            if target not in (0, getpid(), -getpgid(0)) and not (event == "os.killpg" and target == getpgid(0)):
                deny(event, "may only signal itself")

    return hook


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fd, nonce = job.pop("result_fd"), job.pop("nonce")
    write, getpid, _exec, _compile, _exit = os.write, os.getpid, exec, compile, os._exit
    me = [getpid()]

    def report(*words) -> None:
        if getpid() == me[0]:  # a forked copy of the process must not report (nor double-count) results
            try:
                write(fd, (" ".join([nonce, *map(str, words)]) + "\n").encode())
            except OSError:
                pass

    try:
        import ctypes

        kernel = _load_kernel_layers()
        job["layers"], job["missing"] = ["rlimits"], {}
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        if os.geteuid() == 0:
            net, paths, pid_ns = _isolate(libc, job)
        else:
            net, paths, pid_ns = _isolate_unprivileged(libc, job)
            job["userns"], job["kernel"] = net == "userns+netns", kernel
        if pid_ns:
            child = os.fork()  # the child is PID 1 of the new namespace; this process supervises it
            if child:
                os.close(fd)
                _supervise(child, job["timeout_s"])
                _exit(0)
            me[0] = getpid()
        uid = _drop_privileges(job, libc, pid_ns)
        if net != "none":
            job["layers"].append("netns")
        if pid_ns:
            job["layers"].append("pidns")
        sys.dont_write_bytecode = True
        import builtins
        import types

        module = types.ModuleType("solution")
        sys.modules["solution"] = module
        namespace = module.__dict__
        namespace["__builtins__"] = builtins
        _confine(job, kernel)
        if job["audit_hook"]:
            sys.addaudithook(_audit_hook(job["workdir"], job["allow_subprocess"]))
            job["layers"].append("audit_hook")
        absent = [name for name in job["require"] if name not in job["layers"]]
        if absent:
            reasons = "; ".join(f"{n}: {job['missing'].get(n, 'not available here')}" for n in absent)
            raise RuntimeError(f"required sandbox layers are not in force ({reasons})")
    except BaseException as exc:  # noqa: BLE001 - reported, then exit
        report("SETUP_ERROR", repr(exc).replace("\n", " ")[:300])
        _exit(3)
    report("READY", uid, net, paths, "pidns" if pid_ns else "nopidns", ",".join(job["layers"]))
    for name, why in job["missing"].items():
        report("MISSING", name, why.replace("\n", " ")[:200])
    steps, code = job["steps"], job["code"]
    job.pop("kernel", None)
    del job, libc, kernel
    try:
        _exec(_compile(code, "solution.py", "exec"), namespace)
    except BaseException:  # noqa: BLE001 - SystemExit included: a solution that exits passes nothing
        report("SOLUTION_ERROR")
        _exit(0)
    for i, (src, _counted) in enumerate(steps):
        try:
            _exec(_compile(src, f"test_{i}.py", "exec"), namespace)
        except BaseException:  # noqa: BLE001
            continue
        report("PASS", i)
    report("END")
    _exit(0)


if __name__ == "__main__":
    main()

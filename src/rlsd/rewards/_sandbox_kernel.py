"""Kernel-enforced layers of the code sandbox: no_new_privs, a seccomp-BPF filter and Landlock.

Pure Python (ctypes + struct), no compiled dependency. Loaded by file path from
`_sandbox_child.py` (which runs under `python -I`, where the `rlsd` package is not
importable), so it must import nothing but the standard library.

Each `apply_*` returns None when the layer is in force, else a short reason
("kernel has no seccomp", "landlock is disabled", ...): the caller reports the
active layers and refuses to run when a required one is missing.
"""

import ctypes
import os
import struct
import sys

# ------------------------------------------------------------------------------------------- seccomp
PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS = 1, 38
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data: int nr; __u32 arch; __u64 ip; __u64 args[6]


def _arg_low(i: int) -> int:
    """Offset of the low 32 bits of syscall argument i (both supported arches are little-endian)."""
    return 16 + 8 * i


AF_UNIX = 1
TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # push bytes into a terminal's input / console tricks
NAMESPACE_FLAGS = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
X32_SYSCALL_BIT = 0x40000000

ARCHES = {  # machine -> (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, {
        "execve": 59, "execveat": 322, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
        "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
        "userfaultfd": 323, "open_by_handle_at": 304, "name_to_handle_at": 303, "quotactl": 179,
        "lookup_dcookie": 212, "vhangup": 153, "syslog": 103, "personality": 135, "iopl": 172, "ioperm": 173,
        "setsid": 112, "setpgid": 109, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
        "clone": 56, "socket": 41, "socketpair": 53, "kill": 62, "tkill": 200, "tgkill": 234, "ioctl": 16,
    }),
    "aarch64": (0xC00000B7, {
        "execve": 221, "execveat": 281, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "bpf": 280, "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89,
        "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
        "userfaultfd": 282, "open_by_handle_at": 265, "name_to_handle_at": 264, "quotactl": 60,
        "lookup_dcookie": 18, "vhangup": 58, "syslog": 116, "personality": 92,
        "setsid": 157, "setpgid": 154, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
        "clone": 220, "socket": 198, "socketpair": 199, "kill": 129, "tkill": 130, "tgkill": 131, "ioctl": 29,
    }),
}  # fmt: skip
# numbers shared by every architecture (asm-generic, Linux >= 5.1)
_GENERIC = {
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
}  # fmt: skip

# Denied outright (EPERM): new programs, other processes' memory, the mount table, namespaces
# (setup is done before the filter), kernel-facing interfaces, leaving the process group (so a
# killpg reaches every fork), and io_uring (its operations bypass seccomp).
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "mount", "umount2", "pivot_root",
    "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "quotactl", "lookup_dcookie", "vhangup", "syslog", "personality", "iopl", "ioperm",
    "setsid", "setpgid", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "io_uring_setup",
    "io_uring_enter", "io_uring_register",
)  # fmt: skip
EXEC = ("execve", "execveat")


def machine() -> str:
    m = os.uname().machine.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def build_seccomp_filter(arch: str, allow_exec: bool, protected_pids: tuple = ()) -> bytes:
    """Assemble the classic-BPF program (a `struct sock_filter[]` as bytes) for `arch`.

    A foreign architecture (e.g. i386 `int 0x80` on x86_64) or an x32 syscall kills the
    process; denied syscalls fail with EPERM; clone3 fails with ENOSYS so libc falls back
    to clone, whose namespace flags can be inspected. No socket can be created (the network
    is off; AF_UNIX pathname sockets reach host services such as the D-Bus session bus),
    only AF_UNIX socket pairs. kill/tkill/tgkill may not target -1 (every process of the
    uid) nor `protected_pids` (the trainer, as pid and as process group).
    """
    audit_arch, numbers = ARCHES[arch]
    numbers = {**numbers, **_GENERIC}
    prog: list = []  # (code, jt, jf, k); jt/jf are ints or label names
    labels: dict = {}

    def op(code, k=0, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    def label(name):
        labels[name] = len(prog)

    op(_LD_W_ABS, _ARCH)
    op(_JEQ, audit_arch, 0, "kill")
    op(_LD_W_ABS, _NR)
    if arch == "x86_64":
        op(_JGE, X32_SYSCALL_BIT, "kill", 0)
    for name in DENIED + (() if allow_exec else EXEC):
        if name in numbers:
            op(_JEQ, numbers[name], "deny", 0)
    op(_JEQ, numbers["clone3"], "enosys", 0)
    op(_JEQ, numbers["socket"], "deny", 0)
    op(_JEQ, numbers["clone"], "clone", 0)
    op(_JEQ, numbers["socketpair"], "socketpair", 0)
    op(_JEQ, numbers["ioctl"], "ioctl", 0)
    for name in ("kill", "tkill", "tgkill"):
        op(_JEQ, numbers[name], "kill_target", 0)
    op(_RET, SECCOMP_RET_ALLOW)
    label("clone")
    op(_LD_W_ABS, _arg_low(0))
    op(_JSET, NAMESPACE_FLAGS, "deny", "allow")
    label("socketpair")
    op(_LD_W_ABS, _arg_low(0))
    op(_JEQ, AF_UNIX, "allow", "deny")
    label("ioctl")
    op(_LD_W_ABS, _arg_low(1))
    op(_JEQ, TIOCSTI, "deny", 0)
    op(_JEQ, TIOCLINUX, "deny", "allow")
    label("kill_target")
    op(_LD_W_ABS, _arg_low(0))
    targets = [0xFFFFFFFF] + sorted({p & 0xFFFFFFFF for pid in protected_pids if pid > 1 for p in (pid, -pid)})
    for target in targets:
        op(_JEQ, target, "deny", 0)
    label("allow")
    op(_RET, SECCOMP_RET_ALLOW)
    label("deny")
    op(_RET, SECCOMP_RET_ERRNO | EPERM)
    label("enosys")
    op(_RET, SECCOMP_RET_ERRNO | ENOSYS)
    label("kill")
    op(_RET, SECCOMP_RET_KILL_PROCESS)

    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        jt, jf = (labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf))
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise AssertionError(f"seccomp filter jump out of range at {i}")
        out += struct.pack("<HBBI", code, jt, jf, k)
    return bytes(out)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.syscall.restype = ctypes.c_long
    return libc


def set_no_new_privs() -> str | None:
    """No exec can ever gain privileges again (setuid binaries, file capabilities)."""
    if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}"
    return None


def apply_seccomp(allow_exec: bool, protected_pids: tuple = ()) -> str | None:
    """Install the filter on this (single-threaded) process; needs no_new_privs (or CAP_SYS_ADMIN)."""
    arch = machine()
    if arch not in ARCHES:
        return f"no seccomp filter for the {arch} architecture"
    libc = _libc()
    if libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return "the kernel has no seccomp support"
    code = build_seccomp_filter(arch, allow_exec, protected_pids)
    filters = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxQ", len(code) // 8, ctypes.addressof(filters))  # struct sock_fprog
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buf), 0, 0) != 0:
        return f"installing the seccomp filter failed: {os.strerror(ctypes.get_errno())}"
    return None


def drop_capabilities() -> None:
    """Empty every capability set (capset with _LINUX_CAPABILITY_VERSION_3, pid 0: this thread)."""
    header = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)  # two __user_cap_data_struct, all zero
    if _libc().capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


# ------------------------------------------------------------------------------------------ Landlock
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # valid on a file


def fs_rights(abi: int) -> int:
    """Every filesystem access right the kernel's Landlock ABI knows (ABI 1: bits 0-12, 2: REFER,
    3: TRUNCATE, 5: IOCTL_DEV)."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= 1 << 13
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def landlock_abi() -> tuple[int, str]:
    """(the highest Landlock ABI this kernel supports, "") or (0, why there is none)."""
    abi = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                          ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))  # fmt: skip
    if abi > 0:
        return abi, ""
    err = ctypes.get_errno()
    if err == ENOSYS:
        return 0, "the kernel has no Landlock (Linux < 5.13 or not built in)"
    if err == 95:  # EOPNOTSUPP
        return 0, "Landlock is disabled (not in the kernel's lsm= list)"
    return 0, f"Landlock is unavailable: {os.strerror(err)}"


def apply_landlock(read_paths, write_paths) -> tuple[str | None, list]:
    """Restrict this process (and everything it starts) to reading/executing under `read_paths`
    and doing anything under `write_paths`; with ABI >= 4 no TCP bind/connect at all; with
    ABI >= 6 no signals to, nor abstract UNIX sockets of, processes outside this domain.

    Returns (None or the reason it is not in force, the extra scopes in force).
    """
    abi, why = landlock_abi()
    if abi <= 0:
        return why, []
    libc = _libc()
    handled_fs = fs_rights(abi)
    extras = []
    attr = struct.pack("<Q", handled_fs)
    if abi >= 4:
        attr += struct.pack("<Q", NET_BIND_TCP | NET_CONNECT_TCP)
        extras.append("landlock_net")
    if abi >= 6:
        attr += struct.pack("<Q", SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
        extras.append("landlock_signal")
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr_buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}", []
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    try:
        rules = [(p, read) for p in read_paths] + [(p, handled_fs) for p in write_paths]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path that does not exist here needs no rule
            try:
                if not os.path.isdir(f"/proc/self/fd/{fd}"):
                    rights &= _FILE_RIGHTS
                rights &= handled_fs
                rule = struct.pack("<QI", rights, fd)  # struct landlock_path_beneath_attr (packed)
                buf = ctypes.create_string_buffer(rule, len(rule))
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                                buf, ctypes.c_uint32(0)) != 0:  # fmt: skip
                    return f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}", []
            finally:
                os.close(fd)
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}", []
    finally:
        os.close(ruleset)
    return None, extras


SYSTEM_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache",
                       "/etc/localtime", "/usr/share/zoneinfo", "/usr/lib/locale")  # fmt: skip
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")
PROGRAM_DIRS = ("/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin", "/usr/libexec", "/etc")


def interpreter_read_paths(allow_subprocess: bool = False, own_proc: bool = False) -> list:
    """Where this interpreter and its libraries live: its prefixes, the site-packages/stdlib
    entries of sys.path (not directories a .pth file added, e.g. an editable project's source),
    the directories of every shared object mapped right now, and the system library dirs.
    With `allow_subprocess`, also the usual program directories (and /etc) so programs can run.
    /proc as a whole only when it is the sandbox's own (`own_proc`: a PID namespace); otherwise just
    this process's entry, so other processes' environments and command lines stay unreadable."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)}
    paths = set(prefixes)
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and (os.path.basename(real) in ("site-packages", "dist-packages")
                     or any(real == p or real.startswith(p.rstrip("/") + "/") for p in prefixes)):  # fmt: skip
            paths.add(real)
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    paths.add(os.path.dirname(parts[5].strip().removesuffix(" (deleted)")))
    except OSError:
        pass
    paths.update(SYSTEM_LIBRARY_DIRS)
    paths.add("/sys/devices/system/cpu")  # os.cpu_count() and BLAS libraries read it
    paths.add("/proc" if own_proc else os.path.realpath("/proc/self"))
    if allow_subprocess:
        paths.update(PROGRAM_DIRS)
    kept: list = []
    for path in sorted(p for p in paths if p not in ("/", "")):  # one rule per tree: drop covered paths
        if not any(path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept

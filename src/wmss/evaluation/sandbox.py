"""Run model-written Python programs in child processes that cannot easily hurt the machine.

This is a guard against accidents (an infinite loop, a 10 GB list, a fork bomb, ``shutil.rmtree``
of the wrong folder), not a security boundary: code written to escape it may. For real isolation
run wmss itself in a container or a VM. See docs/code-evaluation.md.

Each program runs in its own process (never in wmss's own), in a new session and process group, with

- a wall-clock timeout, and limits on CPU time, address space, file size and the number of processes;
- a fresh temporary working directory, which is also its ``HOME`` and ``TMPDIR``;
- an environment holding only ``PATH``, ``HOME``, ``TMPDIR``, ``LANG`` and ``PYTHONHASHSEED``: no
  credentials, no tokens;
- on Linux, where namespaces can be made (as root, or where unprivileged user namespaces are
  allowed): a network namespace (no network at all), a PID namespace (the kernel kills every process
  left when the program ends) and a mount namespace in which everything but its own folder is
  read-only;
- as root, also a user id of its own with no privilege but reading files, so that the process limit
  holds (the kernel does not apply it to root) and its processes can be found by user id.
  Without namespaces the program runs as wmss's own user and can write where that user can.

Every process it leaves behind is killed. A program passes only when it runs to its end: the
harness writes a one-time token to a pipe of its own after the last line ran, so ``sys.exit(0)``,
``os._exit(0)``, an ``atexit`` hook or a killed process before the asserts all count as failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from wmss.errors import ConfigError

SANDBOX_UID_BASE = 1_900_000_000
"""Root only: a program runs as user id ``SANDBOX_UID_BASE + pid`` of its process, one id per live
sandbox (no account has it), so its processes can be counted and killed by user id."""

CONSENT_KEY = "eval.allow_code_execution"


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one program's run."""

    timeout_s: float = 10.0
    """Wall-clock time; CPU time is limited to the same (rounded up) plus one second."""
    memory_mb: int = 4096
    """Address space of each process (``RLIMIT_AS``)."""
    max_processes: int = 32
    """Processes the program may have at once (``RLIMIT_NPROC``)."""
    max_file_mb: int = 64
    """Largest file it may write (``RLIMIT_FSIZE``)."""
    max_output_bytes: int = 64 * 1024
    """Of stdout and of stderr, this much is kept; the rest is read and dropped."""


@dataclass
class Execution:
    """What happened when a program ran."""

    passed: bool
    """It ran to its last line (every assert held) within the limits."""
    status: str
    """``passed``, ``failed`` (an exception, a failed assert, an early exit), ``timeout``, or
    ``killed`` (by a signal: a resource limit or a crash)."""
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    network_cut: bool
    """The program had no network (a network namespace of its own)."""
    own_user: bool
    """The program ran as a user id of its own (root only), with the process limit enforced."""
    pid_namespace: bool
    """The program's processes lived in a PID namespace of their own, all killed when it ended."""
    read_only_outside: bool
    """Every file system but the program's own folder was read-only to it (a mount namespace of its own)."""
    leftovers_killed: int
    """Processes still alive after the program ended, killed by the sandbox."""

    def to_dict(self) -> dict:
        return asdict(self)


def require_consent(allowed: bool) -> None:
    """Raise ConfigError unless the user allowed running model-written code."""
    if not allowed:
        raise ConfigError(
            "grading a code task runs programs written by a model on this machine. wmss runs them in a "
            "sandbox (its own process, time/memory/process limits, no network where the OS allows), but "
            "that is a guard, not a security boundary (see docs/code-evaluation.md). To go ahead, set "
            f"{CONSENT_KEY}=true (on the command line or in the config); for real isolation run wmss "
            "in a container."
        )


# The child's code, run as `python -I -c LAUNCHER`: it confines itself, then runs the program.
# It reads its settings and the program from stdin (so neither is in a file the program could read).
LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, traceback
spec = json.loads(sys.stdin.buffer.read())
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
work, linux = spec["work"], sys.platform.startswith("linux")
root = linux and os.geteuid() == 0
status = {"network_cut": False, "own_user": False, "own_pids": False, "read_only_outside": False}
launcher_pid = os.getpid()


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def read_only_but(work):
    # Every mount read-only (mount_setattr, Linux 5.12+), then the work folder writable again. On older
    # kernels only the world-writable folders are made read-only. True when the whole tree is.
    here = work.encode()
    if libc.mount(here, here, None, MS_BIND, None) != 0:
        return False
    everything = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
    if libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(everything), 32) == 0:  # AT_RECURSIVE
        return libc.mount(None, here, None, MS_REMOUNT | MS_BIND, None) == 0
    for shared in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(shared) and not os.path.islink(shared):
            if libc.mount(shared.encode(), shared.encode(), None, MS_BIND | MS_REC, None) == 0:
                libc.mount(None, shared.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    return False


if linux:
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.syscall.restype = ctypes.c_long
    libc.syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p,
                             ctypes.c_size_t]
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | (0 if root else CLONE_NEWUSER)
    status["network_cut"] = status["own_pids"] = unshared = libc.unshare(flags) == 0
    if unshared and not root:  # map the user to itself in its new namespace, or it could create no file
        maps = (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1"))
        for name, text in maps:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    if unshared and libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
        status["read_only_outside"] = read_only_but(work)



def relay(child, inside):
    # Wait for the child and end the same way: with its exit code, or (outside the PID namespace) by its
    # signal; the namespace's init cannot be killed by its own signal, so it exits with 128 + signal.
    while True:
        pid, how = os.wait()
        if pid == child:
            break
    code = os.waitstatus_to_exitcode(how)
    if code < 0 and inside:
        os._exit(128 - code)
    if not inside and code > 128:
        code = 128 - code
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if status["own_pids"]:
    # Its first child is the init of a new PID namespace; when the init ends, the kernel kills every
    # process left in the namespace, those that left the process group included. The init runs the
    # program as its own child and reaps orphans meanwhile.
    first = os.fork()
    if first:
        relay(first, inside=False)
    program_pid = os.fork()
    if program_pid:
        relay(program_pid, inside=True)


def limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):  # a limit this kernel does not support (RLIMIT_AS on macOS)
        if linux:
            raise


cpu = int(spec["cpu_s"])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
limit(resource.RLIMIT_AS, spec["memory"])
limit(resource.RLIMIT_FSIZE, spec["file_size"])
limit(resource.RLIMIT_CORE, 0)
nproc = spec["max_processes"]
if root:
    uid = spec["uid_base"] + launcher_pid
    os.chown(work, uid, uid)
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the capabilities through setuid, to drop all but one
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    caps = (CapData * 2)()
    caps[0].effective = caps[0].permitted = 1 << 2  # CAP_DAC_READ_SEARCH only: read what root can read
    if libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), caps) != 0:  # not in this container's set
        caps[0].effective = caps[0].permitted = 0  # then none at all: dropping is always allowed
        libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), caps)
    status["own_user"] = os.getuid() == uid
else:  # the limit counts all of this user's processes: allow the ones that exist already, plus nproc
    mine = 0 if linux else 4096  # without /proc the count is unknown: leave room
    for pid in os.listdir("/proc") if linux else []:
        try:
            with open(f"/proc/{pid}/status") as f:
                mine += any(line.split()[1:2] == [str(os.getuid())] for line in f if line.startswith("Uid:"))
        except OSError:
            pass
    nproc += mine
limit(resource.RLIMIT_NPROC, nproc)
if linux:
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid program can give privileges back
os.chdir(work)
write, exit_now, result_fd = os.write, os._exit, spec["result_fd"]
token = spec.pop("token").encode()
write(result_fd, (json.dumps(status) + "\n").encode())
program = compile(spec.pop("program"), "program.py", "exec")
del spec
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(program, namespace)
except BaseException:
    try:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        exit_now(1)
try:
    sys.stdout.flush()
finally:
    write(result_fd, token + b"\n")
    exit_now(0)
"""

_SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


def run_program(program: str, limits: SandboxLimits | None = None) -> Execution:
    """Run ``program`` (Python source) in a sandboxed child process and say whether it ran to its end."""
    limits = limits or SandboxLimits()
    work = tempfile.mkdtemp(prefix="wmss-sandbox-")
    os.chmod(work, 0o700)
    token = secrets.token_hex(16)
    spec = {
        "program": program,
        "token": token,
        "work": work,
        "cpu_s": int(limits.timeout_s) + 1,
        "memory": limits.memory_mb * 2**20,
        "file_size": limits.max_file_mb * 2**20,
        "max_processes": limits.max_processes,
        "uid_base": SANDBOX_UID_BASE,
    }
    env = {**_SAFE_ENV, "HOME": work, "TMPDIR": work}
    read_end, write_end = os.pipe()
    spec["result_fd"] = write_end
    start = time.monotonic()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    except BaseException:
        os.close(read_end)
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        os.close(write_end)
    try:
        process.stdin.write(json.dumps(spec).encode())
        process.stdin.close()
    except BrokenPipeError:
        pass
    own_users = sys.platform.startswith("linux") and os.geteuid() == 0
    uid = SANDBOX_UID_BASE + process.pid if own_users else None
    outputs, timed_out, leftovers = _collect(process, read_end, limits, start + limits.timeout_s, uid)
    duration = time.monotonic() - start
    returncode = process.wait()
    shutil.rmtree(work, ignore_errors=True)
    status_line, _, rest = outputs["result"].partition(b"\n")
    try:
        status = json.loads(status_line)
    except ValueError:
        status = {}
    passed = not timed_out and returncode == 0 and rest.strip() == token.encode()
    if passed:
        verdict = "passed"
    elif timed_out:
        verdict = "timeout"
    elif returncode is not None and returncode < 0:
        verdict = "killed"
    else:
        verdict = "failed"
    return Execution(
        passed=passed,
        status=verdict,
        returncode=returncode,
        stdout=outputs["stdout"].decode("utf-8", "replace"),
        stderr=outputs["stderr"].decode("utf-8", "replace"),
        duration_s=round(duration, 3),
        network_cut=bool(status.get("network_cut")),
        own_user=bool(status.get("own_user")),
        pid_namespace=bool(status.get("own_pids")),
        read_only_outside=bool(status.get("read_only_outside")),
        leftovers_killed=leftovers,
    )


def run_programs(
    programs: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None
) -> list[Execution]:
    """Run every program in its own sandbox, ``workers`` at a time (default: one per CPU core)."""
    if not programs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, limits), programs))


def _collect(
    process: subprocess.Popen, result_fd: int, limits: SandboxLimits, deadline: float, uid: int | None
) -> tuple[dict[str, bytes], bool, int]:
    """Read the child's stdout, stderr and result pipe (keeping at most ``max_output_bytes`` of each)
    until it exits or the deadline passes; then kill what is left. Returns the outputs, whether it
    timed out, and how many leftover processes were killed."""
    streams = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr", result_fd: "result"}
    outputs = {name: bytearray() for name in streams.values()}
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    timed_out, leftovers, cleaned = False, 0, False
    try:
        while selector.get_map():
            now = time.monotonic()
            if not cleaned and process.poll() is not None:
                leftovers, cleaned = _kill_all(process, uid), True  # orphans may hold the pipes open
                deadline = min(deadline, now + 1.0)
            if now >= deadline:
                timed_out = not cleaned
                break
            for key, _ in selector.select(timeout=min(deadline - now, 0.05)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                kept = outputs[streams[key.fd]]
                room = (limits.max_output_bytes if streams[key.fd] != "result" else 4096) - len(kept)
                kept += chunk[: max(room, 0)]
    finally:
        selector.close()
        if not cleaned:
            leftovers = _kill_all(process, uid)
        os.close(result_fd)
    return {name: bytes(data) for name, data in outputs.items()}, timed_out, leftovers


def _kill_all(process: subprocess.Popen, uid: int | None) -> int:
    """Kill the child's process group and, when it ran under its own user id, every process of that
    user (a process that left the group included). Returns how many processes other than the child
    were still alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    if uid is None:
        return 0
    left = _processes_of(uid)
    count = len(left)
    for _ in range(50):
        if not left:
            break
        # kill(-1) from a process of that user reaches all of its processes in one step, so a fork bomb
        # cannot outrun it; the helper runs as that user and is not itself killed.
        subprocess.run(
            [sys.executable, "-I", "-S", "-c",
             f"import os; os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); "
             f"os.setresuid({uid}, {uid}, {uid}); os.kill(-1, 9)"],
            env=_SAFE_ENV, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.01)
        left = _processes_of(uid)
    return count


def _processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real user id is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        zombie = fields.get("State", "").strip().startswith("Z")
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not zombie:
            found.append(int(name))
    return found

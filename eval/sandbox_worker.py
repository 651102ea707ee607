"""The fork server behind the Python sandbox (host side: eval/sandbox.py).

It runs inside one bubblewrap sandbox (user, PID, network, mount, IPC and UTS namespaces,
read-only host, read-only /dev, no capabilities, empty environment), under the sandbox's own
interpreter, so it imports the standard library only, never lathe. For each program the host
sends, it builds a fresh process tree in fresh namespaces:

    worker      this loop: the uid bwrap gave it, no capabilities, not dumpable, a child subreaper
    monitor     setsid; new user, mount, PID, IPC and UTS namespaces (its capabilities reach
                only these); a fresh tmpfs on /tmp and on /dev/shm, the only writable places
    init        PID 1 of the new PID namespace: a fresh /proc; reaps orphans; exits with the
                program, and the kernel then kills whatever is left in the namespace
    program     PID 2: its own session; fds 0-4 only; rlimits; no capabilities, bounding set
                empty; then the code, run in this interpreter as ``python /tmp/.program/main.py``
                would run it (no exec and no interpreter start: that is the saving)

The monitor reports init's status once it has reaped init, that is once the program's PID
namespace is empty; the worker answers the host then. At the wall clock the worker SIGKILLs
the monitor's process group (monitor and init: the namespace goes down with init) and waits
until it has no child left before it answers.

What programs in one worker share: the worker's network namespace (no interface up, and
nothing in it a program may change), the uid, and the interpreter's state at the fork (its
imported modules, its hash seed).

Protocol on the inherited SOCK_SEQPACKET socket (fd in argv[1]): the host sends one byte
with five fds (program source, stdout, stderr, result pipe, secret pipe); the worker answers
``REPLY`` (returncode, timed_out, started). ``started`` says the program's code was reached:
without it the sandbox, not the program, failed. The program proves it ran to its end by
copying the secret from fd 4 to fd 3 (argv[2] -> argv[1]); the worker never sees the secret.

Only Python can be forked this way (the program runs in this interpreter); other languages
run one bubblewrap per program.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import gc
import os
import resource
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable  # also what HumanEval prompts import: loaded once here, not per program

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000
# Per program: a user namespace (capabilities for the rest, and only over them), a mount
# namespace (fresh /tmp, /dev/shm, /proc), a PID namespace (one process tree, killed whole),
# IPC (System V objects outlive their processes) and UTS. The network namespace stays the
# worker's: it has no interface up, a program can change nothing in it (that takes
# capabilities over the worker's user namespace), and its sockets die with their processes,
# so it carries nothing from one program to the next; a new one per program would cost
# about a millisecond, and more in the kernel's asynchronous teardown.
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 4, 24, 36
CAPABILITY_VERSION_3 = 0x20080522
SETUP_FAILED = 125  # the monitor's or init's exit status when the sandbox could not be built
REPLY = struct.Struct("=i??")  # returncode, timed_out, started
STATUS = struct.Struct("=i")  # init's exit status, from the monitor
PROGRAM = "/tmp/.program/main.py"

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _fork(child: Callable[[], None], err_fd: int) -> int:
    """Fork; the child runs ``child`` and never comes back into its caller's code: an error
    on its way is written to ``err_fd`` and ends it with SETUP_FAILED."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(err_fd, f"sandbox setup failed: {exc!r}\n".encode())
        os._exit(SETUP_FAILED)
    return pid


def _exit_code(status: int) -> int:
    """A wait status as an exit status; a signal N as 128 + N, as bubblewrap reports it."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _drop_capabilities() -> None:
    """Clear the bounding set, then every set: the program keeps nothing of the capabilities
    its new user namespace granted, and cannot regain them (no_new_privs, set by bwrap, holds)."""
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last = int(fh.read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding capability")
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x 2 words), all zero
    _check(libc.capset(header, data), "capset")


def _exit_status(exc: SystemExit) -> int:
    """What CPython's own exit makes of SystemExit's code."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _program(fds: list[int], started_w: int, limits: list[int]) -> None:
    """PID 2: set the process up, then run the source as ``__main__`` the way ``python path``
    would, and leave through os._exit."""
    os.setsid()
    # stdout, stderr, result, secret onto 1-4, `started` onto 5, the source onto 6; all moved
    # above them first, so that no dup2 overwrites an fd still to be moved
    source_fd, *outputs = fds
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in (*outputs, started_w, source_fd)]
    for target, fd in enumerate(high, 1):
        os.dup2(fd, target)
    os.closerange(7, 1 << 20)
    source = os.pread(6, os.fstat(6).st_size, 0)
    os.close(6)
    os.mkdir(os.path.dirname(PROGRAM))
    with open(PROGRAM, "wb") as fh:  # tracebacks quote it, and a program may read its own file
        fh.write(source)
    os.chdir("/tmp")
    cpu_s, address_space, nproc, fsize, nofile = limits
    for limit, soft_hard in (
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
        (resource.RLIMIT_AS, (address_space,) * 2),
        (resource.RLIMIT_NPROC, (nproc,) * 2),
        (resource.RLIMIT_FSIZE, (fsize,) * 2),
        (resource.RLIMIT_NOFILE, (nofile,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, soft_hard)
    _drop_capabilities()
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # an ordinary process from here on
    os.write(5, b"1")
    os.close(5)

    main = type(sys)("__main__")
    main.__dict__.update(__file__=PROGRAM, __cached__=None)  # as runpy sets them
    sys.modules["__main__"] = main
    sys.argv = [PROGRAM, "3", "4"]
    try:
        exec(compile(source, PROGRAM, "exec", dont_inherit=True), main.__dict__)  # not this file's __future__ flags
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException as exc:
        # reported as CPython reports it, without this frame
        if exc.__traceback__ is not None:  # always set on a raised exception
            exc.__traceback__ = exc.__traceback__.tb_next
        sys.excepthook(type(exc), exc, exc.__traceback__)
        status = 1
    # CPython's finalisation, in its order: join non-daemon threads, atexit, flush stdio
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # CPython's status when flushing fails
    os._exit(status)


def _init(fds: list[int], started_w: int, limits: list[int]) -> None:
    """PID 1 of the program's PID namespace: its /proc, the program, and reaping."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1 it then ignores SIGINT from the program
    # not dumpable: it keeps the capabilities of the new user namespace, and the program runs
    # as the same uid, in the same PID namespace (the program sets itself dumpable again)
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    _check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
    program = _fork(lambda: _program(fds, started_w, limits), 2)
    for fd in (*fds, started_w):
        os.close(fd)
    while True:  # the program's orphans are reparented here: reap them until the program ends
        pid, status = os.wait()
        if pid == program:
            os._exit(_exit_code(status))  # the kernel now kills whatever is left in the namespace


def _monitor(fds: list[int], started_w: int, status_w: int, limits: list[int]) -> None:
    """Fresh namespaces and writable filesystems for one program; reports init's exit status
    once init is reaped, that is once nothing of the program is left."""
    # dumpable again, or /proc/self belongs to root and its uid_map cannot be written; it is
    # safe: the program's processes live in a PID namespace (and /proc) that cannot see this one
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    os.setsid()  # its own process group, which the worker kills at the wall clock
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(NAMESPACES), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    for target in (b"/tmp", b"/dev/shm"):
        _check(libc.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=755"), f"mount {target.decode()}")

    def init() -> None:
        os.close(status_w)  # the monitor's alone: nothing in the program's namespace may report for it
        _init(fds, started_w, limits)

    init_pid = _fork(init, fds[2])
    for fd in (*fds, started_w):
        os.close(fd)
    _, status = os.waitpid(init_pid, 0)
    os.write(status_w, STATUS.pack(_exit_code(status)))
    os._exit(0)


def _child_of_worker(sock: socket.socket, fds: list[int], pipes: list[int], limits: list[int]) -> None:
    started_r, started_w, status_r, status_w = pipes
    sock.close()
    os.close(started_r)
    os.close(status_r)
    _monitor(fds, started_w, status_w, limits)


def _run(sock: socket.socket, fds: list[int], wall_s: float, limits: list[int]) -> tuple[int, bool, bool]:
    """One program: (returncode, timed_out, started), once nothing of it is left."""
    started_r, started_w = os.pipe()
    status_r, status_w = os.pipe()
    monitor = _fork(lambda: _child_of_worker(sock, fds, [started_r, started_w, status_r, status_w], limits), fds[2])
    for fd in (*fds, started_w, status_w):
        os.close(fd)
    poller = select.poll()
    poller.register(status_r, select.POLLIN)
    timed_out = not poller.poll(wall_s * 1000)  # wakes the moment the status comes: no polling loop
    status = b"" if timed_out else os.read(status_r, STATUS.size)
    if len(status) == STATUS.size:
        # Init is reaped, so its PID namespace is empty: answer now, and let the monitor's
        # exit (the namespaces' teardown, milliseconds) overlap the next program.
        (returncode,) = STATUS.unpack(status)
    else:  # the wall clock, or a monitor that died without a status: kill whatever is left
        os.kill(monitor, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # no group if it never reached setsid
            os.killpg(monitor, signal.SIGKILL)  # init too: the PID namespace goes down with it
        _, wait_status = os.waitpid(monitor, 0)
        returncode = -signal.SIGKILL if timed_out else _exit_code(wait_status)
        while True:  # an init that outlived its monitor is ours (subreaper): wait until none is left
            try:
                os.wait()
            except ChildProcessError:
                break
    started = os.read(started_r, 1) == b"1"  # every writer has closed it or is gone: this cannot block
    os.close(started_r)
    os.close(status_r)
    return returncode, timed_out, started


def _reap_exited() -> None:
    """Reap the monitors that exited after reporting (and anything else that ended)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def serve(sock: socket.socket, wall_s: float, limits: list[int]) -> None:
    """Run programs until the host closes the socket."""
    _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
    # Not dumpable: programs run as the worker's uid, and this keeps them out of its memory
    # and fds through /proc and ptrace.
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    # The collector never walks the worker's own objects in a forked process, so their pages
    # stay shared instead of being copied into every program.
    gc.freeze()
    while True:
        _, fds, _, _ = socket.recv_fds(sock, 1, 5)
        if not fds:
            return  # end of file: the host is done with this worker (or gone)
        _reap_exited()
        sock.sendall(REPLY.pack(*_run(sock, fds, wall_s, limits)))


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), float(sys.argv[2]), [int(a) for a in sys.argv[3:]])

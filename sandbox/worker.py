"""A sandbox process: runs tasks on untrusted bytes under limits the kernel enforces.

``python -m sandbox.worker FD LIMITS TASKS`` (sandbox/pool.py starts it). It
imports the tasks' module (and so what they need), then fixes its limits
before it takes any task:

- address space (RLIMIT_AS): its idle size plus ``memory``, a hard limit it
  cannot raise; an allocation past it fails (Python's MemoryError, or a C
  decoder's own error), and the process answers and exits;
- CPU time (RLIMIT_CPU): ``cpu_seconds`` more for each task, after which the
  kernel ends it with SIGXCPU (no core file);
- it dies with its serving process (PR_SET_PDEATHSIG), and it has no stdin,
  no stdout and none of the serving process's sockets or files.

The serving side adds the wall-clock deadline (a task blocked in the kernel
burns no CPU) by killing the process. A process that grew past its idle size
(a fragmented heap) says so and exits after its answer, and the pool starts a
fresh one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import json
import math
import os
import resource
import signal
import socket
import sys

from sandbox.wire import WireError, recv_frame, send_frame

RETIRE_GROWTH = 64 * 1024 * 1024  # address space kept after a task beyond which the process retires
_PR_SET_PDEATHSIG = 1
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_M_ARENA_MAX = -8


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    limits = json.loads(argv[2])
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return_large_blocks_to_the_os()
    one_malloc_arena()
    tasks = importlib.import_module(argv[3])  # Pillow, pygit2: loaded before the ceiling, in the idle size
    if hasattr(tasks, "prepare"):
        tasks.prepare()  # and what the tasks load lazily in other processes (libheif)

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    idle = address_space()
    ceiling = _lower_of(idle + limits["memory"], resource.getrlimit(resource.RLIMIT_AS)[1])
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    send_frame(sock, {"idle_memory": idle})
    while True:
        try:
            header, _, fds = recv_frame(sock, with_fds=True)
        except (WireError, OSError):
            return 0  # the serving process closed or died
        _allow_cpu(limits["cpu_seconds"])
        try:
            answer, blobs = tasks.run(header, fds)
        except MemoryError:
            send_frame(sock, {"failed": "memory", "detail": f"over the {limits['memory']}-byte ceiling"})
            return 0  # a failed allocation may have left a library half-done: never reuse the process
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        answer["retiring"] = address_space() > idle + RETIRE_GROWTH
        send_frame(sock, answer, blobs)
        if answer["retiring"]:
            return 0


def return_large_blocks_to_the_os() -> None:
    """glibc keeps freed memory in its heap for reuse, and a decode frees tens of megabytes at a time, which
    would then never go back to the OS: buffers over 1 MiB are mapped on their own instead, and returned
    when freed. For the sandboxes and gunicorn's workers alike (gunicorn.conf.py's post_fork)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and hasattr(ctypes.CDLL(libc_name), "mallopt"):  # glibc's; not every libc has it
        ctypes.CDLL(libc_name).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def one_malloc_arena() -> None:
    """Decoder threads (libde265's, for a HEIC) allocate from the one heap: glibc would give each thread an
    arena of its own, 64 MiB of reserved address space that counts against RLIMIT_AS though it holds
    nothing (a 24 MP HEIC: a peak of 309 MiB of address space instead of 182). Not for gunicorn's
    workers, whose 64 threads would then contend for one lock."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and hasattr(ctypes.CDLL(libc_name), "mallopt"):
        ctypes.CDLL(libc_name).mallopt(_M_ARENA_MAX, 1)


def address_space() -> int:
    """The process's virtual size in bytes (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _lower_of(limit: int, current: int) -> int:
    """A limit never above the one the process was started with (RLIM_INFINITY: none)."""
    return limit if current == resource.RLIM_INFINITY else min(limit, current)


def _allow_cpu(seconds: int) -> None:
    """The next task may use ``seconds`` of CPU from now: the soft limit moves, the hard one stays."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, resource.RLIM_INFINITY))


if __name__ == "__main__":
    sys.exit(main(sys.argv))

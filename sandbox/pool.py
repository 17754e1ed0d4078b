"""A small pool of pre-started sandbox processes, and the serving side of a call into one.

A call takes an idle process (or waits for one), sends it the task, and waits
for the answer on a socket: the serving thread holds no GIL meanwhile, and
the process's own limits stop a task that runs away (sandbox/worker.py). Past
``Limits.wall_seconds`` the serving side kills the process itself. A process
that dies or is killed fails that one call (:class:`SandboxFailed`, with its
cause); the pool starts another in the background, and the other calls never
notice.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from sandbox.wire import WireError, recv_frame, send_frame

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_SECONDS = 30  # a new process imports Pillow and pygit2: a fraction of a second, unless the machine is swamped


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes of address space one task may add to the idle process (RLIMIT_AS)
    cpu_seconds: int  # CPU time one task may use (RLIMIT_CPU: the kernel sends SIGXCPU)
    wall_seconds: float  # past this the serving side kills the process (a task blocked, not burning)


class SandboxFailed(Exception):
    """The task did not finish: ``cause`` is memory, cpu, deadline or crashed."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


class PoolBusy(Exception):
    """No sandbox process came free within the wait."""


class _Process:
    """One sandbox process and the serving side's end of its socket."""

    @classmethod
    def start(cls, limits: Limits, tasks: str) -> _Process:
        """A new process, started by the one long-lived thread that starts them all: the kernel ends a
        process when the thread that started it ends (PR_SET_PDEATHSIG), not only with its process."""
        return _spawner().submit(cls, limits, tasks).result()

    def __init__(self, limits: Limits, tasks: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "sandbox.worker", str(theirs.fileno()), json.dumps(asdict(limits)), tasks],
                pass_fds=[theirs.fileno()], cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        self.sock = ours
        try:
            ready, _, _ = recv_frame(self.sock, deadline=time.monotonic() + START_SECONDS)
        except (WireError, OSError) as error:
            self.kill()
            raise SandboxFailed("crashed", f"the sandbox process did not start: {error}") from None
        self.idle_memory: int = ready["idle_memory"]
        self.retiring = False  # it grew past its idle size and exits after this answer

    def call(
        self, task: str, header: dict[str, Any], fds: Sequence[int], seconds: float
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The task's answer (header, blobs); SandboxFailed when the process died or ran out of time,
        _DiedIdle when it was dead before the task reached it."""
        deadline = time.monotonic() + seconds
        try:
            self.sock.settimeout(seconds)
            send_frame(self.sock, {"task": task, **header}, fds=fds)
        except OSError as error:
            self.kill()
            raise _DiedIdle(str(error)) from None
        try:
            answer, blobs, _ = recv_frame(self.sock, deadline=deadline)
        except TimeoutError:
            self.kill()
            raise SandboxFailed("deadline", f"no answer within {seconds:g} s; killed") from None
        except (WireError, OSError) as error:
            status = self.kill()
            raise SandboxFailed("cpu" if status == -signal.SIGXCPU else "crashed",
                                f"the process ended ({error}; exit status {status})") from None
        if "failed" in answer:  # the task hit its memory ceiling: the process exits after saying so
            self.kill()
            raise SandboxFailed(answer["failed"], answer.get("detail", ""))
        self.retiring = bool(answer.pop("retiring", False))
        return answer, blobs

    def kill(self) -> int:
        """Kill and reap the process; its exit status (a signal's is negative: -SIGXCPU, the CPU limit's)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGKILL)
        return self.popen.wait()


class _DiedIdle(Exception):
    """The process was gone before the task reached it (killed from outside while idle): no fault of the task."""


class Pool:
    """``size`` sandbox processes with the same limits; started on first use (or ``warm()``).

    ``tasks`` names the module whose ``run(header, fds)`` the processes call.
    """

    def __init__(self, name: str, size: int, limits: Limits, tasks: str = "sandbox.tasks") -> None:
        self.name = name
        self.size = size
        self.limits = limits
        self.tasks = tasks
        # The process used last is taken first: its caches are still warm.
        self._idle: queue.LifoQueue[_Process] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._alive = 0  # started or starting
        self._members: set[_Process] = set()  # the live processes, idle or busy
        self._closed = False

    def run(
        self, task: str, header: dict[str, Any], *, fds: Sequence[int] = (), wait: float
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Run ``task`` in an idle process (waiting up to ``wait`` s for one): its (header, blobs).

        Raises PoolBusy, or SandboxFailed when the task could not finish.
        """
        process = self._take(wait)
        try:
            try:
                answer, blobs = process.call(task, header, fds, self.limits.wall_seconds)
            except _DiedIdle as died:  # once more, in a fresh process: the task itself has not run
                log.warning("sandbox %s: an idle process had died (%s); starting another", self.name, died)
                with self._lock:
                    self._alive -= 1
                process = self._take(wait)
                answer, blobs = process.call(task, header, fds, self.limits.wall_seconds)
        except _DiedIdle as died:
            self._replace()
            raise SandboxFailed("crashed", f"a fresh process was gone before the task reached it ({died})") from None
        except SandboxFailed as failure:
            log.warning("sandbox %s: task %s failed (%s); starting another process", self.name, task, failure)
            self._replace()
            raise
        if process.retiring:
            process.kill()
            self._replace()
        else:
            self._idle.put(process)
        return answer, blobs

    @contextlib.contextmanager
    def held(self, wait: float) -> Iterator[_Process]:
        """One idle process, kept from calls until the block ends (what a running call does to a pool)."""
        process = self._take(wait)
        try:
            yield process
        finally:
            self._idle.put(process)

    def warm(self) -> None:
        """Start every process now, not on first use (gunicorn's post_worker_init)."""
        for _ in range(self.size):
            with self._lock:
                if self._alive >= self.size:
                    return
                self._alive += 1
            self._start_into_idle()

    def members(self) -> list[_Process]:
        """The pool's live processes (their ``popen.pid`` and ``idle_memory``): for benchmarks and tests."""
        with self._lock:
            return [process for process in self._members if process.popen.poll() is None]

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return

    def _take(self, wait: float) -> _Process:
        with contextlib.suppress(queue.Empty):
            return self._idle.get_nowait()
        with self._lock:
            start_one = self._alive < self.size
            self._alive += start_one
        if start_one:
            try:
                return self._joined(_Process.start(self.limits, self.tasks))
            except SandboxFailed:
                with self._lock:
                    self._alive -= 1
                raise
        try:
            return self._idle.get(timeout=wait)
        except queue.Empty:
            raise PoolBusy(f"no {self.name} sandbox came free within {wait:g} s") from None

    def _replace(self) -> None:
        # In the background: the failed call answers now, and the next one finds a fresh process.
        threading.Thread(target=self._start_into_idle, name=f"sandbox-{self.name}-start", daemon=True).start()

    def _start_into_idle(self) -> None:
        try:
            process = _Process.start(self.limits, self.tasks)
        except SandboxFailed as failure:
            with self._lock:
                self._alive -= 1
            log.error("sandbox %s: %s", self.name, failure)
            return
        if self._closed:
            process.kill()
        else:
            self._idle.put(self._joined(process))

    def _joined(self, process: _Process) -> _Process:
        with self._lock:
            self._members = {member for member in self._members if member.popen.poll() is None} | {process}
        return process


_POOLS: dict[tuple[str, int, Limits], Pool] = {}
_POOLS_LOCK = threading.Lock()
_POOLS_PID = os.getpid()
_SPAWNER: concurrent.futures.ThreadPoolExecutor | None = None


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    global _SPAWNER
    with _POOLS_LOCK:
        _forget_after_fork()
        if _SPAWNER is None:
            _SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sandbox-start")
        return _SPAWNER


def _forget_after_fork() -> None:
    """Forked (gunicorn --preload): the parent's processes and threads are not this process's."""
    global _POOLS_PID, _SPAWNER
    if _POOLS_PID != os.getpid():
        _POOLS.clear()
        _SPAWNER = None
        _POOLS_PID = os.getpid()


def pool(name: str, size: int, limits: Limits) -> Pool:
    """The process's pool of that name, size and limits (one each, made on first ask)."""
    with _POOLS_LOCK:
        _forget_after_fork()
        key = (name, size, limits)
        if key not in _POOLS:
            _POOLS[key] = Pool(name, size, limits)
        return _POOLS[key]


@atexit.register
def close_all() -> None:
    with _POOLS_LOCK:
        pools = list(_POOLS.values()) if _POOLS_PID == os.getpid() else []
    for each in pools:
        each.close()

"""Noticing changes in a workspace: one inotify fd and one thread per process.

Every watcher of the process shares one inotify instance, read by one daemon
thread that sleeps in ``poll`` until an event arrives or the nearest deadline
is due (a burst's debounce, a polling tick, a retry); with nothing pending it
sleeps with no timeout. A thousand watched workspaces thus cost one thread,
and an idle one no CPU at all (watchdog took a thread per watched directory,
and each watcher woke every 2 s to see whether its workspace had moved).

Reads are not subscribed to (a scan's own reads must not trigger a scan), and
writes under ``.git/objects`` or to ``.git/*.lock`` are ignored (a commit or
``git add`` also changes the index or a ref); object stores are not even
watched, which spares up to 256 watches a repository.

A workspace deleted, moved away or replaced shows as an event on its own
directory's watch: its watchers then resolve it again. A missing workspace is
watched through its nearest existing parent until it appears; one that now
resolves outside ``boundary`` is not watched at all (polling instead, so the
session notices and reports it). A directory moved *above* the workspace sends
its watch no event: the workspace is resolved again before every scan, so the
next change or refresh notices it (there is no periodic rescan: it would cost
CPU for every watched workspace).

If no watch can be made (inotify limits, or anything else failing), the
watcher polls: a change every ``poll_interval`` seconds, a real watch retried
every 10 s. Trees of any depth are walked without recursion (a directory
2,000 deep raised RecursionError in watchdog's walk, killing the thread that
read inotify for every socket of the process).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from inotify_simple import Event, INotify, flags

__all__ = ["WorkspaceWatcher"]

log = logging.getLogger(__name__)

# Writes, creations, deletions and moves; never reads (IN_ACCESS, IN_OPEN, IN_CLOSE_NOWRITE):
# git's own reads during a scan must not wake the watcher again.
_CHANGES = (
    flags.CREATE | flags.DELETE | flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVED_FROM | flags.MOVED_TO
)
_SELF_GONE = flags.DELETE_SELF | flags.MOVE_SELF
# Directories only and symlinks never followed (one swapped in after a walk listed it is refused);
# nothing from files already unlinked.
_WATCH_MASK = _CHANGES | _SELF_GONE | flags.ONLYDIR | flags.DONT_FOLLOW | flags.EXCL_UNLINK
_APPEARED = flags.CREATE | flags.MOVED_TO
# The kernel's limits, not one directory's trouble: the whole watch fails (and polls).
_LIMIT_ERRORS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# Directories watched per workspace at most: a larger tree polls instead. Its walk runs under the registry's
# lock, which every other workspace's events wait for, and its watches come out of the user's inotify limit.
MAX_WATCHED_DIRECTORIES = 4096


def _below_git_dir(path: str) -> list[str] | None:
    """The path's parts below its ``.git`` directory; None when it is not in one."""
    parts = path.split(os.sep)
    if ".git" not in parts:
        return None
    return parts[parts.index(".git") + 1:]


def _in_object_store(path: str) -> bool:
    inside = _below_git_dir(path)
    return inside is not None and (inside[:1] == ["objects"] or (inside[:1] == ["modules"] and "objects" in inside))


def _is_noise(path: str) -> bool:
    """Git internals that never carry a change on their own.

    Objects are written with every commit or ``add``, which also touch the
    index or a ref; ``*.lock`` files are created and renamed away.
    """
    return _in_object_store(path) or (_below_git_dir(path) is not None and path.endswith(".lock"))


def _walk(top: str, skip: Callable[[str], bool]) -> Iterator[str]:
    """Every directory of the tree at ``top`` (itself first), without recursion.

    A tree 2,000 deep must not raise RecursionError. Each directory is yielded
    before it is listed, so that one watched as it is yielded misses no child
    made meanwhile. Symlinks are never followed, unreadable directories are not
    listed, and ``skip``ped ones are left out with all below them.
    """
    pending = [top]
    while pending:
        directory = pending.pop()
        yield directory
        try:
            with os.scandir(directory) as listing:
                children = [entry.path for entry in listing if _is_real_directory(entry)]
        except OSError:
            continue
        pending.extend(reversed([child for child in children if not skip(child)]))


def _is_real_directory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


@dataclass(frozen=True)
class _WatchTarget:
    """What to watch for a workspace: itself, or its nearest existing parent."""

    path: str
    recursive: bool
    identity: tuple[int, int]  # (st_dev, st_ino): notices deleted and recreated dirs

    @property
    def key(self) -> tuple[str, bool]:
        return self.path, self.recursive


def _watch_target(workspace: str, boundary: str | None) -> _WatchTarget | None:
    path = os.path.realpath(workspace)
    if boundary is not None and path != boundary and not path.startswith(boundary + os.sep):
        return None  # swapped to lead outside: never watch (or read) there
    recursive = True
    while True:
        try:
            status = os.stat(path)
            if os.path.isdir(path):
                return _WatchTarget(path, recursive, (status.st_dev, status.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(path)
        if parent == path:
            return None
        # The workspace may be created later: its parent tells us when.
        path, recursive = parent, False


class _SharedWatch:
    """The inotify watches of one directory (and of its tree when recursive), shared by its watchers."""

    def __init__(self, target: _WatchTarget) -> None:
        self.target = target
        self.watchers: list[WorkspaceWatcher] = []
        self.directories: dict[int, str] = {}  # watch descriptor -> the directory's path
        self.root_wd: int | None = None
        self.retired = False  # no longer watched: its watchers must move


class _WatchRegistry:
    """The process's inotify fd, the one thread reading it, and the shared watches.

    Everything here runs under ``_lock``; a watcher's own lock is only ever
    taken inside it, and ``on_change`` is called with neither held.
    """

    FOLLOW_LIMIT = 8  # re-resolutions in a row, when the workspace keeps changing under us
    ERROR_PAUSE_SECONDS = 1.0  # after an unexpected failure of the loop: no hot loop if it repeats

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._start_failed_at: float | None = None
        self._inotify: INotify | None = None  # opened at the first watch: its limit must not stop the thread
        self._wake_r = self._wake_w = -1
        self._watches: dict[tuple[str, bool], _SharedWatch] = {}
        self._owners: dict[int, list[_SharedWatch]] = {}  # watch descriptor -> the shared watches using it
        self._busy: set[WorkspaceWatcher] = set()  # those with a deadline: a burst, or polling

    # -- used by WorkspaceWatcher -------------------------------------------

    def subscribe(self, watcher: WorkspaceWatcher) -> None:
        """A shared watch for ``watcher`` when one can be made, else polling."""
        running = self.ensure_running()
        with self._lock:
            now = time.monotonic()
            if running:
                self._follow(watcher, now, initial=True)
            else:  # nobody would read its events
                self._poll(watcher, now)

    def unsubscribe(self, watcher: WorkspaceWatcher) -> None:
        with self._lock:
            shared, watcher._shared = watcher._shared, None
            if shared is not None:
                self._leave(shared, watcher)
            self._busy.discard(watcher)

    def acquire(self, target: _WatchTarget, watcher: WorkspaceWatcher) -> _SharedWatch:
        """Join ``target``'s shared watch, made if needed; raises OSError when none can be made, whatever the cause."""
        with self._lock:
            shared = self._watches.get(target.key)
            displaced: list[WorkspaceWatcher] = []
            if shared is not None and shared.target.identity != target.identity:
                # Replaced before its event was read: watch the new directory, for everyone.
                displaced, shared = self._retire(shared), None
            if shared is None:
                shared = self._watch(target)
            shared.watchers.append(watcher)
            now = time.monotonic()
            for other in displaced:
                self._follow(other, now)
            return shared

    def delivering(self) -> bool:
        """This process's notifier thread lives (threads do not survive fork, and one may die)."""
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def ensure_running(self) -> bool:
        """Start the thread if this process has none; False when none can be had (retried every 10 s)."""
        if self.delivering():
            return True
        with self._lock:
            return self.delivering() or self._restart(time.monotonic())

    # -- the thread ----------------------------------------------------------

    def _restart(self, now: float) -> bool:
        failed_at = self._start_failed_at
        if failed_at is not None and now - failed_at < WorkspaceWatcher.REARM_RETRY_SECONDS:
            return False
        self._close_fds()  # inherited through fork, or the dead thread's
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            thread = threading.Thread(target=self._run, name="gitwatch-notify", daemon=True)
            thread.start()
        except Exception as error:  # no fd, or no thread to be had
            self._close_fds()
            self._start_failed_at = now
            log.warning("gitwatch: no notifier thread (%s); watchers poll", error)
            return False
        self._thread, self._pid, self._start_failed_at = thread, os.getpid(), None
        self._rewatch_all(now)
        return True

    def _close_fds(self) -> None:
        self._close_inotify()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        while True:
            try:
                self._serve_once()
            except Exception:
                log.exception("gitwatch: the notifier failed; its watchers poll until a watch can be made again")
                self._recover(time.monotonic())
                time.sleep(self.ERROR_PAUSE_SECONDS)

    def _serve_once(self) -> None:
        with self._lock:
            timeout = self._timeout_ms(time.monotonic())
            fds = [self._wake_r] + ([self._inotify.fileno()] if self._inotify is not None else [])
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(timeout)
        self._drain_wake_pipe()
        with self._lock:
            if self._inotify is not None:
                self._dispatch(self._inotify.read(timeout=0), time.monotonic())
            reported = self._run_due(time.monotonic())
        for watcher, at in reported:
            watcher._report(at)

    def _timeout_ms(self, now: float) -> int | None:
        """Until the nearest deadline; None (no timeout) when nothing is pending."""
        deadlines = [deadline for watcher in self._busy if (deadline := watcher._next_deadline()) is not None]
        if not deadlines:
            return None
        return math.ceil(max(0.0, min(deadlines) - now) * 1000)  # rounded up: never wake just before it

    def _wake(self) -> None:
        """Make the thread compute its timeout again (a deadline or the inotify fd was added)."""
        if self._wake_w >= 0 and self._pid == os.getpid():
            try:
                os.write(self._wake_w, b"\0")
            except OSError:  # full: a wake-up is pending already
                pass

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _recover(self, now: float) -> None:
        """After an unexpected failure: a fresh inotify fd at the next retry, every watcher polling until then."""
        with self._lock:
            self._close_inotify()
            for shared in list(self._watches.values()):
                self._fall_back(shared, now)

    # -- events and deadlines ---------------------------------------------------

    def _dispatch(self, events: list[Event], now: float) -> None:
        for event in events:
            if event.mask & flags.Q_OVERFLOW:
                log.warning("gitwatch: the inotify queue overflowed; every watch is made again")
                self._rewatch_all(now)
                continue
            owners = self._owners.get(event.wd)
            if not owners:
                continue  # a watch we dropped
            if event.mask & flags.IGNORED:
                self._forget(event.wd, now)
                continue
            for shared in list(owners):
                try:
                    self._handle(shared, event, now)
                except OSError as error:  # a limit reached (the kernel's, or MAX_WATCHED_DIRECTORIES)
                    log.warning("gitwatch: %s cannot be watched (%s); its watchers poll", shared.target.path, error)
                    self._fall_back(shared, now)
                except Exception:
                    log.exception("gitwatch: an event for %s failed; its watchers poll", shared.target.path)
                    self._fall_back(shared, now)

    def _handle(self, shared: _SharedWatch, event: Event, now: float) -> None:
        directory = shared.directories.get(event.wd)
        if directory is None or shared.retired:
            return
        if event.mask & _SELF_GONE:
            if event.wd == shared.root_wd:
                self._root_gone(shared, now)
            return  # a subdirectory's: its parent's DELETE or MOVED_FROM tells the change
        path = os.path.join(directory, event.name) if event.name else directory
        if event.mask & flags.ISDIR and shared.target.recursive:
            if event.mask & _APPEARED and not _in_object_store(path):  # e.g. made by git init or clone
                self._add_tree(shared, path)
            elif event.mask & flags.MOVED_FROM:
                self._drop_tree(shared, path)
        if _is_noise(path):
            return
        for watcher in list(shared.watchers):
            if not shared.target.recursive:
                self._follow(watcher, now)  # a parent's watch: the workspace may have appeared
            self._note(watcher, now)

    def _forget(self, wd: int, now: float) -> None:
        """The kernel dropped the watch (its directory deleted, or unmounted)."""
        for shared in self._owners.pop(wd, []):
            shared.directories.pop(wd, None)
            if shared.root_wd == wd and not shared.retired:
                self._root_gone(shared, now)

    def _run_due(self, now: float) -> list[tuple[WorkspaceWatcher, float]]:
        """Settled bursts, polling ticks and watch retries that are due; returns the changes for ``on_change``."""
        reported = []
        for watcher in list(self._busy):
            try:
                if watcher._rearm_due(now):
                    self._follow(watcher, now)
                at = watcher._settle_or_tick(now)
                if at is not None:
                    reported.append((watcher, at))
            except Exception:
                log.exception("gitwatch: the watch of %s failed; it polls", watcher._path)
                self._to_polling(watcher, now)
            if watcher._next_deadline() is None:
                self._busy.discard(watcher)
        return reported

    # -- moving watchers between shared watches ---------------------------------

    def _follow(self, watcher: WorkspaceWatcher, now: float, *, initial: bool = False) -> None:
        """Watch what the workspace resolves to now, if that changed; a move is a change."""
        for attempt in range(self.FOLLOW_LIMIT):
            target = _watch_target(watcher._path, watcher._boundary)
            current = watcher._shared
            if current is not None and not current.retired and current.target == target:
                return
            self._move(watcher, target, now)
            still_polling = current is None and watcher._shared is None
            if not (initial and attempt == 0) and not still_polling:
                self._note(watcher, now)  # the workspace itself changed, or events may have been missed
            if watcher._shared is None:
                return
            # Look again: the workspace may have appeared before its parent's watch was made.

    def _move(self, watcher: WorkspaceWatcher, target: _WatchTarget | None, now: float) -> None:
        current, watcher._shared = watcher._shared, None
        if current is not None:
            self._leave(current, watcher)
        try:
            if target is None:
                raise OSError(errno.ENOENT, "nothing to watch inside the boundary")
            watcher._shared = self.acquire(target, watcher)
        except Exception as error:  # OSError, or anything else: polling, never an exception for the socket
            if not isinstance(error, OSError):
                log.warning("gitwatch: watching %s failed; it polls", watcher._path, exc_info=True)
            self._poll(watcher, now, restart_ticks=current is not None)

    def _leave(self, shared: _SharedWatch, watcher: WorkspaceWatcher) -> None:
        if watcher in shared.watchers:
            shared.watchers.remove(watcher)
        if not shared.watchers and not shared.retired:
            self._retire(shared)

    def _root_gone(self, shared: _SharedWatch, now: float) -> None:
        for watcher in self._retire(shared):
            self._follow(watcher, now)

    def _rewatch_all(self, now: float) -> None:
        """Every watch made again and every watcher told: events may have been missed."""
        for shared in list(self._watches.values()):
            self._root_gone(shared, now)

    def _fall_back(self, shared: _SharedWatch, now: float) -> None:
        for watcher in self._retire(shared):
            self._to_polling(watcher, now)

    def _to_polling(self, watcher: WorkspaceWatcher, now: float) -> None:
        current, watcher._shared = watcher._shared, None
        if current is not None:
            self._leave(current, watcher)
        self._poll(watcher, now, restart_ticks=current is not None)
        self._note(watcher, now)

    def _poll(self, watcher: WorkspaceWatcher, now: float, *, restart_ticks: bool = False) -> None:
        watcher._start_polling(now, restart_ticks=restart_ticks)
        self._mark_busy(watcher)

    def _note(self, watcher: WorkspaceWatcher, now: float) -> None:
        watcher._note_event(now)
        self._mark_busy(watcher)

    def _mark_busy(self, watcher: WorkspaceWatcher) -> None:
        self._busy.add(watcher)
        if threading.current_thread() is not self._thread:
            self._wake()  # it may be asleep with no timeout

    # -- inotify watches ----------------------------------------------------------

    def _watch(self, target: _WatchTarget) -> _SharedWatch:
        shared = _SharedWatch(target)
        try:
            self._add_tree(shared, target.path, root=True)
        except Exception as error:  # inotify limits, or anything else going wrong
            self._retire(shared)
            if isinstance(error, OSError):
                raise
            raise OSError(errno.EIO, f"file watching failed: {type(error).__name__}") from error
        self._watches[target.key] = shared
        return shared

    def _retire(self, shared: _SharedWatch) -> list[WorkspaceWatcher]:
        """Stop watching ``shared``'s directories; returns its watchers, who must move."""
        if self._watches.get(shared.target.key) is shared:
            del self._watches[shared.target.key]
        for wd in list(shared.directories):
            self._drop_directory(shared, wd)
        shared.retired = True
        return list(shared.watchers)

    def _add_tree(self, shared: _SharedWatch, top: str, *, root: bool = False) -> None:
        inotify = self._open_inotify()
        directories = _walk(top, skip=_in_object_store) if shared.target.recursive else iter([top])
        for directory in directories:
            if len(shared.directories) >= MAX_WATCHED_DIRECTORIES:
                raise OSError(errno.ENOSPC, f"more than {MAX_WATCHED_DIRECTORIES} directories to watch")
            self._add_directory(inotify, shared, directory, root=root and directory == top)

    def _add_directory(self, inotify: INotify, shared: _SharedWatch, path: str, *, root: bool) -> None:
        try:
            wd = inotify.add_watch(path, _WATCH_MASK)
        except OSError as error:
            if root or error.errno in _LIMIT_ERRORS:
                raise
            return  # gone, unreadable, or a symlink now since the walk listed it
        shared.directories[wd] = path
        owners = self._owners.setdefault(wd, [])
        if shared not in owners:
            owners.append(shared)
        if root:
            shared.root_wd = wd

    def _drop_tree(self, shared: _SharedWatch, path: str) -> None:
        """A directory moved out: it and everything below stop counting (if moved within, they are added again)."""
        below = path + os.sep
        for wd, directory in list(shared.directories.items()):
            if directory == path or directory.startswith(below):
                self._drop_directory(shared, wd)

    def _drop_directory(self, shared: _SharedWatch, wd: int) -> None:
        shared.directories.pop(wd, None)
        owners = self._owners.get(wd, [])
        if shared in owners:
            owners.remove(shared)
        if owners:
            return  # another shared watch still uses it
        self._owners.pop(wd, None)
        if self._inotify is not None:
            try:
                self._inotify.rm_watch(wd)
            except OSError:  # the kernel dropped it already, with its directory
                pass

    def _close_inotify(self) -> None:
        # Closing, never rm_watch: in a forked child the parent's watches are the same ones.
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.close()
            self._inotify = None
        # Its watch descriptors died with it.
        self._owners.clear()
        for shared in self._watches.values():
            shared.directories.clear()
            shared.root_wd = None

    def _open_inotify(self) -> INotify:
        if self._inotify is None:
            self._inotify = INotify(nonblocking=True)  # close-on-exec; OSError at the instance limit
            self._wake()  # the thread polls it from its next turn
        return self._inotify


_REGISTRY = _WatchRegistry()


def _fresh_lock_after_fork() -> None:
    # A thread of the parent may have held it at fork: the child would wait forever.
    _REGISTRY._lock = threading.RLock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


class WorkspaceWatcher:
    """Tells when files in a workspace (``.git`` included) changed.

    ``changed()`` is a non-blocking check, ``wait_for_change(timeout)`` blocks,
    and ``on_change(last_change_at)``, when given, is called from the
    notifier thread (quickly: it is every watcher's thread). All report a
    burst of events once: after the first event they wait until events pause
    for ``debounce`` seconds, at most ``max_delay`` seconds.

    Modes (``mode``): ``"events"`` (inotify), or ``"polling"`` when no watch
    could be made: then a change is reported every ``poll_interval`` seconds
    and a real watch is retried. A missing workspace is handled by watching
    its nearest existing parent; deletion, moves and re-creation are
    followed. Thread-safe; close it (or use ``with``).
    """

    REARM_RETRY_SECONDS = 10.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        debounce: float = 0.1,
        max_delay: float = 0.5,
        poll_interval: float = 2.0,
        boundary: str | os.PathLike[str] | None = None,
        on_change: Callable[[float], None] | None = None,
    ):
        self._path = os.path.abspath(path)
        self._boundary = os.path.realpath(boundary) if boundary is not None else None
        self.last_change_at = time.monotonic()  # the last event of the last burst reported
        self._debounce = debounce
        self._max_delay = max_delay
        self._poll_interval = poll_interval
        self._on_change = on_change
        self._condition = threading.Condition()
        self._burst: tuple[float, float] | None = None  # (first, last) event of a burst not yet settled
        self._pending = False  # a settled burst (or tick) that changed() has not returned yet
        self._next_poll = time.monotonic() + poll_interval
        self._next_arm_attempt = 0.0
        self._shared: _SharedWatch | None = None  # set by the registry; None means polling
        self._closed = False
        self._registry = _REGISTRY
        self._registry.subscribe(self)

    @property
    def mode(self) -> str:
        return "events" if self._shared is not None else "polling"

    def changed(self) -> bool:
        """True once per settled burst of changes (or poll tick) since the last True."""
        if self._closed:
            return False
        on_its_own = not self._registry.ensure_running()
        with self._condition:
            if self._closed:
                return False
            if on_its_own:  # no notifier thread could be had: its timing is done here
                self._settle_or_tick(time.monotonic())
            taken, self._pending = self._pending, False
            return taken

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.changed():
            now = time.monotonic()
            if now >= deadline or self._closed:
                return False
            wake_at = deadline  # the notifier thread wakes us
            if not self._registry.delivering():
                wake_at = min(deadline, self._timing_deadline() or deadline)
            with self._condition:
                if not self._pending and not self._closed:
                    self._condition.wait(max(0.0, wake_at - now))
        return True

    def close(self) -> None:
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._condition.notify_all()
        self._registry.unsubscribe(self)

    def __enter__(self) -> WorkspaceWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- called by the registry, under its lock --------------------------------

    def _note_event(self, now: float) -> None:
        with self._condition:
            self._burst = (self._burst[0] if self._burst is not None else now, now)

    def _start_polling(self, now: float, *, restart_ticks: bool) -> None:
        with self._condition:
            self._shared = None
            if restart_ticks:
                self._next_poll = now + self._poll_interval
            self._next_arm_attempt = now + self.REARM_RETRY_SECONDS

    def _rearm_due(self, now: float) -> bool:
        return self._shared is None and not self._closed and now >= self._next_arm_attempt

    def _settle_or_tick(self, now: float) -> float | None:
        """Ends a settled burst, or ticks when polling; returns ``last_change_at`` when it reported one."""
        with self._condition:
            if self._closed:
                return None
            if self._burst is not None and (
                now - self._burst[1] >= self._debounce or now - self._burst[0] >= self._max_delay
            ):
                self.last_change_at = self._burst[1]
                self._burst = None
            elif self._shared is None and now >= self._next_poll:
                self._next_poll = now + self._poll_interval
                self.last_change_at = now - self._poll_interval  # anything since the last tick
            else:
                return None
            self._pending = True
            self._condition.notify_all()
            return self.last_change_at

    def _timing_deadline(self) -> float | None:
        """When the burst settles or the next polling tick is due; None when neither is pending."""
        with self._condition:
            if self._closed:
                return None
            deadlines = []
            if self._burst is not None:
                first, last = self._burst
                deadlines.append(min(last + self._debounce, first + self._max_delay))
            if self._shared is None:
                deadlines.append(self._next_poll)
            return min(deadlines, default=None)

    def _next_deadline(self) -> float | None:
        """The timing deadline, or the next retry of a real watch when polling."""
        deadline = self._timing_deadline()
        if self._shared is None and not self._closed:
            return self._next_arm_attempt if deadline is None else min(deadline, self._next_arm_attempt)
        return deadline

    def _report(self, at: float) -> None:
        """In the notifier thread, with no lock held."""
        if self._on_change is None or self._closed:
            return
        try:
            self._on_change(at)
        except Exception:
            log.exception("gitwatch: on_change failed for %s", self._path)

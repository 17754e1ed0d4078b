"""Noticing changes in a workspace, shared by every socket of the worker.

All watchers share one watchdog observer (one dispatch thread, one inotify
instance); watchdog adds one idle emitter thread per distinct watched
directory, shared by every socket watching it. Reads are not subscribed to
(a scan's own reads must not trigger a scan), and writes under
``.git/objects`` or to ``.git/*.lock`` are ignored (a commit or ``git add``
also changes the index or a ref). If no watch can be made (inotify limits),
the watcher polls: it reports a change every ``poll_interval`` seconds and
retries a real watch every 10 s; so does any other failure to make one,
and a watch whose inotify reader thread died. A missing workspace is watched
through its nearest existing parent; deletion and re-creation are followed.
A workspace that resolves outside ``boundary`` is not watched at all
(polling instead, so the session notices and reports it).

A tree of any depth is watched: watchdog walks it with ``os.walk``, which on
Python 3.11 recurses once per level (a directory 2,000 deep raised
RecursionError, in the socket's thread when the watch began, or later in
the thread reading inotify for every socket of the process, which died
with it); our emitter walks without recursion.

A change reaches the client after the route's receive timeout (0.25 s) +
the debounce (0.1 s after the last write, at most 0.5 s into a continuous
burst) + the scan itself, well under a second. An idle socket costs four
wake-ups a second, each a few ``stat`` calls and a lock.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD

__all__ = ["WorkspaceWatcher"]

# Reads (open, close without write, access) are left out on purpose: git's own
# reads during a scan must not wake the watcher again.
_EVENT_TYPES = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent,
    FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent, DirMovedEvent,
]


def _is_noise(path: str) -> bool:
    """Git internals that never carry a change on their own.

    Objects are written with every commit or ``add``, which also touch the
    index or a ref; ``*.lock`` files are created and renamed away.
    """
    parts = path.split(os.sep)
    if ".git" not in parts:
        return False
    inside = parts[parts.index(".git") + 1:]
    if inside[:1] == ["objects"] or (inside[:1] == ["modules"] and "objects" in inside):
        return True
    return path.endswith(".lock")


def _is_relevant(event: FileSystemEvent) -> bool:
    source = os.fsdecode(event.src_path)
    destination = os.fsdecode(event.dest_path) if event.dest_path else ""
    return not _is_noise(source) or bool(destination and not _is_noise(destination))


def _walk(top: bytes, followlinks: bool = False):
    """``os.walk(top)`` (top-down, unreadable directories skipped) without recursion."""
    pending = [top]
    while pending:
        root = pending.pop()
        try:
            with os.scandir(root) as listing:
                entries = list(listing)
        except OSError:
            continue
        dirnames, filenames, walk_into = [], [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirnames if is_dir else filenames).append(entry.name)
            if is_dir and (followlinks or not entry.is_symlink()):
                walk_into.append(entry.path)
        yield root, dirnames, filenames
        pending.extend(reversed(walk_into))


class _WatchGroup(InotifyWatchGroup):
    """watchdog's recursive inotify watch, its two walks made without recursion."""

    def _add_all_callbacks(self, path: bytes) -> None:
        is_dir = os.path.isdir(path)
        self._add_callback(path)
        if is_dir and self.is_recursive:
            for root, dirnames, _ in _walk(path, self.follow_symlink):
                for dirname in dirnames:
                    full_path = os.path.join(root, dirname)
                    if self.follow_symlink or not os.path.islink(full_path):
                        self._add_callback(full_path)

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        events = []
        for root, dirnames, filenames in _walk(src_path, self.follow_symlink):
            watched = self._active_callbacks_by_path.get(root)
            if watched is not None:  # else its own creation event reports its content
                events += [InotifyEvent(watched, InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR, 0, name)
                           for name in dirnames]
                events += [InotifyEvent(watched, InotifyConstants.IN_CREATE, 0, name) for name in filenames]
        return events


class _Emitter(InotifyEmitter):
    """watchdog's inotify emitter with ``_WatchGroup``."""

    def on_thread_start(self) -> None:
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )

    def build_and_queue_event(self, event, *, full_events: bool = False) -> None:
        # A directory moved in gets synthetic events for its content, made with os.walk; the move
        # itself is all a watcher needs, so a tree too deep for it is one change, not a dead thread.
        try:
            super().build_and_queue_event(event, full_events=full_events)
        except RecursionError:
            self.queue_event(DirModifiedEvent(self.watch.path))


class _Observer(BaseObserver):
    """watchdog's InotifyObserver with ``_Emitter``; ``delivering()`` tells whether its threads live."""

    def __init__(self) -> None:
        self.inotify_fd = InotifyFD()
        self.inotify_fd.start()
        super().__init__(_Emitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self.inotify_fd)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.inotify_fd.stop()
        self.inotify_fd.join()

    def delivering(self) -> bool:
        return self.is_alive() and self.inotify_fd.is_alive()


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


class _SharedWatch(FileSystemEventHandler):
    """One watchdog watch shared by every watcher of the same directory."""

    def __init__(self, target: _WatchTarget):
        super().__init__()
        self.target = target
        self.observed = None
        self.dead = False  # the directory was deleted: the emitter stopped
        self.watchers: tuple[WorkspaceWatcher, ...] = ()  # replaced, never mutated

    def dispatch(self, event: FileSystemEvent) -> None:
        # Runs in the observer thread: must be quick and take no shared lock.
        if isinstance(event, DirDeletedEvent) and os.fsdecode(event.src_path) == self.target.path:
            self.dead = True
        elif not _is_relevant(event):
            return
        for watcher in self.watchers:
            watcher._note_event()


class _WatchRegistry:
    """The process-wide observer and its shared watches.

    One observer thread dispatches for every socket; watchdog adds one
    emitter thread per watched directory (blocked, idle), shared by all
    sockets watching that directory.
    """

    OBSERVER_RETRY_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observer = None
        self._observer_pid = None
        self._observer_failed_at: float | None = None
        self._watches: dict[tuple[str, bool], _SharedWatch] = {}

    def acquire(self, target: _WatchTarget, watcher: WorkspaceWatcher) -> _SharedWatch:
        """Subscribe ``watcher``; raises OSError when no watch can be made, whatever the cause."""
        with self._lock:
            shared = self._watches.get(target.key)
            if shared is not None and (shared.dead or shared.target.identity != target.identity):
                self._unschedule(shared)  # stale: re-watch for everyone subscribed
                shared.target, shared.dead = target, False
                self._schedule(shared)
            elif shared is None:
                shared = _SharedWatch(target)
                self._schedule(shared)
            shared.watchers = shared.watchers + (watcher,)
            return shared

    def release(self, shared: _SharedWatch, watcher: WorkspaceWatcher) -> None:
        with self._lock:
            shared.watchers = tuple(w for w in shared.watchers if w is not watcher)
            if not shared.watchers:
                self._unschedule(shared)

    def _schedule(self, shared: _SharedWatch) -> None:
        try:
            observed = self._running_observer().schedule(
                shared, shared.target.path, recursive=shared.target.recursive, event_filter=_EVENT_TYPES
            )
        except Exception as error:  # inotify limits, or anything else going wrong in watchdog
            shared.dead = True  # its other subscribers re-acquire and fall back
            self._watches.pop(shared.target.key, None)
            if isinstance(error, OSError):
                raise
            raise OSError(errno.EIO, f"file watching failed: {type(error).__name__}") from error
        shared.observed = observed
        self._watches[shared.target.key] = shared

    def _unschedule(self, shared: _SharedWatch) -> None:
        if self._watches.get(shared.target.key) is shared:
            del self._watches[shared.target.key]
        observed, shared.observed = shared.observed, None
        if observed is not None and self._observer is not None:
            try:
                self._observer.unschedule(observed)
            except KeyError:
                pass

    def delivering(self) -> bool:
        """The observer's threads live (a watch's subscribers are told by nothing else when they die)."""
        observer = self._observer
        return observer is not None and self._observer_pid == os.getpid() and observer.delivering()

    def _running_observer(self) -> _Observer:
        if self.delivering():
            return self._observer
        if self._observer is not None:
            self._forget_observer(stop=self._observer_pid == os.getpid())
        now = time.monotonic()
        failed_at = self._observer_failed_at
        if failed_at is not None and now - failed_at < self.OBSERVER_RETRY_SECONDS:
            raise OSError(errno.EMFILE, "file watching unavailable")
        try:
            observer = _Observer()
            observer.start()
        except Exception as error:  # inotify limits, or no thread to be had
            self._observer_failed_at = now
            if isinstance(error, OSError):
                raise
            raise OSError(errno.EAGAIN, f"file watching unavailable: {error}") from error
        self._observer, self._observer_pid, self._observer_failed_at = observer, os.getpid(), None
        return observer

    def _forget_observer(self, *, stop: bool) -> None:
        # Threads do not survive fork (e.g. gunicorn --preload), and one may die: start afresh,
        # every watch made again by its subscribers. A dead one's remaining threads are stopped
        # in the background (stopping joins them).
        old, self._observer = self._observer, None
        if stop:
            threading.Thread(target=old.stop, name="gitwatch-observer-stop", daemon=True).start()
        for shared in self._watches.values():
            shared.dead, shared.observed = True, None
        self._watches.clear()


_REGISTRY = _WatchRegistry()


class WorkspaceWatcher:
    """Tells when files in a workspace (``.git`` included) changed.

    ``changed()`` is a non-blocking check, ``wait_for_change(timeout)`` blocks.
    Both report a burst of events once: after the first event they wait until
    events pause for ``debounce`` seconds, at most ``max_delay`` seconds.

    Modes (``mode``): ``"events"`` (watchdog/inotify), or ``"polling"`` when
    no watch could be made (inotify limits): then a change is reported every
    ``poll_interval`` seconds and a real watch is retried. A missing
    workspace is handled by watching its nearest existing parent; deletion
    and re-creation are followed. Thread-safe; close it (or use ``with``).
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
    ):
        self._path = os.path.abspath(path)
        self._boundary = os.path.realpath(boundary) if boundary is not None else None
        self.last_change_at = time.monotonic()  # the last event of the last burst reported
        self._debounce = debounce
        self._max_delay = max_delay
        self._poll_interval = poll_interval
        self._condition = threading.Condition()
        self._first_event: float | None = None
        self._last_event: float | None = None
        self._next_poll = time.monotonic() + poll_interval
        self._arm_lock = threading.Lock()  # never held by the observer thread
        self._shared: _SharedWatch | None = None
        self._next_arm_attempt = 0.0
        self._closed = False
        self._ensure_watching(initial=True)

    @property
    def mode(self) -> str:
        return "events" if self._shared is not None else "polling"

    def changed(self) -> bool:
        """True once per settled burst of changes (or poll tick) since the last True."""
        self._ensure_watching()
        with self._condition:
            return self._take_change(time.monotonic())

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.changed():
                return True
            now = time.monotonic()
            if now >= deadline or self._closed:
                return False
            with self._condition:
                wake_at = min(deadline, self._next_wake(now))
                self._condition.wait(max(0.0, wake_at - now))

    def close(self) -> None:
        with self._arm_lock:
            self._closed = True
            shared, self._shared = self._shared, None
            if shared is not None:
                _REGISTRY.release(shared, self)
        with self._condition:
            self._condition.notify_all()

    def __enter__(self) -> WorkspaceWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _note_event(self) -> None:
        with self._condition:
            now = time.monotonic()
            self._last_event = now
            if self._first_event is None:
                self._first_event = now
                # Only the first event of a burst wakes waiters; they then
                # sleep until the debounce ends instead of spinning per event.
                self._condition.notify_all()

    def _take_change(self, now: float) -> bool:
        if self._closed:
            return False
        if self._first_event is not None and (
            now - self._last_event >= self._debounce or now - self._first_event >= self._max_delay
        ):
            self.last_change_at = self._last_event
            self._first_event = self._last_event = None
            return True
        if self._shared is None and now >= self._next_poll:
            self._next_poll = now + self._poll_interval
            self.last_change_at = now - self._poll_interval  # anything since the last tick
            return True
        return False

    def _next_wake(self, now: float) -> float:
        if self._first_event is not None:
            return min(self._last_event + self._debounce, self._first_event + self._max_delay)
        if self._shared is None:
            return self._next_poll
        # Idle: look again now and then, moves of the workspace send no event.
        return now + self._poll_interval

    def _ensure_watching(self, initial: bool = False) -> None:
        """(Re)subscribe when the workspace appeared, vanished or was replaced."""
        with self._arm_lock:
            if self._closed:
                return
            target = _watch_target(self._path, self._boundary)
            shared = self._shared
            if shared is not None and not shared.dead and target == shared.target and _REGISTRY.delivering():
                return
            if shared is None and time.monotonic() < self._next_arm_attempt:
                return
            if shared is not None:
                self._shared = None
                _REGISTRY.release(shared, self)
            self._subscribe(target)
            if not initial and shared is not None:
                self._note_event()  # the workspace itself changed

    def _subscribe(self, target: _WatchTarget | None) -> None:
        try:
            if target is None:
                raise OSError(errno.ENOENT, "nothing to watch")
            self._shared = _REGISTRY.acquire(target, self)
        except Exception:  # OSError, or anything else: polling, never an exception for the socket
            self._next_arm_attempt = time.monotonic() + self.REARM_RETRY_SECONDS



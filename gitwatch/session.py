"""One socket's view of a workspace: the first message, deltas, the caps.

The route alternates a short ``ws.receive(timeout=...)`` with a non-blocking
``session.poll()``; ``poll()`` scans only when the watcher reports a settled
burst of changes, when the client asked for a refresh (which always gets a
``changes`` message as its answer), when the last scan ran out of time, or
every ``rescan_interval`` seconds as a safety net. Scans are shared with the
other sockets on the same workspace in this worker (``scan.SharedScans``).

The workspace is resolved again before every scan: when it now leads outside
its owner's directory, the client gets an ``error`` message (once per such
episode, and as the answer to a refresh) and nothing is read.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable

from gitwatch.notify import WorkspaceWatcher
from gitwatch.repository import RepoState
from gitwatch.scan import DEFAULT_MAX_DEPTH, DEFAULT_TIME_BUDGET, SHARED_SCANS, Scan, SharedScans
from workspaces import WorkspaceError

WORKSPACE_OUTSIDE = "The workspace no longer resolves inside its owner's directory; nothing is read."


def diff_states(previous: dict[str, RepoState], current: dict[str, RepoState]) -> list[dict[str, Any]]:
    """Entries to send: new or changed repositories, and removed ones once.

    The caller must pass this scan as ``previous`` next time, which is what
    makes a removal reported only once.
    """
    entries = []
    for root in sorted(current.keys() | previous.keys()):
        if root not in current:
            entries.append(RepoState(root).to_message_dict(removed=True))
        elif previous.get(root) != current[root]:
            entries.append(current[root].to_message_dict())
    return entries


def changes_message(
    entries: list[dict[str, Any]], scanned_at: datetime | None = None, *, truncated: bool = False
) -> dict[str, Any]:
    message = {
        "type": "changes",
        "scanned_at": format_rfc3339(scanned_at or datetime.now(timezone.utc)),
        "repositories": entries,
    }
    if truncated:  # more repositories than the ceiling: the rest are not reported
        message["truncated"] = True
    return message


def format_rfc3339(moment: datetime) -> str:
    """UTC with milliseconds, e.g. ``2026-11-22T13:00:00.123Z``; naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def error_message(text: str) -> dict[str, str]:
    return {"type": "error", "message": text}


def parse_client_message(text: str | bytes) -> tuple[str, str | None]:
    """``("refresh", None)`` for ``{"type": "refresh"}``, else ``("error", why)``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        message = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "error", "Invalid JSON."
    if not isinstance(message, dict):
        return "error", "Expected a JSON object."
    if "type" not in message:
        return "error", 'Missing message "type".'
    if message["type"] == "refresh":
        return "refresh", None
    return "error", f"Unknown message type {json.dumps(message['type'])}."


class SocketView:
    """What one socket was last sent: the states it knows, and whether it was told of a refusal.

    Messages are deltas against it; it moves on only when a message is made,
    so a socket that skipped scans (a slow reader) gets everything it missed.
    """

    def __init__(self) -> None:
        self.previous: dict[str, RepoState] = {}
        self.refused = False

    def changes(self, scan: Scan, scanned_at: datetime, *, always: bool) -> dict[str, Any] | None:
        """The delta since the last message; None when there is none and ``always`` is false."""
        self.refused = False
        current = _keep_previous_on_error(self.previous, scan.states)
        entries = diff_states(self.previous, current)
        self.previous = current
        if entries or always:
            return changes_message(entries, scanned_at, truncated=scan.truncated)
        return None

    def refusal(self, *, always: bool) -> dict[str, str] | None:
        """The workspace leads outside: an error once per such episode, and as every refresh's answer."""
        first = not self.refused
        self.refused = True
        return error_message(WORKSPACE_OUTSIDE) if first or always else None


class WatchSession:
    """Previous state, watcher and scan policy of one WebSocket (one thread).

    ``resolve()`` gives the workspace's real path now, or raises
    WorkspaceError; ``boundary`` is the directory nothing outside of which is
    read (the owner's workspaces directory). Both default to the workspace.
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        *,
        boundary: str | os.PathLike[str] | None = None,
        resolve: Callable[[], str] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        time_budget: float = DEFAULT_TIME_BUDGET,
        rescan_interval: float = 10.0,
        watcher: WorkspaceWatcher | None = None,
        scans: SharedScans = SHARED_SCANS,
    ):
        workspace = os.fspath(workspace)
        self._boundary = os.path.realpath(boundary if boundary is not None else workspace)
        self._resolve = resolve or (lambda: os.path.realpath(workspace))
        self._options = {"max_depth": max_depth, "time_budget": time_budget}
        self._rescan_interval = rescan_interval
        self._scans = scans
        self._shared = None  # held so that the shared entry lives as long as this session
        # Watch before the first scan so that nothing falls between the two.
        self._owns_watcher = watcher is None
        self.watcher = watcher if watcher is not None else WorkspaceWatcher(workspace, boundary=self._boundary)
        self._watching_since = time.monotonic()
        self._view = SocketView()
        self._last_scan = float("-inf")
        self._dirty = False  # the last scan ran out of time: scan again
        self._changed_at: float | None = None  # a change wait() saw, not scanned yet

    def initial_message(self) -> dict[str, Any]:
        """Everything, even when there is no repository (an empty list)."""
        self._view = SocketView()
        return self.next_message(always=True, asked_at=self._watching_since)

    def next_message(self, *, always: bool = False, asked_at: float | None = None) -> dict[str, Any] | None:
        """Scan now (or take a shared scan newer than ``asked_at``); None when nothing changed."""
        self._dirty, self._changed_at = False, None
        self._last_scan = time.monotonic()
        scanned_at = datetime.now(timezone.utc)
        try:
            workspace = self._resolve()
        except WorkspaceError:
            return self._refusal(always)
        self._shared = self._scans.handle(f"{self._boundary}\0{workspace}")
        scan = self._scans.scan(
            self._shared, self._last_scan if asked_at is None else asked_at,
            workspace=workspace, boundary=self._boundary, **self._options,
        )
        self._dirty = bool(scan.skipped)  # the rest is read on the next turn
        return self._changes(scan, scanned_at, always)

    def _changes(self, scan: Scan, scanned_at: datetime, always: bool) -> dict[str, Any] | None:
        return self._view.changes(scan, scanned_at, always=always)

    def _refusal(self, always: bool) -> dict[str, str] | None:
        return self._view.refusal(always=always)

    def poll(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """Non-blocking: scan if something changed, ``refresh`` or a rescan is due.

        A refresh always gets a message (possibly with no repositories) as answer.
        """
        now = time.monotonic()
        if refresh or self._dirty:
            return self.next_message(always=refresh)
        if self._changed_at is not None or self.watcher.changed():
            # Any scan that began after the change will do, another socket's too.
            changed_at = self._changed_at if self._changed_at is not None else self.watcher.last_change_at
            return self.next_message(asked_at=changed_at)
        if now - self._last_scan >= self._rescan_interval:
            # Any scan of this workspace younger than the interval will do.
            return self.next_message(asked_at=now - self._rescan_interval)
        return None

    def wait(self, timeout: float) -> bool:
        """Block until the workspace changed; the next ``poll()`` then scans."""
        if self.watcher.wait_for_change(timeout) and self._changed_at is None:
            self._changed_at = self.watcher.last_change_at
        return self._changed_at is not None or self._dirty

    def close(self) -> None:
        if self._owns_watcher:
            self.watcher.close()

    def __enter__(self) -> WatchSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _keep_previous_on_error(
    previous: dict[str, RepoState], current: dict[str, RepoState]
) -> dict[str, RepoState]:
    # A failed read says nothing about the repository: keep what the client has.
    return {
        root: previous[root] if state.error and root in previous else state
        for root, state in current.items()
    }

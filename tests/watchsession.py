"""One socket's view driven by hand, for tests of what a watch sends: the hub's own pieces
(``SocketView``, ``scan``, ``WorkspaceWatcher``) without its event loop."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Callable

from gitwatch.notify import WorkspaceWatcher
from gitwatch.scan import Scan, scan
from gitwatch.session import SocketView
from gitwatch.workspaces import WorkspaceError


class WatchSession:
    def __init__(self, workspace: str | os.PathLike[str], *, boundary: str | os.PathLike[str] | None = None,
                 resolve: Callable[[], str] | None = None):
        workspace = os.fspath(workspace)
        self._boundary = os.path.realpath(boundary if boundary is not None else workspace)
        self._resolve = resolve or (lambda: os.path.realpath(workspace))
        self.watcher = WorkspaceWatcher(workspace, boundary=self._boundary)  # before the first scan, as the hub
        self._view = SocketView()
        self._last: Scan | None = None
        self._changed = False

    def initial_message(self) -> dict[str, Any] | None:
        return self._message(always=True)

    def wait(self, timeout: float) -> bool:
        self._changed = self.watcher.wait_for_change(timeout) or self._changed
        return self._changed

    def poll(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """A refresh's answer (always a message), or what a noticed change brought (None: nothing new)."""
        if not (refresh or self._changed or self.watcher.changed()):
            return None
        self._changed = False
        return self._message(always=refresh)

    def _message(self, *, always: bool) -> dict[str, Any] | None:
        try:
            workspace = self._resolve()
        except WorkspaceError:
            return self._view.refusal(always=always)
        self._last = scan(workspace, boundary=self._boundary, previous=self._last)
        return self._view.changes(self._last, datetime.now(timezone.utc), always=always)

    def close(self) -> None:
        self.watcher.close()

    def __enter__(self) -> WatchSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""At most ``WATCH_MAX_PER_USER`` open watch sockets per user per instance.

An instance is one gunicorn master and its workers, so the count must be seen
by every worker: each open socket holds an exclusive ``flock`` on one of the
user's N slot files in a directory named after the master. The kernel
releases a lock when its holder dies, so a crashed worker leaks no slot.
"""

from __future__ import annotations

import fcntl
import os
import tempfile


def slots_dir() -> str:
    # Workers of one gunicorn master share its pid as their parent.
    return os.path.join(tempfile.gettempdir(), f"chatfiles-watch-slots-{os.getppid()}")


class WatchSlot:
    """One held slot; ``release()`` (idempotent) frees it."""

    def __init__(self, handle: int):
        self._handle: int | None = handle

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            os.close(handle)  # drops the lock


def acquire_slot(user_id: str, limit: int, directory: str | None = None) -> WatchSlot | None:
    """A free slot of ``user_id``'s ``limit``, or None when all are taken."""
    directory = directory or slots_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for number in range(limit):
        handle = os.open(os.path.join(directory, f"{user_id}.{number}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            continue
        return WatchSlot(handle)
    return None

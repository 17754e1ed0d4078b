"""The worker's upload budget: bytes of upload bodies its decode sandboxes hold at once.

It guards the decode (decode.py), not the body's arrival: a body is spooled
to a temporary file as it comes, holding none of it, and only its decode
(the sandbox maps the file) needs room.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from flask import Flask, current_app

from web.errors import ApiError

# How long a decode waits for room in the worker's upload budget before a 503.
BUDGET_WAIT_SECONDS = 30


class UploadBudget:
    """Bytes of upload bodies one worker's sandboxes decode at once.

    The body arrives into a temporary file, holding none of this; an upload
    reserves its size only to decode (its decode sandbox maps the file) and
    gives it back when done. One that does not fit waits for room. A single
    upload always fits, whatever its size.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size: int, timeout: float) -> Iterator[None]:
        with self._room:
            if not self._room.wait_for(lambda: self._used == 0 or self._used + size <= self.capacity, timeout):
                raise busy()
            self._used += size
        try:
            yield
        finally:
            with self._room:
                self._used -= size
                self._room.notify_all()


def init_app(app: Flask) -> None:
    app.extensions["upload_budget"] = UploadBudget(app.config["UPLOAD_MEMORY_BUDGET"])


def reserved(size: int) -> contextlib.AbstractContextManager[None]:
    """Room for ``size`` bytes in this worker's budget, waited for up to BUDGET_WAIT_SECONDS, else 503."""
    return current_app.extensions["upload_budget"].reserve(size, BUDGET_WAIT_SECONDS)


def busy() -> ApiError:
    """The 503 of an upload that found no room: in the budget, or in a decode slot."""
    return ApiError(503, "Too many uploads in progress.", "Try again in a moment.",
                    headers={"Retry-After": "1", "Connection": "close"}, code="busy")

"""Closing this process's open WebSockets when it stops.

Watch sockets live on the worker's hub (gitwatch/hub.py), not on gunicorn's
threads, so gunicorn's graceful wait does not know them: without help a
stopping worker would exit under them, and clients would see the
connection drop instead of a close frame.

So the hub registers here, and gunicorn.conf.py chains
:func:`close_sockets_on_sigterm` in front of the worker's own SIGTERM
handler: every socket gets a 1001 "going away" close at the start of the
shutdown, and ``worker_exit`` waits (briefly) until those closes are done.
Anything registered after that point is closed at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Callable, Protocol

log = logging.getLogger(__name__)

GOING_AWAY = 1001
SHUTDOWN_REASON = "Server shutting down"
CLOSE_WAIT_SECONDS = 5.0


class Closable(Protocol):
    """What the registry holds: gitwatch's hub, or one socket (simple_websocket's signature)."""

    def close(self, reason: int, message: str) -> object: ...


SignalHandler = Callable[[int, FrameType | None], None]


class SocketRegistry:
    """The open sockets of one process; anything with ``close(reason, message)`` (simple_websocket's signature)."""

    def __init__(self) -> None:
        self._sockets: set[Closable] = set()
        self._lock = threading.Lock()
        self._closing: tuple[int, str] | None = None  # (code, reason) once close_all has run
        self._closed = threading.Event()  # set when the first close_all has finished

    def register(self, ws: Closable) -> bool:
        """Track ``ws``; if shutdown has begun, close it at once and return False."""
        with self._lock:
            if self._closing is None:
                self._sockets.add(ws)
                return True
            code, reason = self._closing
        _close_quietly(ws, code, reason)
        return False

    def unregister(self, ws: Closable) -> None:
        with self._lock:
            self._sockets.discard(ws)

    def close_all(self, code: int = GOING_AWAY, reason: str = SHUTDOWN_REASON, wait: float = CLOSE_WAIT_SECONDS) -> int:
        """Close every tracked socket, once; return how many there were.

        A second call (SIGTERM's thread, then worker_exit) closes nothing more
        but waits up to ``wait`` seconds for the first to finish, so the
        process does not exit under close frames still being sent.
        """
        with self._lock:
            first = self._closing is None
            self._closing = (code, reason)
            sockets = list(self._sockets)
            self._sockets.clear()
        if not first:
            self._closed.wait(wait)
        for ws in sockets:
            _close_quietly(ws, code, reason)
        if sockets:
            log.debug("asked %d socket holder(s) to close for shutdown", len(sockets))
        if first:
            self._closed.set()
        return len(sockets)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sockets)


def _close_quietly(ws: Closable, code: int, reason: str) -> None:
    # One socket failing to close (already closed, client gone) must not spare the others.
    try:
        ws.close(reason=code, message=reason)
    except Exception as error:
        log.debug("closing a WebSocket failed: %r", error)


sockets = SocketRegistry()


def register_socket(ws: Closable) -> bool:
    return sockets.register(ws)


def unregister_socket(ws: Closable) -> None:
    sockets.unregister(ws)


def close_all_sockets(code: int = GOING_AWAY, reason: str = SHUTDOWN_REASON) -> int:
    return sockets.close_all(code, reason)


def close_sockets_on_sigterm(registry: SocketRegistry | None = None) -> SignalHandler:
    """Put closing ``registry``'s sockets in front of this process's SIGTERM handler.

    Main thread only (Python's rule for signal handlers). The closing runs in
    a thread of its own: a close frame to a slow client can block, and the
    worker's main loop (which heartbeats to the master) must not.
    """
    registry = registry or sockets
    previous = signal.getsignal(signal.SIGTERM)

    def handle_sigterm(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=registry.close_all, name="close-websockets", daemon=True).start()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handle_sigterm)
    # Like gunicorn: the signal must not interrupt system calls of requests in flight.
    signal.siginterrupt(signal.SIGTERM, False)
    return handle_sigterm

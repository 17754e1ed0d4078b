"""Every watch socket of a worker on one asyncio event loop, in one thread: the hub.

The watch route checks everything that can fail while it is still a plain
request, then hands the connection over (``Hub.adopt``) and returns its
thread to gunicorn at once. From then on a socket is a registered protocol
object and a few timers, not a thread: it costs memory only, and nothing
wakes it but an event — a client frame, a change in its workspace (the
process's one inotify thread, ``notify.py``), an archive (``archives.py``),
a ping due, shutdown. WebSocket framing is wsproto's (sans-I/O), so the
loop owns every byte on the wire.

Blocking work never runs on the loop: scans (libgit2 in the sandbox
processes, ``scan.py``) and making or dropping a workspace's watch run on a
small pool of threads. One scan at a time per workspace, its result for
every socket on it; one at a time per owner, so one user's slow
repositories never hold every sandbox while another user's change waits.

Shape borrowed from Zulip's Tornado tier (event-driven connections beside
a threaded request server) and Go's net/http (a connection parked on the
poller costs only its memory).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, Pong, TextMessage

from gitwatch.notify import WorkspaceWatcher
from gitwatch.scan import DEFAULT_MAX_DEPTH, DEFAULT_TIME_BUDGET, Scan, scan
from gitwatch.session import SocketView, error_message, parse_client_message
from gitwatch.workspaces import WorkspaceError

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE = 64 * 1024
RECEIVE_BUFFER = 64 * 1024  # one per hub, shared by its sockets
SCAN_THREADS = 4  # scans wait on sandbox processes (sandbox/tasks.py), not on the GIL
CLOSE_WAIT_SECONDS = 2.0  # after our close frame, how long the client has to answer before we hang up
RETRY_SECONDS = 0.25  # a scan that ran out of time (or failed) goes on after this pause
MAX_RETRY_SECONDS = 30.0  # scans that keep failing back off to this, not a traceback every quarter second
# A client that stops reading stops getting messages (it gets the delta once it reads again):
# what one socket may hold in memory is bounded by this plus one message.
WRITE_HIGH_WATER = 1024 * 1024

PING_FRAME = Connection(ConnectionType.SERVER).send(Ping())  # server frames are not masked: the same bytes every time
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True)
class WatchRequest:
    """What the route learned before the upgrade; the hub needs nothing else."""

    owner: str  # scans of one owner's workspaces take turns
    workspace: str  # relative to owner_dir, resolved again before every scan
    workspace_dir: str  # where it resolved at connect time
    owner_dir: str  # nothing outside it is ever read
    resolve: Callable[[], str]  # the workspace's real path now, or WorkspaceError
    ping_interval: float
    handshake: bytes  # the 101 response, written by the loop before anything else
    on_closed: tuple[Callable[[], None], ...] = ()  # run once, on the loop, when the connection ends


@dataclass(frozen=True)
class ScanResult:
    started_at: float  # monotonic
    scanned_at: datetime
    scan: Scan | None  # None: the workspace now leads outside its owner's directory

    @property
    def skipped(self) -> bool:
        return self.scan is not None and bool(self.scan.skipped)


class SocketHandle:
    """A thread-safe way to ask one adopted socket to close (its archive event)."""

    def __init__(self, hub: Hub):
        self._hub = hub
        self._socket: WatchSocket | None = None
        self._pending_close: tuple[int, str] | None = None

    def close(self, code: int, reason: str) -> None:
        self._hub.call_soon(self._close_on_loop, code, reason)

    def _close_on_loop(self, code: int, reason: str) -> None:
        if self._socket is None:
            self._pending_close = (code, reason)  # it is being adopted: closed as soon as it opens
        else:
            self._socket.close(code, reason)


class Hub:
    """The worker's event loop thread, its sockets, and the workspaces they watch."""

    def __init__(self, *, scan_threads: int = SCAN_THREADS):
        self._scan_threads = scan_threads
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sockets: set[WatchSocket] = set()
        self._feeds: dict[tuple[str, str], WorkspaceFeed] = {}
        self._scanning_owners: set[str] = set()
        self._waiting: dict[str, collections.deque[WorkspaceFeed]] = {}
        self._closing: tuple[int, str] | None = None
        self._pings: dict[int, list[WatchSocket]] = {}  # whole second of the loop's clock -> sockets due then
        self.receive_buffer = memoryview(bytearray(RECEIVE_BUFFER))
        self._ping_tick: asyncio.TimerHandle | None = None

    # --- from any thread -------------------------------------------------------

    def adopt(self, connection: socket.socket, request: WatchRequest) -> SocketHandle:
        """Take over an upgraded connection: from now on the server's socket object leads nowhere."""
        loop = self._running_loop()
        own = socket.socket(fileno=os.dup(connection.fileno()))
        _leave_a_dead_end(connection)
        own.setblocking(False)
        handle = SocketHandle(self)
        asyncio.run_coroutine_threadsafe(self._accept(own, request, handle), loop)
        return handle

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def close(self, reason: int = GOING_AWAY, message: str = "", timeout: float = CLOSE_WAIT_SECONDS + 1) -> int:
        """Close every socket (``ops/shutdown.py``'s signature) and wait, up to ``timeout``, until they are gone.

        Sockets adopted afterwards are closed at once. Returns how many were open.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or self._pid != os.getpid():
            return 0
        future = asyncio.run_coroutine_threadsafe(self._close_all(reason, message), loop)
        try:
            closed = future.result(timeout)
        except concurrent.futures.TimeoutError:
            closed = len(self._sockets)
        if closed:
            log.info("closed %d watch socket(s) with %d", closed, reason)
        return closed

    def open_sockets(self) -> int:
        return len(self._sockets)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The hub's loop, for code running on it (so after ``_running_loop`` made it)."""
        loop = self._loop
        assert loop is not None, "the hub's loop is used before any socket was adopted"
        return loop

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # first socket, or a forked child
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self._executor = concurrent.futures.ThreadPoolExecutor(self._scan_threads, "gitwatch-scan")
                self._sockets, self._feeds = set(), {}
                self._scanning_owners, self._waiting = set(), {}
                self._pings, self._ping_tick = {}, None
                threading.Thread(target=self._loop.run_forever, name="gitwatch-hub", daemon=True).start()
            return self._loop

    # --- on the loop ------------------------------------------------------------

    async def _accept(self, own: socket.socket, request: WatchRequest, handle: SocketHandle) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: WatchSocket(self, request, handle), own)
        except Exception:  # the client went away between the route and here
            log.debug("adopting a watch socket failed", exc_info=True)
            own.close()
            _run_all(request.on_closed)

    async def _close_all(self, code: int, reason: str) -> int:
        self._closing = (code, reason)
        sockets = list(self._sockets)
        for ws in sockets:
            ws.close(code, reason)
        while self._sockets:
            await asyncio.sleep(0.05)
        return len(sockets)

    def joined(self, ws: WatchSocket) -> None:
        self._sockets.add(ws)
        if self._closing is not None:
            ws.close(*self._closing)
            return
        key = (ws.request.owner_dir, ws.request.workspace)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = WorkspaceFeed(self, ws.request)
        ws.feed = feed
        feed.join(ws)

    def left(self, ws: WatchSocket) -> None:
        self._sockets.discard(ws)
        feed = ws.feed
        if feed is not None and feed.leave(ws):
            del self._feeds[feed.key]

    def want_scan(self, feed: WorkspaceFeed) -> None:
        """Run the feed's scan now, or when its owner's current scan is done."""
        owner = feed.owner
        if feed.closed:
            return
        if owner in self._scanning_owners:
            waiting = self._waiting.setdefault(owner, collections.deque())
            if feed not in waiting:
                waiting.append(feed)
            return
        self._scanning_owners.add(owner)
        feed.running = True
        future = self.loop.run_in_executor(self._executor, feed.scan_now)
        future.add_done_callback(functools.partial(self._scanned, feed))

    def _scanned(self, feed: WorkspaceFeed, future: asyncio.Future[ScanResult]) -> None:
        self._scanning_owners.discard(feed.owner)
        self._next_turn(feed.owner)
        try:
            result = future.result()
        except Exception:  # a bug, not a hostile repository (those are states): keep serving the others
            log.exception("scanning a watched workspace failed")
            result = None
        feed.scanned(result)

    def _next_turn(self, owner: str) -> None:
        waiting = self._waiting.get(owner)
        while waiting:
            feed = waiting.popleft()
            if not feed.closed:
                self.want_scan(feed)
                break
        if waiting is not None and not waiting:
            del self._waiting[owner]

    def later(self, delay: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback, *args)

    def ping_later(self, ws: WatchSocket, delay: float) -> None:
        """Ping ``ws`` in about ``delay`` s. Pings are due on whole seconds of the loop's clock, so one
        wake-up a second pings every socket due then, however many: not a timer per socket."""
        second = math.ceil(self.loop.time() + delay)
        self._pings.setdefault(second, []).append(ws)
        if self._ping_tick is None or self._ping_tick.when() > second:
            if self._ping_tick is not None:
                self._ping_tick.cancel()
            self._ping_tick = self.loop.call_at(second, self._pings_due)

    def _pings_due(self) -> None:
        now = self.loop.time()
        for second in sorted(second for second in self._pings if second <= now):
            for ws in self._pings.pop(second):
                ws.ping_due()  # books its next ping: this tick, still set, keeps that from booking one too late
        self._ping_tick = None
        if self._pings:
            self._ping_tick = self.loop.call_at(min(self._pings), self._pings_due)

    def in_background(self, work: Callable[[], None]) -> None:
        """Blocking housekeeping (dropping a watch) off the loop."""
        self.loop.run_in_executor(self._executor, work)


HUB = Hub()  # the process's one hub: every app in it (tests make many) shares its loop and threads


class WorkspaceFeed:
    """One watched workspace of this worker: its watcher, its scans, the sockets that receive them."""

    def __init__(self, hub: Hub, request: WatchRequest):
        self.hub = hub
        self.owner = request.owner
        self.key = (request.owner_dir, request.workspace)
        self._workspace_dir, self._owner_dir, self._resolve = request.workspace_dir, request.owner_dir, request.resolve
        self.sockets: set[WatchSocket] = set()
        self.watcher: WorkspaceWatcher | None = None  # made by the first scan, off the loop
        self.last: ScanResult | None = None
        self.running = False
        self.wanted_after: float | None = None  # a change or refresh wants a scan that starts after this
        self.failures = 0  # scans failed in a row
        self.closed = False

    def join(self, ws: WatchSocket) -> None:
        self.sockets.add(ws)
        if self.last is not None and not self.running and self.wanted_after is None:
            ws.deliver(self.last)  # nothing changed since: the newcomer's first message at once
        else:
            self.want(time.monotonic())

    def leave(self, ws: WatchSocket) -> bool:
        """True when this was the last socket: the feed is done."""
        self.sockets.discard(ws)
        if self.sockets:
            return False
        self.closed = True
        if not self.running:
            self._drop_watch()
        return True

    def want(self, after: float) -> None:
        self.wanted_after = after if self.wanted_after is None else max(self.wanted_after, after)
        if not self.running and not self.closed:
            self.hub.want_scan(self)

    def changed(self, at: float) -> None:
        """From the watcher (via the loop): files changed, the last at ``at``."""
        if not self.closed:
            self.want(at)

    def scan_now(self) -> ScanResult:
        """In a scan thread: watch first (so nothing falls between), then scan."""
        if self.watcher is None and not self.closed:
            self.watcher = WorkspaceWatcher(self._workspace_dir, boundary=self._owner_dir, on_change=self._on_change)
        started_at, scanned_at = time.monotonic(), datetime.now(timezone.utc)
        try:
            workspace = self._resolve()
        except WorkspaceError:
            return ScanResult(started_at, scanned_at, None)
        previous = self.last.scan if self.last is not None else None
        found = scan(
            workspace, boundary=self._owner_dir, max_depth=DEFAULT_MAX_DEPTH,
            time_budget=DEFAULT_TIME_BUDGET, previous=previous,
        )
        return ScanResult(started_at, scanned_at, found)

    def _on_change(self, at: float) -> None:
        self.hub.call_soon(self.changed, at)  # from the notifier thread

    def scanned(self, result: ScanResult | None) -> None:
        self.running = False
        if self.closed:
            self._drop_watch()
            return
        if result is None:  # the scan failed (logged): again, after a pause that doubles while it keeps failing
            self.failures += 1
            self.hub.later(min(RETRY_SECONDS * 2 ** (self.failures - 1), MAX_RETRY_SECONDS), self.want,
                           time.monotonic())
            return
        self.failures = 0
        self.last = result
        if self.wanted_after is not None and self.wanted_after <= result.started_at:
            self.wanted_after = None
        for ws in list(self.sockets):
            ws.deliver(result)
        if self.wanted_after is not None:
            self.hub.want_scan(self)
        elif result.skipped:  # the rest of the repositories, after a breath
            self.hub.later(RETRY_SECONDS, self.want, result.started_at)

    def _drop_watch(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            self.hub.in_background(watcher.close)


class WatchSocket(asyncio.BufferedProtocol):
    """One client: wsproto framing, its view of the workspace, pings, closing.

    A buffered protocol reading into the hub's one receive buffer: a plain
    protocol has asyncio allocate 256 KiB for every read, even of a 6-byte pong.
    """

    def __init__(self, hub: Hub, request: WatchRequest, handle: SocketHandle):
        self.hub = hub
        self.request = request
        self.handle = handle
        self.feed: WorkspaceFeed | None = None
        self.view = SocketView()
        self.protocol = Connection(ConnectionType.SERVER)
        self.transport: asyncio.Transport  # set by connection_made, asyncio's first call
        self.greeted = False
        self.refresh_asked: float | None = None
        self.paused = False
        self.behind = False  # a delta was held back while the client was not reading
        self.awaiting_pong = False
        self.message_parts: list[str] = []
        self.message_size = 0
        self.timer: asyncio.TimerHandle | None = None  # while closing: when to stop waiting for the client

    # --- asyncio's callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream socket's (connect_accepted_socket)
        self.transport = transport
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.transport.write(self.request.handshake)
        self.handle._socket = self
        self._schedule_ping()
        self.hub.joined(self)
        if self.handle._pending_close is not None:
            self.close(*self.handle._pending_close)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.hub.receive_buffer  # the loop reads one socket at a time, and copies out at once

    def buffer_updated(self, nbytes: int) -> None:
        self.received(bytes(self.hub.receive_buffer[:nbytes]))

    def received(self, data: bytes) -> None:
        if self.protocol.state is ConnectionState.CLOSED:
            return  # after the close handshake: nothing more to read
        self.protocol.receive_data(data)
        for event in self.protocol.events():
            self._handle(event)

    def eof_received(self) -> bool:
        self._hang_up_soon()  # the client is gone: asyncio closes our side, once what we wrote drains
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.hub.left(self)
        _run_all(self.request.on_closed)

    def pause_writing(self) -> None:
        # A client that does not read is not read either: its pings and bad frames would
        # otherwise queue our answers (pongs, errors) without bound.
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.transport.resume_reading()
        if self.behind and self.feed is not None and self.feed.last is not None:
            self.deliver(self.feed.last)

    # --- the protocol -------------------------------------------------------------

    def _handle(self, event: object) -> None:
        if isinstance(event, Message):
            self._message_part(event)
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, Pong):
            self.awaiting_pong = False
        elif isinstance(event, CloseConnection):
            if self.protocol.state is ConnectionState.REMOTE_CLOSING:  # the client's close: answered
                self._send(event.response())
            elif self.protocol.state is ConnectionState.OPEN:  # wsproto's verdict on a broken frame (1002, 1007)
                self._send(CloseConnection(code=event.code, reason=event.reason))
            self.transport.close()
            self._hang_up_soon()

    def _message_part(self, event: Message) -> None:
        data = event.data if isinstance(event, TextMessage) else bytes(event.data).decode("utf-8", "replace")
        self.message_size += len(data)
        if self.message_size > MAX_CLIENT_MESSAGE:
            self.close(MESSAGE_TOO_BIG, "Message too big.")
            return
        self.message_parts.append(data)
        if event.message_finished:
            text, self.message_parts, self.message_size = "".join(self.message_parts), [], 0
            self._client_message(text if isinstance(event, TextMessage) else text.encode("utf-8"))

    def _client_message(self, text: str | bytes) -> None:
        _, problem = parse_client_message(text)  # ("refresh", None), or ("error", why)
        if problem is not None:
            self._send_json(error_message(problem))
        elif self.feed is not None:
            self.refresh_asked = time.monotonic()
            self.feed.want(self.refresh_asked)

    def deliver(self, result: ScanResult) -> None:
        """A scan of the workspace finished: send this socket what is new to it."""
        answers_refresh = self.refresh_asked is not None and result.started_at >= self.refresh_asked
        always = answers_refresh or not self.greeted
        if self.paused and not always:
            self.behind = True
            return
        if answers_refresh:
            self.refresh_asked = None
        self.greeted, self.behind = True, False
        if result.scan is None:
            message = self.view.refusal(always=always)
        else:
            message = self.view.changes(result.scan, result.scanned_at, always=always)
        if message is not None:
            self._send_json(message)

    def _schedule_ping(self) -> None:
        self.hub.ping_later(self, self.request.ping_interval)

    def ping_due(self) -> None:
        if self.protocol.state is not ConnectionState.OPEN or self.transport.is_closing():
            return  # closing or gone: no more pings
        if self.awaiting_pong:  # no answer to the last ping: the client is gone without a word
            self.transport.abort()
            return
        self.awaiting_pong = True
        self.transport.write(PING_FRAME)
        self._schedule_ping()

    def close(self, code: int, reason: str) -> None:
        """Send a close frame; the connection ends when the client answers, or after CLOSE_WAIT_SECONDS."""
        if self.protocol.state is not ConnectionState.OPEN or self.transport.is_closing():
            return
        self._send(CloseConnection(code=code, reason=reason))
        self._hang_up_soon()

    def _hang_up_soon(self) -> None:
        """End the connection after CLOSE_WAIT_SECONDS if it has not ended by then: a closing transport
        waits for its buffer to drain, which a client that stopped reading never lets happen."""
        if self.timer is None:
            self.timer = self.hub.later(CLOSE_WAIT_SECONDS, self.transport.abort)

    def _send_json(self, message: dict[str, Any]) -> None:
        if self.protocol.state is ConnectionState.OPEN:
            self._send(TextMessage(data=json.dumps(message)))

    def _send(self, event: Any) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.protocol.send(event))


def _leave_a_dead_end(connection: socket.socket) -> None:
    """The server's copy of a handed-over connection now leads nowhere.

    Servers end a request by half-closing and draining the connection
    (gunicorn's lingering close, werkzeug's shutdown): on the real one that
    would cut the WebSocket. Swapped for one end of a closed socketpair,
    their reads see end-of-file and their close is harmless.
    """
    dead_end, peer = socket.socketpair()
    peer.close()
    os.dup2(dead_end.fileno(), connection.fileno(), inheritable=False)
    dead_end.close()


def _run_all(callbacks: tuple[Callable[[], None], ...]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # one failing must not keep the others (the slot, the counts) from running
            log.exception("cleaning up after a watch socket failed")

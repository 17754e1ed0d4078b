"""The hub's socket protocol against a fake transport: what reaches a client that stops reading, pings, closing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from gitwatch import hub as hub_module
from gitwatch.repository import RepoState
from gitwatch.scan import Scan


class FakeTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written = []
        self.aborted = False
        self.closing = False
        self.reading = True

    def write(self, data):
        self.written.append(bytes(data))

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.aborted = self.closing = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


class FakeFeed:
    def __init__(self):
        self.last = None
        self.wanted = []

    def want(self, after):
        self.wanted.append(after)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def ws(loop, monkeypatch):
    hub = hub_module.Hub()
    hub._loop = loop
    monkeypatch.setattr(hub, "joined", lambda ws: setattr(ws, "feed", FakeFeed()))
    request = hub_module.WatchRequest(owner="o", workspace="w", workspace_dir="/w", owner_dir="/",
                                      resolve=lambda: "/w", ping_interval=25, handshake=b"HTTP/1.1 101 ...\r\n\r\n")
    socket = hub_module.WatchSocket(hub, request, hub_module.SocketHandle(hub))
    socket.connection_made(FakeTransport())
    socket.transport.written.clear()
    return socket


def result(diff, started_at):
    states = {".": RepoState(".", "main", "", diff)}
    return hub_module.ScanResult(started_at, datetime.now(timezone.utc), Scan(states))


def test_a_client_that_stops_reading_gets_nothing_more_then_the_whole_delta(ws):
    ws.deliver(result("first", 1.0))
    assert len(ws.transport.written) == 1
    ws.pause_writing()  # the transport's buffer passed its high-water mark
    ws.deliver(result("second", 2.0))
    ws.deliver(result("third", 3.0))
    assert len(ws.transport.written) == 1  # nothing piles up for a client that does not read
    ws.feed.last = result("third", 3.0)
    ws.resume_writing()
    assert len(ws.transport.written) == 2 and b"third" in ws.transport.written[1]


def test_a_refresh_is_answered_even_to_a_slow_reader(ws):
    ws.deliver(result("first", 1.0))
    ws.pause_writing()
    ws.refresh_asked = 2.0
    ws.deliver(result("first", 2.5))  # nothing changed, but it answers the refresh
    assert len(ws.transport.written) == 2


def test_a_ping_left_unanswered_drops_the_client(ws):
    ws.ping_due()
    assert not ws.transport.aborted and ws.transport.written  # the ping
    ws.ping_due()  # the next one is due and no pong came
    assert ws.transport.aborted


def test_a_client_that_stops_reading_is_not_read_either(ws):
    # Otherwise a client sending pings or bad frames without reading queues our answers without bound.
    ws.pause_writing()
    assert not ws.transport.reading
    ws.resume_writing()
    assert ws.transport.reading


def client_frame(event):
    """A frame as a client sends it (masked), from a client-side wsproto connection past its handshake."""
    from wsproto.connection import Connection, ConnectionType

    return Connection(ConnectionType.CLIENT).send(event)


@pytest.mark.parametrize("how", ["close frame", "end of file", "broken frame"])
def test_a_closing_socket_is_hung_up_on_if_the_client_never_drains_it(ws, loop, monkeypatch, how):
    # A closing transport waits for its buffer to drain; a client that stopped reading never lets it,
    # and would keep its slot and subscription forever.
    monkeypatch.setattr(hub_module, "CLOSE_WAIT_SECONDS", 0.01)
    if how == "close frame":
        from wsproto.events import CloseConnection

        ws.received(client_frame(CloseConnection(code=1000)))
    elif how == "end of file":
        assert ws.eof_received() is False
    else:
        ws.received(b"\x81\x05hello")  # unmasked: a protocol error
    loop.run_until_complete(asyncio.sleep(0.05))
    assert ws.transport.aborted


def test_a_ping_booked_for_an_earlier_second_is_not_put_off_by_a_later_one(loop):
    # Pinging the sockets due books their next pings; that booking must not hide a ping due sooner.
    hub = hub_module.Hub()
    hub._loop = loop
    pinged = {}

    class Pinged:
        def __init__(self, name, interval):
            self.name, self.interval = name, interval

        def ping_due(self):
            pinged.setdefault(self.name, loop.time())
            hub.ping_later(self, self.interval)

    hub.ping_later(Pinged("early", 30), 0)
    hub.ping_later(Pinged("later", 30), 2)
    loop.run_until_complete(asyncio.sleep(3.5))
    assert "later" in pinged  # pinged in its own second, not at the early one's next ping, 30 s on


def test_a_workspace_whose_scans_keep_failing_is_retried_less_and_less_often(monkeypatch):
    delays = []

    class Hub:
        def later(self, delay, callback, *args):
            delays.append(delay)

    request = hub_module.WatchRequest(owner="o", workspace="w", workspace_dir="/w", owner_dir="/",
                                      resolve=lambda: "/w", ping_interval=25, handshake=b"")
    feed = hub_module.WorkspaceFeed(Hub(), request)
    feed.sockets.add(object())
    for _ in range(10):
        feed.running = True
        feed.scanned(None)  # the scan raised (logged by the hub)
    assert delays[0] == hub_module.RETRY_SECONDS
    assert delays == sorted(delays) and delays[-1] == hub_module.MAX_RETRY_SECONDS

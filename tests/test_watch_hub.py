"""The hub's socket protocol against a fake transport: what reaches a client that stops reading, pings."""

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

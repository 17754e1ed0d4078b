"""A cheap git-watch client for ``scripts/bench watch-scale``: asyncio and wsproto, one task a socket.

A socket costs the client a task, a stream and a wsproto connection, so one
process holds 10,000 of them. Each answers the server's pings (a socket
that does not is dropped after two intervals) and its close frames, parses
``changes`` messages and remembers the newest change marker it saw (the
change-latency phase writes ``bench-change-<n>`` into a workspace and waits
for it in the diff).
"""

import asyncio
import collections
import itertools
import json
import re
import time
from pathlib import Path

import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, RejectData, Request, TextMessage

from bench.watch_accounts import TRACKED_FILE, TRACKED_TEXT

CONNECT_WAIT = 10  # seconds for the TCP connection (past the server's backlog the kernel drops SYNs)
HANDSHAKES_IN_FLIGHT = 256  # upgrades asked at once; more only queue up in the server's backlog
MARKER = re.compile(r"bench-change-(\d+)")


class WatchSocket:
    """One client WebSocket, open until the server closes it or its task is cancelled."""

    def __init__(self, workspace=None):
        self.workspace = workspace  # an index: which workspace this socket watches
        self.answered = asyncio.Event()  # the upgrade was accepted or refused, or the connection failed
        self.status = None  # 101, or the refusal's status; None: no answer
        self.first = asyncio.Event()  # the first ``changes`` message came: the socket is held
        self.closed = asyncio.Event()
        self.close_reason = None
        self.closed_at = None  # time.monotonic() of the close frame
        self.marker = -1  # the newest change marker seen in a message
        self.on_marker = None  # called with this socket when ``marker`` grew

    async def run(self, host, port, path, token):
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_WAIT)
            ws = WSConnection(ConnectionType.CLIENT)
            writer.write(ws.send(Request(host=f"{host}:{port}", target=path,
                                         extra_headers=[(b"coder-session-token", token.encode())])))
            parts = []
            while data := await reader.read(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        parts.append(event.data)
                        if event.message_finished:
                            self._message("".join(parts))
                            parts = []
                    elif isinstance(event, Ping):
                        writer.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.close_reason, self.closed_at = event.reason, time.monotonic()
                        writer.write(ws.send(event.response()))  # the close handshake, as a browser answers
                        return
                    elif isinstance(event, AcceptConnection):
                        self.status = 101
                        self.answered.set()
                    elif isinstance(event, (RejectConnection, RejectData)):
                        self.status = getattr(event, "status_code", self.status)
                        return
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self.answered.set()
            self.closed.set()
            if writer is not None:
                writer.close()

    def _message(self, text):
        message = json.loads(text)
        if message.get("type") != "changes":
            return
        self.first.set()
        found = [int(number) for entry in message["repositories"]
                 for number in MARKER.findall(entry.get("unified_diff") or "")]
        if found and max(found) > self.marker:
            self.marker = max(found)
            if self.on_marker is not None:
                self.on_marker(self)


async def open_sockets(specs, host, port, first_wait):
    """One socket per (path, token, workspace) in ``specs``, HANDSHAKES_IN_FLIGHT upgrades at a time; then up
    to ``first_wait`` seconds for every accepted one's first message. (sockets, tasks, seconds until all held)."""
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
    started = time.monotonic()

    async def opened(spec):
        path, token, workspace = spec
        socket = WatchSocket(workspace)
        async with gate:
            task = asyncio.ensure_future(socket.run(host, port, path, token))
            await socket.answered.wait()
        return socket, task

    pairs = await asyncio.gather(*(opened(spec) for spec in specs))
    sockets, tasks = [socket for socket, _ in pairs], [task for _, task in pairs]
    waits = [asyncio.ensure_future(socket.first.wait()) for socket in sockets if socket.status == 101]
    if waits:
        await asyncio.wait(waits, timeout=first_wait)
    for wait in waits:
        wait.cancel()
    return sockets, tasks, time.monotonic() - started


async def close_sockets(tasks):
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def refusals(sockets):
    """{status: count} of the sockets not accepted (None: no answer at all)."""
    return dict(collections.Counter(socket.status for socket in sockets if socket.status != 101))


class ChangeLatency:
    """Writes into watched workspaces, and when every held socket of that workspace got a message carrying them.

    A message carries a write when its newest marker is that write's or a
    later one (a later write to the same workspace supersedes it).
    """

    _numbers = itertools.count()  # markers grow across rounds: a workspace keeps its last diff

    def __init__(self, sockets, workspace_dirs):
        self.workspace_dirs = workspace_dirs  # index -> path of the repository
        self.watchers = collections.defaultdict(list)  # workspace index -> its held sockets
        for socket in sockets:
            if socket.first.is_set():
                self.watchers[socket.workspace].append(socket)
                socket.on_marker = self._heard
        self.pending = collections.defaultdict(list)  # workspace index -> [(marker, written at)]
        self.latencies = []

    def write(self, workspace):
        marker = next(self._numbers)
        written_at = time.monotonic()
        path = Path(self.workspace_dirs[workspace]) / TRACKED_FILE
        path.write_text(f"{TRACKED_TEXT}bench-change-{marker}\n")
        self.pending[workspace].append((marker, written_at))

    def _heard(self, socket):
        sockets = [other for other in self.watchers[socket.workspace] if not other.closed.is_set()]
        everyone_saw = min(other.marker for other in sockets)
        now = time.monotonic()
        waiting = []
        for marker, written_at in self.pending[socket.workspace]:
            if marker <= everyone_saw:
                self.latencies.append(now - written_at)
            else:
                waiting.append((marker, written_at))
        self.pending[socket.workspace] = waiting

    def lost(self):
        return sum(len(waiting) for waiting in self.pending.values())

    async def run(self, rate, seconds, drain, rng):
        """``rate`` writes a second for ``seconds`` into random watched workspaces; then up to ``drain`` seconds
        for the last messages. Returns {"writes", "lost", "p50_ms", "p95_ms", "max_ms"}."""
        workspaces = sorted(self.watchers)
        started = time.monotonic()
        writes = int(rate * seconds)
        for number in range(writes):
            await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))
            self.write(rng.choice(workspaces))
        deadline = time.monotonic() + drain
        while self.lost() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for socket in (socket for sockets in self.watchers.values() for socket in sockets):
            socket.on_marker = None
        return {"workspaces": len(workspaces), "sockets": sum(map(len, self.watchers.values())),
                "writes": writes, "lost": self.lost(), **percentiles_ms(self.latencies)}


def percentiles_ms(values):
    if not values:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(fraction):
        return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "max_ms": round(1000 * ordered[-1], 1)}


ARCHIVED = "Chat was archived."


def archive(base_url, account, timeout=10):
    """The archive call's status, or None when it got no answer within ``timeout``."""
    try:
        return requests.post(f"{base_url}/api/v2/chats/{account['chat_id']}/archive",
                             headers={"Coder-Session-Token": account["token"]}, timeout=timeout).status_code
    except requests.RequestException:
        return None


async def archive_and_time(base_url, account, sockets, wait=30):
    """Archive ``account``'s chat through ``base_url``; seconds from the call to the last close frame of the held
    ones among ``sockets`` (None unless every one got it within ``wait``)."""
    held = [socket for socket in sockets if socket.first.is_set()]
    started = time.monotonic()
    status = await asyncio.get_running_loop().run_in_executor(None, archive, base_url, account)
    call_s = time.monotonic() - started
    if held:
        await asyncio.wait([asyncio.ensure_future(socket.closed.wait()) for socket in held], timeout=wait)
    closed = [socket for socket in held if socket.close_reason == ARCHIVED]
    seconds = max(socket.closed_at for socket in closed) - started if closed and len(closed) == len(held) else None
    return {"status": status, "held": len(held), "closed": len(closed), "call_s": round(call_s, 3),
            "close_s": None if seconds is None else round(seconds, 3)}

"""Git watch: latency from a file write to the ``changes`` message, the CPU an idle socket costs,
and the cost of large workspaces (1, 100 and 400 repositories; 30,000 untracked files).

Against ``GET /api/v2/chats/{chat}/git/watch`` (CONTRACT.md) on a
single-worker service, so the worker's CPU time is the socket's cost. Each
workspace is a git repository with N committed files, all N modified (N
changed files); each round rewrites one of them with a fresh marker and
times until a message whose diff carries that marker arrives.

Scale cases (``WatchBench.open_scale``, ``measure_scale``): the first
message's latency, the time a refresh takes to be answered (a fresh scan: the
scan time), and the worker's CPU per socket with four sockets on the
workspace, idle (periodic rescans only) and with one write a second. Each
case runs on a single-worker service of its own, so their CPU windows can
run side by side.
"""

import json
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.grid import TOKEN_HEADER, create_account

RECEIVE_TIMEOUT = 10  # seconds a change may take before the round counts as lost
SCALE_CASES = (  # label, repositories, untracked files in the (first) repository
    ("1 repository", 1, 0),
    ("100 repositories", 100, 0),
    ("400 repositories", 400, 0),
    ("30,000 untracked files", 1, 30_000),
)
SCALE_SOCKETS = 4
INITIAL_TIMEOUT = 120  # the first scan of a large workspace


class WatchUnavailable(Exception):
    """The service has no working watch route (yet)."""


@dataclass
class LatencyResult:
    changed_files: int
    first_message_s: float
    latencies: list = field(default_factory=list)
    lost: int = 0
    message_bytes: int = 0

    def percentile(self, fraction):
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[max(1, min(len(ordered), round(fraction * len(ordered) + 0.5))) - 1]

    def summary(self):
        return {"changed_files": self.changed_files, "first_message_s": round(self.first_message_s, 3),
                "rounds": len(self.latencies), "lost": self.lost, "message_bytes": self.message_bytes,
                "p50_ms": round(1000 * self.percentile(0.5), 1), "p95_ms": round(1000 * self.percentile(0.95), 1),
                "max_ms": round(1000 * max(self.latencies), 1) if self.latencies else None}


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=repo,
                   check=True, capture_output=True)


def make_workspace(root, name, files):
    """A repository with ``files`` committed text files, every one of them modified."""
    repo = Path(root) / name
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    for index in range(files):
        (repo / f"file_{index:04d}.txt").write_text("".join(f"line {line} of file {index}\n" for line in range(20)))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    for index in range(files):
        with open(repo / f"file_{index:04d}.txt", "a") as handle:
            handle.write(f"changed {index}\n")
    return repo


def make_repositories(root, name, count, untracked):
    """A workspace of ``count`` small repositories (one modified file each), copied from one
    template; the first also holds ``untracked`` new files, 1,000 per directory."""
    workspace = Path(root) / name
    template = make_workspace(Path(root) / f".template-{name}", "repo", 1)
    for number in range(count):
        shutil.copytree(template, workspace / f"repo{number:03d}", symlinks=True)
    shutil.rmtree(template.parent)
    first = workspace / "repo000"
    for number in range(untracked):
        directory = first / f"new{number // 1000:02d}"
        directory.mkdir(exist_ok=True)
        (directory / f"file{number % 1000:03d}.txt").write_text(f"untracked {number}\n")
    return workspace


class WatchBench:
    def __init__(self, service, log=print):
        self.service = service
        self.log = log
        self.account = create_account(service, "bench-watcher")
        self.root = self._workspaces_dir(self.account)
        (self.worker_pid,) = service.worker_pids()

    def _workspaces_dir(self, account):
        # Workspaces live in the owner's own directory, WORKSPACES_ROOT/<user id>/ (create-user made it).
        return Path(self.service.env["WORKSPACES_ROOT"]) / account.user_id

    # -- plumbing --

    def create_chat(self, workspace, account=None):
        import requests

        account = account or self.account
        response = requests.post(f"{self.service.url}/api/v2/chats", json={"title": workspace, "workspace": workspace},
                                 headers={TOKEN_HEADER: account.token}, timeout=30)
        if response.status_code != 201:
            raise RuntimeError(f"creating a chat failed: {response.status_code} {response.text[:300]}")
        return response.json()["id"]

    def connect(self, chat_id, account=None):
        """An open socket and its first message; WatchUnavailable when the route does not answer as a WebSocket."""
        account = account or self.account
        url = f"ws://127.0.0.1:{self.service.port}/api/v2/chats/{chat_id}/git/watch"
        try:
            socket = TextSocket(url, {TOKEN_HEADER: account.token})
        except Exception as error:  # noqa: BLE001 - any failure to upgrade means "not there"
            raise WatchUnavailable(f"WebSocket upgrade refused ({error!r}); {self._plain_get(chat_id)}") from None
        started = time.perf_counter()
        text = socket.receive(timeout=INITIAL_TIMEOUT)
        if text is None:
            socket.close()
            raise WatchUnavailable(f"no first message within {INITIAL_TIMEOUT}s")
        return socket, json.loads(text), time.perf_counter() - started

    def _plain_get(self, chat_id):
        import requests

        response = requests.get(f"{self.service.url}/api/v2/chats/{chat_id}/git/watch",
                                headers={TOKEN_HEADER: self.account.token}, timeout=10)
        return f"a plain GET answers {response.status_code} {response.text[:120]!r}"

    # -- latency --

    def latency(self, changed_files, rounds, budget_seconds, seed=5):
        workspace = f"ws-{changed_files}"
        repo = make_workspace(self.root, workspace, changed_files)
        chat_id = self.create_chat(workspace)
        connect_started = time.perf_counter()
        socket, first, _ = self.connect(chat_id)
        result = LatencyResult(changed_files, time.perf_counter() - connect_started)
        if first.get("type") != "changes":
            socket.close()
            raise WatchUnavailable(f"first message is not a changes message: {str(first)[:200]}")
        jitter = random.Random(seed)
        target = repo / "file_0000.txt"
        deadline = time.monotonic() + budget_seconds
        try:
            for round_number in range(rounds):
                if time.monotonic() > deadline:
                    break
                self._drain(socket)
                marker = f"bench-marker-{round_number}-{jitter.random()}"
                started = time.perf_counter()
                target.write_text(f"{marker}\n" + "line\n" * 20)
                message_bytes = self._wait_for(socket, marker)
                if message_bytes is None:
                    result.lost += 1
                else:
                    result.latencies.append(time.perf_counter() - started)
                    result.message_bytes = message_bytes
                # A random gap puts the next write at a random phase of the server's poll loop.
                time.sleep(0.3 + 0.4 * jitter.random())
        finally:
            socket.close()
        summary = result.summary()
        self.log(f"  {changed_files:5d} changed files: first message {summary['first_message_s']} s, "
                 f"p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms over {summary['rounds']} rounds"
                 + (f", {result.lost} lost" if result.lost else ""))
        return result

    @staticmethod
    def _drain(socket):
        while socket.receive(timeout=0) is not None:
            pass

    @staticmethod
    def _wait_for(socket, marker):
        """Size of the first message carrying ``marker`` in a diff, or None after RECEIVE_TIMEOUT."""
        deadline = time.perf_counter() + RECEIVE_TIMEOUT
        while (left := deadline - time.perf_counter()) > 0:
            text = socket.receive(timeout=left)
            if text is None:
                return None
            if marker in text:  # cheap test first; parse only the candidate
                message = json.loads(text)
                if any(marker in repo.get("unified_diff", "") for repo in message.get("repositories", [])):
                    return len(text)
        return None

    # -- idle CPU --

    def idle_cpu(self, seconds, many=10):
        """Worker CPU (incl. git children) per second with 0, 1 and ``many`` idle sockets."""
        make_workspace(self.root, "ws-idle", 1)
        chat_id = self.create_chat("ws-idle")
        sockets = []
        figures = {}
        try:
            figures[0] = self._cpu_rate(seconds)
            for count in (1, many):
                while len(sockets) < count:
                    sockets.append(self.connect(chat_id)[0])
                time.sleep(1)  # let the first scans and their git children finish
                figures[count] = self._cpu_rate(seconds)
        finally:
            for socket in sockets:
                socket.close()
        per_socket = (figures[many] - figures[0]) / many
        self.log(f"  idle worker CPU: {100 * figures[0]:.2f}% with no socket, {100 * figures[1]:.2f}% with 1, "
                 f"{100 * figures[many]:.2f}% with {many}: {100 * per_socket:.3f}% of a core per socket")
        return {"no_socket": figures[0], "one_socket": figures[1], "many_sockets": figures[many], "many": many,
                "per_socket": per_socket, "seconds": seconds}

    def _cpu_rate(self, seconds):
        before = self.cpu_seconds()
        time.sleep(seconds)
        return (self.cpu_seconds() - before) / seconds


    # -- scale --

    def open_scale(self, label, repositories, untracked):
        """One large workspace with SCALE_SOCKETS sockets open on it: its first message and scan time."""
        account = create_account(self.service, f"bench-scale-{repositories}-{untracked}")
        name = f"scale-{repositories}-{untracked}"
        workspace = make_repositories(self._workspaces_dir(account), name, repositories, untracked)
        chat_id = self.create_chat(name, account)
        connect_started = time.perf_counter()
        socket, first, _ = self.connect(chat_id, account)
        first_message_s = time.perf_counter() - connect_started
        case = ScaleCase(self, label, repositories, untracked, workspace / "repo000" / "repo-bench.txt", [socket],
                         first, first_message_s)
        try:
            case.sockets += [self.connect(chat_id, account)[0] for _ in range(SCALE_SOCKETS - 1)]
            case.scans = [self._refresh_seconds(socket) for _ in range(3)]
        except BaseException:
            case.close()
            raise
        return case

    def _refresh_seconds(self, socket):
        self._drain(socket)
        started = time.perf_counter()
        socket.send(json.dumps({"type": "refresh"}))
        while True:
            text = socket.receive(timeout=INITIAL_TIMEOUT)
            if text is None:
                raise WatchUnavailable(f"no answer to a refresh within {INITIAL_TIMEOUT}s")
            if json.loads(text).get("type") == "changes":
                return time.perf_counter() - started

    def cpu_seconds(self):
        return procstat.cpu_seconds(self.worker_pid)


@dataclass
class ScaleCase:
    """A large workspace opened by ``WatchBench.open_scale`` on its own single-worker service."""

    bench: WatchBench
    label: str
    repositories: int
    untracked: int
    written: Path  # the file each write of the busy window rewrites
    sockets: list
    first: dict
    first_message_s: float
    scans: list = field(default_factory=list)

    def close(self):
        for socket in self.sockets:
            socket.close()


def measure_scale(cases, window_seconds, log=print):
    """Worker CPU per socket of every case, idle and with one write a second, in windows the cases share.

    Each case has a worker of its own, so the windows run side by side: a
    worker's CPU is its own workspace's, and the run takes two windows, not
    two per case. Idle is the periodic rescans only (a window is longer
    than the 10 s rescan interval).
    """
    try:
        idle = _cpu_rates(cases, window_seconds, write=False)
        busy = _cpu_rates(cases, window_seconds, write=True)
    finally:
        for case in cases:
            case.close()
    rows = []
    for case in cases:
        row = {"label": case.label, "repositories": case.repositories, "untracked": case.untracked,
               "reported": len(case.first.get("repositories", [])), "truncated": bool(case.first.get("truncated")),
               "first_message_s": round(case.first_message_s, 3), "scan_s": round(sorted(case.scans)[1], 3),
               "idle_cpu_per_socket": idle[case.label] / SCALE_SOCKETS,
               "busy_cpu_per_socket": busy[case.label] / SCALE_SOCKETS,
               "sockets": SCALE_SOCKETS, "window_s": window_seconds, "side_by_side": len(cases)}
        log(f"  {case.label}: first message {row['first_message_s']} s, scan {row['scan_s']} s, "
            f"{row['reported']} reported{' (truncated)' if row['truncated'] else ''}, CPU per socket "
            f"{100 * row['idle_cpu_per_socket']:.2f}% idle, {100 * row['busy_cpu_per_socket']:.2f}% with a write "
            f"a second")
        rows.append(row)
    return rows


def _cpu_rates(cases, seconds, write):
    """{label: the case's worker CPU over one window / its length}; with ``write``, one write a second to each."""
    before = {case.label: case.bench.cpu_seconds() for case in cases}
    started = time.monotonic()
    number = 0
    while time.monotonic() - started < seconds:
        if write:
            for case in cases:
                case.written.write_text(f"write {number}\n")
            number += 1
        time.sleep(1)
        for case in cases:
            for socket in case.sockets:
                WatchBench._drain(socket)
    elapsed = time.monotonic() - started
    return {case.label: (case.bench.cpu_seconds() - before[case.label]) / elapsed for case in cases}


class TextSocket:
    """websocket-client with the three calls the rounds use: receive(timeout) -> text or None, send, close."""

    def __init__(self, url, headers):
        import websocket

        self._ws = websocket.create_connection(url, header=[f"{name}: {value}" for name, value in headers.items()],
                                               timeout=INITIAL_TIMEOUT)

    def receive(self, timeout):
        import websocket

        self._ws.settimeout(timeout if timeout > 0 else 0.001)
        try:
            return self._ws.recv()
        except (websocket.WebSocketTimeoutException, TimeoutError):
            return None

    def send(self, text):
        self._ws.send(text)

    def close(self):
        self._ws.close()

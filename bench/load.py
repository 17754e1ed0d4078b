"""A closed-loop load generator: N threads, each with its own connection, for a bounded time.

Each thread opens its connection with one cheap untimed request (a health
check, a HEAD of the bucket), waits for the others, then repeats its
request until the cell's time is up or the request cap is reached; the
requests in flight then finish and count (the cell's time includes them).
The client is plain http.client (a few microseconds of Python per request,
socket I/O outside the GIL), so on this 2-core machine it takes as little
CPU as possible from the servers; its CPU use is measured and reported.
"""

import http.client
import threading
import time
import uuid
from dataclasses import dataclass, field

from bench import procstat

TIMEOUT = 60


class RequestFailed(Exception):
    pass


@dataclass
class CellResult:
    """One cell: a system, a direction, a size, a concurrency."""

    requests: int
    errors: int
    seconds: float
    bytes_moved: int
    latencies: list = field(repr=False)
    client_cpu: float = 0.0  # seconds of our own CPU during the cell
    server_cpu: float = 0.0  # seconds of the gunicorn processes' CPU (0 for boto3 direct)
    storage_cpu: float = 0.0  # seconds of moto's CPU
    machine_cpu: float = 0.0  # seconds of CPU used on the whole machine, ours and anyone else's
    first_error: str = ""

    @property
    def rate(self):
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self):
        return self.bytes_moved / self.seconds / 1e6 if self.seconds else 0.0

    def percentile(self, fraction):
        """Nearest-rank percentile of the latencies, in seconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
        return ordered[rank - 1]

    def summary(self):
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 2),
            "mb_per_second": round(self.mb_per_second, 2),
            "p50_ms": round(1000 * self.percentile(0.50), 2),
            "p99_ms": round(1000 * self.percentile(0.99), 2),
            "client_cpu": round(self.client_cpu, 3),
            "server_cpu": round(self.server_cpu, 3),
            "storage_cpu": round(self.storage_cpu, 3),
            "machine_cpu": round(self.machine_cpu, 3),
            "first_error": self.first_error,
        }


class _HttpWorker:
    """One thread's keep-alive connection and the request it repeats."""

    def __init__(self, kind):
        self.kind = kind
        self.connection = None
        self.reset()

    def reset(self):
        """A fresh connection: between rounds the server may have closed an idle one (keepalive)."""
        self.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.kind.port, timeout=TIMEOUT)

    def close(self):
        if self.connection is not None:
            self.connection.close()

    def warm(self):
        """Open the connection with a cheap request (the payload would cost seconds at 8 MB)."""
        self.connection.request("GET", self.kind.warm_path)
        self.connection.getresponse().read()

    def __call__(self):
        kind = self.kind
        path = kind.path() if callable(kind.path) else kind.path
        try:
            self.connection.request(kind.method, path, body=kind.body, headers=kind.headers)
            response = self.connection.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            self.reset()
            raise
        if response.status != kind.status:
            raise RequestFailed(f"{kind.method} {path}: {response.status} {data[:200]!r}")
        if kind.expect_bytes is not None and len(data) != kind.expect_bytes:
            raise RequestFailed(f"{kind.method} {path}: {len(data)} bytes, expected {kind.expect_bytes}")


class HttpCall:
    """One kind of HTTP request, made on a per-thread keep-alive connection.

    ``path`` is a string or a function returning a fresh path per request
    (unique keys for uploads). ``expect_bytes`` checks the body length.
    """

    def __init__(self, port, method, path, headers=None, body=None, status=200, expect_bytes=None,
                 warm_path="/healthz"):
        self.port = port
        self.warm_path = warm_path
        self.method = method
        self.path = path
        self.headers = headers or {}
        self.body = body
        self.status = status
        self.expect_bytes = expect_bytes
        self.moved = len(body) if body is not None else (expect_bytes or 0)

    def make_worker(self):
        return _HttpWorker(self)


class _Boto3Worker:
    def __init__(self, kind):
        self.kind = kind
        self.client = kind.clients.take()

    def reset(self):
        pass  # botocore's pool replaces connections the server closed

    def warm(self):
        self.client.head_bucket(Bucket=self.kind.bucket)

    def close(self):
        self.kind.clients.give(self.client)

    def __call__(self):
        kind = self.kind
        if kind.direction == "upload":
            self.client.put_object(Bucket=kind.bucket, Key=f"{kind.prefix}{uuid.uuid4()}", Body=kind.data,
                                   ContentType=kind.content_type)
            return
        body = self.client.get_object(Bucket=kind.bucket, Key=kind.key)["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) != kind.moved:
            raise RequestFailed(f"GET {kind.key}: {len(data)} bytes, expected {kind.moved}")


class ClientPool:
    """boto3 clients kept from cell to cell, one per worker thread at a time.

    Building a client costs ~0.15 s of CPU (each loads the S3 service model):
    a cell of 16 threads would spend seconds on it before its first request.
    """

    def __init__(self, factory):
        self._factory = factory
        self._idle = []
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._factory()

    def give(self, client):
        with self._lock:
            self._idle.append(client)


class Boto3Call:
    """The storage floor: the same bytes straight to or from S3 with a per-thread boto3 client."""

    def __init__(self, clients, bucket, direction, data=None, key=None, prefix="direct/", content_type=None):
        self.clients = clients  # a ClientPool
        self.bucket = bucket
        self.direction = direction
        self.data = data
        self.key = key
        self.prefix = prefix
        self.content_type = content_type or "application/octet-stream"
        self.moved = len(data) if data is not None else 0

    def make_worker(self):
        return _Boto3Worker(self)


class Cell:
    """``concurrency`` workers repeating one call; run() in one or more timed rounds, then close().

    Every round reconnects (the server closes connections idle longer than
    its keepalive) and warms each connection with a cheap request, so rounds
    of several systems can be interleaved.
    """

    def __init__(self, call_kind, concurrency, server_pids=(), storage_pids=()):
        self.call_kind = call_kind
        self.concurrency = concurrency
        self.server_pids = server_pids
        self.storage_pids = storage_pids
        self.workers = [call_kind.make_worker() for _ in range(concurrency)]
        self.rounds = []

    def close(self):
        for worker in self.workers:
            worker.close()

    def result(self):
        return merge(self.rounds)

    def run(self, duration, max_requests):
        latencies, failures = [], []
        lock = threading.Lock()
        budget = {"left": max_requests}
        ready = threading.Barrier(self.concurrency + 1)
        clock = {"deadline": float("inf")}

        def take_ticket():
            with lock:
                if budget["left"] <= 0 or time.perf_counter() >= clock["deadline"]:
                    return False
                budget["left"] -= 1
                return True

        def attempt(action):
            try:
                action()
                return True
            except Exception as error:  # noqa: BLE001 - reported with the figures, not fatal
                with lock:
                    failures.append(repr(error))
                return False

        def loop(worker):
            worker.reset()
            attempt(worker.warm)
            ready.wait()
            mine = []
            while take_ticket():
                started = time.perf_counter()
                if attempt(worker):
                    mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=loop, args=(worker,), daemon=True) for worker in self.workers]
        for thread in threads:
            thread.start()
        ready.wait()  # everyone connected (and warmed up)
        cpu_before = _cpu_snapshot(self.server_pids, self.storage_pids)
        started = time.perf_counter()
        clock["deadline"] = started + duration
        for thread in threads:
            thread.join(timeout=duration + 2 * TIMEOUT)
        ended = time.perf_counter()
        cpu_after = _cpu_snapshot(self.server_pids, self.storage_pids)
        result = CellResult(
            requests=len(latencies),
            errors=len(failures),
            seconds=ended - started,
            bytes_moved=len(latencies) * self.call_kind.moved,
            latencies=latencies,
            client_cpu=cpu_after[0] - cpu_before[0],
            server_cpu=cpu_after[1] - cpu_before[1],
            storage_cpu=cpu_after[2] - cpu_before[2],
            machine_cpu=cpu_after[3] - cpu_before[3],
            first_error=failures[0] if failures else "",
        )
        self.rounds.append(result)
        return result


def merge(rounds):
    """One CellResult for several rounds of the same cell."""
    first_errors = [result.first_error for result in rounds if result.first_error]
    return CellResult(
        requests=sum(result.requests for result in rounds),
        errors=sum(result.errors for result in rounds),
        seconds=sum(result.seconds for result in rounds),
        bytes_moved=sum(result.bytes_moved for result in rounds),
        latencies=[value for result in rounds for value in result.latencies],
        client_cpu=sum(result.client_cpu for result in rounds),
        server_cpu=sum(result.server_cpu for result in rounds),
        storage_cpu=sum(result.storage_cpu for result in rounds),
        machine_cpu=sum(result.machine_cpu for result in rounds),
        first_error=first_errors[0] if first_errors else "",
    )


def _cpu_snapshot(server_pids, storage_pids):
    pids = server_pids() if callable(server_pids) else server_pids
    return (procstat.own_cpu_seconds(), procstat.threads_cpu_seconds(pids), procstat.total_cpu_seconds(storage_pids),
            procstat.machine_busy_seconds())

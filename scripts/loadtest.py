#!/usr/bin/env python3
"""Load with nothing lost: concurrent uploads and downloads while gunicorn workers are SIGKILLed.

    .venv/bin/python scripts/loadtest.py [--duration 30] [--clients 8] [--workers 3] [--kill-every 3]

Starts its own PostgreSQL, moto S3 server and the service under gunicorn
(several workers, the Procfile's gunicorn.conf.py), all on 127.0.0.1, and
creates one user. Then --clients threads, each with its own keep-alive
session, upload images (precomputed with Pillow: four formats, 7 KB to
about 1 MB) and download their own earlier uploads, checking bytes and
ETag, until --duration seconds or --max-requests requests, whichever comes
first. Meanwhile a killer thread SIGKILLs a random worker every
--kill-every seconds; gunicorn's master starts a new one.

At the end every upload that was answered 201 is downloaded again and must
come back byte-identical with its ETag; anything else is "lost".

Attributing failures is approximate by nature; the rule is: a request that
failed at the connection level (reset, closed without an answer, body cut
short) counts as "in flight on a killed worker" when a kill happened between
KILL_GRACE seconds before it started and its end. The grace covers a request
sent on a kept-alive connection in the instant between the kill and the
kernel closing that dead worker's sockets. Everything else is a real error:
any 5xx (a killed worker answers nothing, so it cannot send one), any
timeout, a connection failure with no kill nearby, a wrong status, wrong
bytes or a wrong ETag.

Prints requests, statuses, errors, throughput and latency percentiles.
Exit status 0 when nothing was lost and no real error happened, else 1.
tests/test_load.py runs a short version through run_load().
"""

import argparse
import concurrent.futures
import hashlib
import io
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, ROOT)

import boto3  # noqa: E402
import psycopg2  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

import models  # noqa: E402
from harness.live import GunicornServer  # noqa: E402
from harness.servers import AWS_TEST_CREDENTIALS, MotoServer, PostgresServer  # noqa: E402

BUCKET = "loadtest"
REQUEST_TIMEOUT = 30  # a hang guard only; the service's own timeouts are far shorter
KILL_GRACE = 0.25  # seconds before a request's start within which a kill still counts
UPLOAD_SHARE = 0.4  # the rest are downloads of the client's own earlier uploads
PAYLOADS_PER_SHAPE = 4
RESPAWN_TIMEOUT = 30

# (content type, width, height, weight): mostly small, now and then about a megabyte.
SHAPES = [
    ("image/png", 48, 48, 4),
    ("image/gif", 160, 120, 2),
    ("image/webp", 320, 240, 3),
    ("image/jpeg", 640, 480, 3),
    ("image/png", 400, 300, 1),
    ("image/jpeg", 1280, 960, 1),
]
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": AWS_TEST_CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": AWS_TEST_CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": AWS_TEST_CREDENTIALS["region_name"],
}


@dataclass
class LoadOptions:
    duration: float = 30.0
    max_requests: int = 50_000
    clients: int = 8
    workers: int = 3
    threads: int = 8  # per worker (WEB_THREADS)
    kill_every: float = 3.0
    seed: int = 1


# --- payloads ------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    content_type: str
    data: bytes
    etag: str
    weight: int


def make_payloads(seed):
    """Distinct, photo-like images (a gradient blended with seeded noise), a few per shape."""
    rng = random.Random(seed)
    payloads = []
    for content_type, width, height, weight in SHAPES:
        for _ in range(PAYLOADS_PER_SHAPE):
            data = _encode(_photo(rng, width, height), content_type)
            payloads.append(Payload(content_type, data, f'"{hashlib.sha256(data).hexdigest()}"', weight))
    return payloads


def _photo(rng, width, height):
    gradient = Image.linear_gradient("L").rotate(rng.randrange(360)).resize((width, height))
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    return Image.blend(Image.merge("RGB", [gradient] * 3), noise, rng.uniform(0.2, 0.6))


def _encode(image, content_type):
    buffer = io.BytesIO()
    image.save(buffer, PIL_FORMATS[content_type])
    return buffer.getvalue()


# --- the servers ---------------------------------------------------------------------


class Service(GunicornServer):
    """The service under gunicorn; its load-test user is created while the workers boot."""

    def _prepare(self):
        super()._prepare()  # the schema, which create-user needs
        background = concurrent.futures.ThreadPoolExecutor(1)
        self.account = background.submit(self.flask, "create-user", "loadtest", "--org", "loadtest")
        background.shutdown(wait=False)  # the submitted command still runs to its end


class Stack:
    """PostgreSQL, moto's S3 and the service under gunicorn, on 127.0.0.1, with one user.

    ``database_url`` and ``s3_bucket`` ((endpoint_url, bucket)) reuse servers
    that are already running, e.g. the test suite's; otherwise this starts its own.
    """

    def __init__(self, options, database_url=None, s3_bucket=None):
        self.options = options
        self.base_dir = tempfile.mkdtemp(prefix="loadtest-")
        os.chmod(self.base_dir, 0o755)  # the postgres user must reach its cluster inside
        self.database_url = database_url
        self.endpoint_url, self.bucket = s3_bucket or (None, BUCKET)
        self.owned_servers = []
        self.gunicorn = None
        self.account = None

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _start(self):
        if self.database_url is None:
            postgres = self._own(PostgresServer(self.base_dir))
            self.database_url = postgres.create_database("loadtest")
        if self.endpoint_url is None:
            s3 = self._own(MotoServer())
            self.endpoint_url = s3.endpoint_url
            s3.create_bucket(self.bucket)
        env = {
            **AWS_ENVIRONMENT,
            "DATABASE_URL": self.database_url,
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "WEB_CONCURRENCY": self.options.workers,
            "WEB_THREADS": self.options.threads,
            "WORKSPACES_ROOT": os.path.join(self.base_dir, "workspaces"),
            "LOG_LEVEL": "WARNING",  # one log line per request would cost CPU the clients need
        }
        self.gunicorn = self._own(Service(env, work_dir=self.base_dir))
        self.account = self.gunicorn.account.result()

    def _own(self, server):
        self.owned_servers.append(server)
        return server.start()

    def close(self):
        for server in reversed(self.owned_servers):
            server.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def wait_for_all_workers(self):
        """After the last kill: wait until the master has its full set of workers again."""
        deadline = time.monotonic() + RESPAWN_TIMEOUT
        while len(self.gunicorn.worker_pids()) < self.options.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def log_tail(self, lines=40):
        with open(self.gunicorn.log_path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def orphan_objects(self):
        """Objects with no row: written by a worker killed before its insert (gc-storage's job)."""
        connection = psycopg2.connect(self.database_url, connect_timeout=5)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'SELECT id FROM "{models.ChatFile._meta.table_name}"')
                row_ids = {str(row[0]) for row in cursor.fetchall()}
        finally:
            connection.close()
        keys = []
        client = boto3.client("s3", endpoint_url=self.endpoint_url, **AWS_TEST_CREDENTIALS)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return [key for key in keys if key.rsplit("/", 1)[-1] not in row_ids]


# --- one run -------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "upload" or "download"
    started: float
    ended: float
    status: int | None = None  # None: no HTTP answer at all
    error: str | None = None  # None: the answer was the expected one
    interrupted: bool = False  # failed at the connection level (reset, closed, cut short)
    bytes: int = 0  # payload bytes moved by a successful request


@dataclass
class LoadResult:
    options: LoadOptions
    elapsed: float
    outcomes: list
    kills: list  # monotonic times just before each SIGKILL
    acknowledged: int
    lost: list  # descriptions of acknowledged uploads that did not come back intact
    orphans: int = 0
    killed_in_flight: list = field(default_factory=list)
    real_errors: list = field(default_factory=list)
    server_log_tail: str = ""  # gunicorn's last lines, kept only when something went wrong

    @property
    def ok(self):
        return not self.lost and not self.real_errors

    def succeeded(self, kind):
        return sum(1 for outcome in self.outcomes if outcome.kind == kind and outcome.error is None)


class LoadRun:
    """Client threads and a killer thread against one Stack; see the module docstring."""

    def __init__(self, stack, options, payloads):
        self.stack = stack
        self.options = options
        self.payloads = payloads
        self.weights = [payload.weight for payload in payloads]
        self.outcomes = []
        self.kills = []
        self.acknowledged = []  # (file_id, payload)
        self._lock = threading.Lock()
        self._issued = 0
        self._deadline = None
        self._stop_killing = threading.Event()

    @property
    def headers(self):
        return {"Coder-Session-Token": self.stack.account["token"]}

    def run(self):
        started = time.monotonic()
        self._deadline = started + self.options.duration
        clients = [threading.Thread(target=self._client, args=(index,), name=f"client-{index}")
                   for index in range(self.options.clients)]
        killer = threading.Thread(target=self._killer, name="killer")
        for thread in clients:
            thread.start()
        killer.start()
        for thread in clients:
            thread.join()
        elapsed = time.monotonic() - started
        self._stop_killing.set()
        killer.join()
        return elapsed

    # -- the killer --

    def _killer(self):
        rng = random.Random(f"{self.options.seed}-killer")
        while not self._stop_killing.wait(self.options.kill_every):
            pids = self.stack.gunicorn.worker_pids()
            if not pids:
                continue
            moment = time.monotonic()
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                continue  # it died on its own in the meantime
            with self._lock:
                self.kills.append(moment)

    # -- the clients --

    def _take_ticket(self):
        with self._lock:
            if self._issued >= self.options.max_requests or time.monotonic() >= self._deadline:
                return False
            self._issued += 1
            return True

    def _client(self, index):
        rng = random.Random(f"{self.options.seed}-client-{index}")
        mine = []
        with requests.Session() as session:
            session.headers.update(self.headers)
            while self._take_ticket():
                if not mine or rng.random() < UPLOAD_SHARE:
                    payload = rng.choices(self.payloads, self.weights)[0]
                    file_id = self._upload(session, payload)
                    if file_id is not None:
                        mine.append((file_id, payload))
                else:
                    self._record(download(self.stack.gunicorn.url, session, *rng.choice(mine)))

    def _upload(self, session, payload):
        outcome, file_id = upload(self.stack.gunicorn.url, session, self.stack.account["organization_id"], payload)
        self._record(outcome)
        if file_id is not None:
            with self._lock:
                self.acknowledged.append((file_id, payload))
        return file_id

    def _record(self, outcome):
        with self._lock:
            self.outcomes.append(outcome)

    # -- afterwards --

    def verify(self):
        """Download every acknowledged upload once more; return what did not come back intact."""
        local, sessions = threading.local(), []

        def check(item):
            if not hasattr(local, "session"):
                local.session = requests.Session()
                local.session.headers.update(self.headers)
                sessions.append(local.session)
            file_id, payload = item
            outcome = download(self.stack.gunicorn.url, local.session, file_id, payload)
            return None if outcome.error is None else f"{file_id}: {outcome.error}"

        try:
            with concurrent.futures.ThreadPoolExecutor(self.options.clients) as pool:
                return [problem for problem in pool.map(check, self.acknowledged) if problem]
        finally:
            for session in sessions:  # idle keep-alive connections would slow gunicorn's shutdown
                session.close()

    def classify(self):
        """Split failures into (in flight on a killed worker, real), by the module docstring's rule."""
        killed_in_flight, real = [], []
        for outcome in self.outcomes:
            if outcome.error is None:
                continue
            if outcome.interrupted and self._killed_during(outcome):
                killed_in_flight.append(outcome)
            else:
                real.append(outcome)
        return killed_in_flight, real

    def _killed_during(self, outcome):
        return any(outcome.started - KILL_GRACE <= moment <= outcome.ended for moment in self.kills)


def upload(base_url, session, organization_id, payload):
    """POST one image: (Outcome, file id or None)."""
    started = time.monotonic()
    try:
        response = session.post(
            f"{base_url}/api/v2/chats/files",
            params={"organization": organization_id},
            data=payload.data,
            headers={"Content-Type": payload.content_type},
            timeout=REQUEST_TIMEOUT,
        )
    except requests.RequestException as error:
        return _failed("upload", started, error), None
    outcome = Outcome("upload", started, time.monotonic(), response.status_code)
    if response.status_code != 201:
        outcome.error = f"upload answered {response.status_code}: {response.text[:200]}"
        return outcome, None
    outcome.bytes = len(payload.data)
    return outcome, response.json()["id"]


def download(base_url, session, file_id, payload):
    """GET one file and compare it with what was uploaded."""
    started = time.monotonic()
    try:
        response = session.get(f"{base_url}/api/v2/chats/files/{file_id}", timeout=REQUEST_TIMEOUT)
        body = response.content  # reads the whole body: a cut-short one raises here
    except requests.RequestException as error:
        return _failed("download", started, error)
    outcome = Outcome("download", started, time.monotonic(), response.status_code)
    if response.status_code != 200:
        outcome.error = f"download answered {response.status_code}: {response.text[:200]}"
    elif body != payload.data:
        outcome.error = f"download returned {len(body)} bytes that differ from the {len(payload.data)} uploaded"
    elif response.headers.get("ETag") != payload.etag:
        outcome.error = f"download ETag {response.headers.get('ETag')} is not {payload.etag}"
    else:
        outcome.bytes = len(body)
    return outcome


def _failed(kind, started, error):
    interrupted = isinstance(error, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)) and (
        not isinstance(error, requests.Timeout)
    )
    return Outcome(kind, started, time.monotonic(), error=f"{kind}: {type(error).__name__}: {error}",
                   interrupted=interrupted)


def run_load(options, progress=None, database_url=None, s3_bucket=None):
    """Start the servers, run the load, verify, stop everything; return a LoadResult.

    ``database_url`` and ``s3_bucket`` ((endpoint_url, bucket)): see Stack.
    """
    say = progress or (lambda message: None)
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        payloads = background.submit(make_payloads, options.seed)  # Pillow encodes while the servers start
        say(f"starting the servers; gunicorn with {options.workers} workers")
        with Stack(options, database_url, s3_bucket) as stack:
            run = LoadRun(stack, options, payloads.result())
            say(f"running {options.clients} clients for up to {options.duration:g} s "
                f"or {options.max_requests} requests, a kill every {options.kill_every:g} s")
            elapsed = run.run()
            stack.wait_for_all_workers()
            say(f"verifying {len(run.acknowledged)} acknowledged uploads")
            lost = run.verify()
            killed_in_flight, real_errors = run.classify()
            result = LoadResult(
                options=options,
                elapsed=elapsed,
                outcomes=run.outcomes,
                kills=run.kills,
                acknowledged=len(run.acknowledged),
                lost=lost,
                orphans=len(stack.orphan_objects()),
                killed_in_flight=killed_in_flight,
                real_errors=real_errors,
            )
            if not result.ok:  # the log goes with the servers' directory
                result.server_log_tail = stack.log_tail()
            return result


# --- the report ----------------------------------------------------------------------


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def report(result):
    options, outcomes = result.options, result.outcomes
    by_kind = {kind: [outcome for outcome in outcomes if outcome.kind == kind] for kind in ("upload", "download")}
    statuses = {}
    for outcome in outcomes:
        label = str(outcome.status) if outcome.status is not None else "no answer"
        statuses[label] = statuses.get(label, 0) + 1
    moved = sum(outcome.bytes for outcome in outcomes)
    lines = [
        f"load: {result.elapsed:.1f} s, {options.clients} clients, {options.workers} workers x "
        f"{options.threads} threads, a kill every {options.kill_every:g} s, seed {options.seed}",
        f"requests: {len(outcomes)} ({len(by_kind['upload'])} uploads, {len(by_kind['download'])} downloads)",
        "by status: " + ", ".join(f"{label}: {count}" for label, count in sorted(statuses.items())),
        f"workers killed: {len(result.kills)}",
        f"errors: {len(result.killed_in_flight)} in flight on a killed worker, {len(result.real_errors)} real",
        f"throughput: {len(outcomes) / result.elapsed:.1f} req/s, {moved / result.elapsed / 1e6:.2f} MB/s",
    ]
    for kind, kind_outcomes in by_kind.items():
        latencies = sorted((o.ended - o.started) * 1000 for o in kind_outcomes if o.status is not None)
        figures = ", ".join(f"{name} {percentile(latencies, q):.0f}"
                            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)))
        lines.append(f"latency {kind} ms: {figures}")
    lines.append(f"verified: {result.acknowledged} acknowledged uploads, {len(result.lost)} lost")
    lines.append(f"objects without a row (worker killed between write and insert; gc-storage's job): {result.orphans}")
    for problem in result.lost[:10]:
        lines.append(f"  LOST {problem}")
    for outcome in result.real_errors[:10]:
        lines.append(f"  REAL ERROR {outcome.error}")
    if result.server_log_tail:
        lines += ["gunicorn log, last lines:", result.server_log_tail.rstrip()]
    lines.append("RESULT: " + ("PASS" if result.ok else "FAIL"))
    return "\n".join(lines)


def parse_args(argv=None):
    defaults = LoadOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests, help="stop after this many")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="threads per gunicorn worker")
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every,
                        help="seconds between SIGKILLs of a random worker")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="for images, choices and kills")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.max_requests < 1 or args.clients < 1 or args.workers < 1 or args.threads < 1:
        parser.error("duration, max-requests, clients, workers and threads must be positive")
    if args.kill_every <= 0:
        parser.error("--kill-every must be positive")
    return LoadOptions(**vars(args))


def main(argv=None):
    options = parse_args(argv)
    result = run_load(options, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Outages of the real servers: S3 and PostgreSQL stopped, hung and restarted under a live gunicorn.

One gunicorn worker with one thread serves the whole module, so "recovers
without a restart" is checked literally: the same worker pid answers before,
during and after each outage, and a follow-up request can only run once the
one before it has finished. The PostgreSQL and S3 servers here are private:
stopping the session-wide ones would cut every other test's connections.

Timings are not asserted; each request's client timeout is only a hang guard.
"""

import hashlib
import os
import shutil
import socket
import tempfile

import pytest
import requests

import models
from harness.imaging import make_image
from harness.live import GunicornServer
from harness.servers import MotoServer, PostgresServer

BUCKET = "outage-bucket"
HANG_GUARD = 20  # seconds; far above the worst case the timeouts allow (about 9 s)


class Stack:
    """PostgreSQL, moto's S3 and the service under gunicorn, plus one account to call it with."""

    def __init__(self, base_dir):
        self.postgres = PostgresServer(base_dir)
        self.s3 = MotoServer()
        self.gunicorn = None
        self.account = None

    def start(self, work_dir):
        self.postgres.start()
        database_url = self.postgres.create_database("outages")
        self.s3.start()
        self.s3.create_bucket(BUCKET)
        env = {"DATABASE_URL": database_url, "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": self.s3.endpoint_url,
               "WEB_CONCURRENCY": 1, "WEB_THREADS": 1, "WORKSPACES_ROOT": os.path.join(work_dir, "workspaces")}
        self.gunicorn = GunicornServer(env, work_dir=work_dir)
        self.gunicorn.start()
        self.account = self.gunicorn.flask("create-user", "alice", "--org", "acme")

    def close(self):
        for server in (self.gunicorn, self.s3, self.postgres):
            if server is not None:
                server.close()

    def bring_everything_up(self):
        """Undo whatever a test left stopped or frozen; an operator's bucket outlives S3 restarts."""
        self.s3.resume()
        if not self.s3.is_running():
            self.s3.start()
        if BUCKET not in [bucket["Name"] for bucket in self.s3.s3_client().list_buckets()["Buckets"]]:
            self.s3.create_bucket(BUCKET)
        if not self.postgres.is_running():
            self.postgres.start()

    # -- calling the service --

    @property
    def headers(self):
        return {"Coder-Session-Token": self.account["token"]}

    def upload(self, data, content_type="image/png"):
        return requests.post(
            f"{self.gunicorn.url}/api/v2/chats/files",
            params={"organization": self.account["organization_id"]},
            data=data,
            headers={**self.headers, "Content-Type": content_type},
            timeout=HANG_GUARD,
        )

    def download(self, file_id):
        return requests.get(f"{self.gunicorn.url}/api/v2/chats/files/{file_id}", headers=self.headers,
                            timeout=HANG_GUARD)

    def readyz(self):
        return requests.get(f"{self.gunicorn.url}/readyz", timeout=HANG_GUARD)

    # -- looking behind its back --

    def row_count(self):
        connection = self.postgres.connect("outages", connect_timeout=5)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'SELECT count(*) FROM "{models.ChatFile._meta.table_name}"')
                return cursor.fetchone()[0]
        finally:
            connection.close()

    def object_count(self):
        return self.s3.s3_client().list_objects_v2(Bucket=BUCKET).get("KeyCount", 0)


@pytest.fixture(scope="module")
def stack():
    available, reason = PostgresServer.available()
    if not available:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    base_dir = tempfile.mkdtemp(prefix="tests-outages-")
    os.chmod(base_dir, 0o755)  # the postgres user must reach its cluster inside
    stack = Stack(base_dir)
    try:
        stack.start(base_dir)
        yield stack
    finally:
        stack.close()
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture
def live(stack):
    stack.bring_everything_up()
    worker_pids = stack.gunicorn.worker_pids()
    yield stack
    stack.bring_everything_up()
    assert stack.gunicorn.worker_pids() == worker_pids, "the worker was replaced: recovery needed a restart"


def assert_json_error(response, status, message=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    if message is not None:
        assert response.json()["message"] == message


def assert_downloads(stack, file_id, data):
    response = stack.download(file_id)
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def test_s3_stopped_answers_json_500_and_recovers_without_restart(live):
    data = make_image("image/png", 60, 40)
    before = live.upload(data)
    assert before.status_code == 201, before.text
    rows = live.row_count()

    live.s3.stop()

    assert_json_error(live.upload(data), 500, "Failed to save chat file.")
    assert live.row_count() == rows
    assert_json_error(live.download(before.json()["id"]), 500, "Failed to read chat file.")
    ready = live.readyz()
    assert_json_error(ready, 503)
    assert "storage" in ready.json()["message"] and "database" not in ready.json()["message"]

    live.s3.start()
    live.s3.create_bucket(BUCKET)  # moto forgets buckets; a real bucket would still be there

    assert live.readyz().status_code == 200
    after = live.upload(data)
    assert after.status_code == 201, after.text
    assert_downloads(live, after.json()["id"], data)
    assert live.row_count() == rows + 1


def test_s3_hung_answers_json_500_instead_of_hanging(live):
    data = make_image("image/jpeg", 60, 40)
    rows = live.row_count()

    live.s3.pause()  # accepts connections, never answers: only the client's timeouts end the wait

    assert_json_error(live.upload(data), 500, "Failed to save chat file.")
    ready = live.readyz()
    assert_json_error(ready, 503)
    assert "storage" in ready.json()["message"]

    live.s3.resume()

    assert live.row_count() == rows
    after = live.upload(data)
    assert after.status_code == 201, after.text
    assert_downloads(live, after.json()["id"], data)


def test_postgres_restart_costs_no_request(live):
    data = make_image("image/webp", 60, 40)
    before = live.upload(data)  # leaves the worker's pooled connections to the old server behind
    assert before.status_code == 201, before.text

    live.postgres.restart()

    # The pool must notice its dead connections itself: the very first request succeeds.
    assert_downloads(live, before.json()["id"], data)
    assert live.upload(data).status_code == 201


def test_postgres_stopped_answers_json_500_and_recovers_without_restart(live):
    data = make_image("image/gif", 60, 40)
    before = live.upload(data)
    assert before.status_code == 201, before.text
    objects = live.object_count()

    live.postgres.stop()

    assert_json_error(live.upload(data), 500, "Failed to save chat file.")
    assert live.object_count() == objects
    assert_json_error(live.download(before.json()["id"]), 500, "Failed to read chat file.")
    ready = live.readyz()
    assert_json_error(ready, 503)
    assert "database" in ready.json()["message"] and "storage" not in ready.json()["message"]

    live.postgres.start()

    assert live.readyz().status_code == 200
    assert_downloads(live, before.json()["id"], data)  # what was stored before the outage is still there
    after = live.upload(data)
    assert after.status_code == 201, after.text
    assert_downloads(live, after.json()["id"], data)


def send_half_an_upload_and_hang_up(stack, chunked):
    """Headers announcing 1 MiB, half of it, then close: a client that went away mid-upload."""
    size = 1024 * 1024
    path = f"/api/v2/chats/files?organization={stack.account['organization_id']}"
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCoder-Session-Token: {stack.account['token']}\r\n"
        f"Content-Type: image/png\r\n{framing}\r\n\r\n"
    ).encode()
    half = make_image("image/png", 16, 16)[:64].ljust(size // 2, b"\0")
    body = b"%x\r\n%s\r\n" % (len(half), half) if chunked else half
    with socket.create_connection(("127.0.0.1", stack.gunicorn.port), timeout=HANG_GUARD) as sock:
        sock.sendall(head + body)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_hanging_up_mid_upload_leaves_no_row_and_no_object(live, chunked):
    rows, objects = live.row_count(), live.object_count()

    send_half_an_upload_and_hang_up(live, chunked)

    assert (live.row_count(), live.object_count()) == (rows, objects)
    # One worker thread: this answer comes only after the abandoned upload has been dealt with.
    assert live.readyz().status_code == 200
    assert (live.row_count(), live.object_count()) == (rows, objects)

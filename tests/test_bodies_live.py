"""Bodies on the wire, against the real gunicorn: early answers, stalls, malformed chunks, logs.

Raw sockets, because the cases are what well-behaved clients never do: write
a whole body before reading, stop sending, send broken chunks or request
lines. The server's BODY_READ_TIMEOUT is 2 s here so a stall ends quickly.
"""

import json
import os
import socket
import sqlite3
import threading

import pytest
import requests
from gunicorn.http.unreader import SocketUnreader

from harness.imaging import make_image
from harness.live import GunicornServer, sqlite_settings
from harness.servers import LOCALHOST
from tests.conftest import make_app
from web import bodies

MiB = 1024 * 1024
LIMIT = 10 * MiB
WAIT = 60  # a hang guard for every socket read, not a timing claim
UPLOAD_PATH = "/api/v2/chats/files"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("bodies")
    settings = sqlite_settings(root, BODY_READ_TIMEOUT=2, WEB_CONCURRENCY=1, WEB_THREADS=16)
    server = GunicornServer(settings, work_dir=str(root))
    server.start()
    server.root = root
    server.alice = server.flask("create-user", "alice", "--org", "acme")
    server.bob = server.flask("create-user", "bob", "--org", "globex")
    yield server
    server.stop()


def upload_head(live, length=None, token=None, organization=None, extra=()):
    token = live.alice["token"] if token is None else token
    organization = organization or live.alice["organization_id"]
    lines = [f"POST {UPLOAD_PATH}?organization={organization} HTTP/1.1", "Host: localhost", "Content-Type: image/png"]
    if token:
        lines.append(f"Coder-Session-Token: {token}")
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(live):
    return socket.create_connection((LOCALHOST, live.port), timeout=WAIT)


def read_response(sock):
    """(status, headers, body) of the next response; 1xx responses are returned like any other."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def write_then_read(live, head, body):
    """Write the request and its whole body before reading anything, like a browser or curl may."""
    with connect(live) as sock:
        sock.sendall(head + body)  # a reset here, or below, is the failure this guards against
        return read_response(sock)


def assert_json_error(response, status, message=None):
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"] == "application/json"
    if message:
        assert json.loads(body)["message"] == message


def stored_objects(live):
    objects = live.root / "objects"
    return [name for _, _, names in os.walk(objects) for name in names] if objects.exists() else []


def chat_file_rows(live):
    with sqlite3.connect(live.root / "db.sqlite") as connection:
        return connection.execute("SELECT count(*) FROM chatfile").fetchone()[0]


# --- early answers reach a client that writes the whole body first ---------------


@pytest.mark.parametrize("size", [12 * MiB, 40 * MiB], ids=["12MiB", "40MiB"])
def test_over_limit_body_written_before_reading_gets_the_json_413(live, size):
    response = write_then_read(live, upload_head(live, size), b"\0" * size)
    assert_json_error(response, 413, "File too large.")


@pytest.mark.parametrize("size", [12 * MiB, 40 * MiB], ids=["12MiB", "40MiB"])
def test_unauthenticated_large_body_written_before_reading_gets_the_json_401(live, size):
    assert_json_error(write_then_read(live, upload_head(live, size, token=""), b"\0" * size), 401)


@pytest.mark.parametrize("size", [12 * MiB, 40 * MiB], ids=["12MiB", "40MiB"])
def test_foreign_organization_large_body_written_before_reading_gets_the_json_403(live, size):
    head = upload_head(live, size, organization=live.bob["organization_id"])
    assert_json_error(write_then_read(live, head, b"\0" * size), 403)


def test_chunked_body_over_the_limit_written_before_reading_gets_the_json_413(live):
    chunk = b"\0" * MiB
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 12 + b"0\r\n\r\n"
    assert_json_error(write_then_read(live, upload_head(live), body), 413, "File too large.")


def test_connection_stays_usable_after_a_drained_early_answer(live):
    with connect(live) as sock:
        sock.sendall(upload_head(live, MiB, token="") + b"\0" * MiB)
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (401, "keep-alive")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (200, "keep-alive")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(sock)[0] == 200  # it did keep alive


def assert_closes(sock):
    """The server ends the connection (a reset counts: the answer was read already)."""
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


EARLY_ANSWERS_THAT_CLOSE = {
    # The client waits for a "100 Continue" that never comes: the body will not arrive.
    "401 after Expect": (lambda live: upload_head(live, MiB, token="", extra=["Expect: 100-continue"]), 401),
    "403 after Expect": (lambda live: upload_head(live, MiB, organization=live.bob["organization_id"],
                                                  extra=["Expect: 100-continue"]), 403),
    "413 after Expect": (lambda live: upload_head(live, 12 * MiB, extra=["Expect: 100-continue"]), 413),
    # More than the drain reads (DRAIN_FACTOR x the limit): the rest is never read.
    "401 over the drain": (lambda live: upload_head(live, 50 * MiB, token=""), 401),
    "413 over the drain": (lambda live: upload_head(live, 50 * MiB), 413),
    # Chunked: how much is left is unknown when the answer starts.
    "401 chunked": (lambda live: upload_head(live, token=""), 401),
}


@pytest.mark.parametrize("head, status", EARLY_ANSWERS_THAT_CLOSE.values(), ids=EARLY_ANSWERS_THAT_CLOSE.keys())
def test_an_early_answer_after_which_the_connection_closes_says_connection_close(live, head, status):
    with connect(live) as sock:
        sock.sendall(head(live))
        got, headers, body = read_response(sock)
        assert got == status, body
        assert headers["connection"] == "close"
        assert "message" in json.loads(body)
        assert_closes(sock)


def test_a_stalled_body_answer_says_connection_close(live):
    with connect(live) as sock:
        sock.sendall(upload_head(live, 1000) + b"\x89PNG\r\n\x1a\n")  # then nothing more
        got, headers, _ = read_response(sock)
        assert (got, headers["connection"]) == (408, "close")
        assert_closes(sock)


def test_an_early_413_whose_body_is_drained_whole_keeps_alive(live):
    with connect(live) as sock:
        sock.sendall(upload_head(live, 12 * MiB) + b"\0" * (12 * MiB))
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (413, "keep-alive")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_expect_100_continue_gets_the_413_without_sending_the_body(live):
    with connect(live) as sock:
        sock.sendall(upload_head(live, 12 * MiB, extra=["Expect: 100-continue"]))
        assert_json_error(read_response(sock), 413, "File too large.")


def test_expect_100_continue_gets_the_401_without_sending_the_body_and_the_connection_closes(live):
    with connect(live) as sock:
        sock.sendall(upload_head(live, MiB, token="", extra=["Expect: 100-continue"]))
        response = read_response(sock)
        assert_json_error(response, 401)
        assert response[1]["connection"] == "close"  # and says so
        assert sock.recv(1) == b""  # closed: where the next request would start (after a body or not) is unknown


def test_expect_100_continue_is_answered_when_the_body_is_wanted(live):
    image = make_image("image/png", 40, 30)
    with connect(live) as sock:
        sock.sendall(upload_head(live, len(image), extra=["Expect: 100-continue"]))
        assert read_response(sock)[0] == 100
        sock.sendall(image)
        status, _, body = read_response(sock)
    assert status == 201, body


# --- stalled and malformed bodies -------------------------------------------------


def test_stalled_body_ends_with_408_and_leaves_nothing(live):
    objects, rows = stored_objects(live), chat_file_rows(live)
    with connect(live) as sock:
        sock.sendall(upload_head(live, 1000) + b"\x89PNG\r\n\x1a\n")  # then nothing more
        assert_json_error(read_response(sock), 408, "Request body timed out.")
    assert stored_objects(live) == objects
    assert chat_file_rows(live) == rows


def test_stalled_json_body_ends_with_408(live):
    head = (f"POST /api/v2/chats HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Coder-Session-Token: {live.alice['token']}\r\nContent-Length: 100\r\n\r\n").encode()
    with connect(live) as sock:
        sock.sendall(head + b'{"title": ')
        assert_json_error(read_response(sock), 408, "Request body timed out.")


MALFORMED_CHUNKS = {
    "size not hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "missing terminator": b"3\r\nabcXY0\r\n\r\n",
    "bad extension": b"3;\x01\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
def test_malformed_chunked_upload_is_400_and_leaves_nothing(live, body):
    objects, rows = stored_objects(live), chat_file_rows(live)
    head = upload_head(live)
    assert_json_error(write_then_read(live, head, b"3\r\n\x89PN\r\n" + body), 400, "Malformed request body.")
    assert stored_objects(live) == objects
    assert chat_file_rows(live) == rows


@pytest.mark.parametrize("body", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
def test_malformed_chunked_json_is_400(live, body):
    head = (f"POST /api/v2/chats HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Coder-Session-Token: {live.alice['token']}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    assert_json_error(write_then_read(live, head, body), 400, "Malformed request body.")


def test_json_body_declared_over_64_kib_is_413_before_it_is_sent(live):
    head = (f"POST /api/v2/chats HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Coder-Session-Token: {live.alice['token']}\r\nContent-Length: {300 * MiB}\r\n\r\n").encode()
    with connect(live) as sock:
        sock.sendall(head)
        assert_json_error(read_response(sock), 413, "Request body too large.")


def test_chunked_json_body_over_64_kib_is_413(live):
    document = json.dumps({"title": "x" * 70_000}).encode()
    chunks = (document[i : i + 4096] for i in range(0, len(document), 4096))
    response = requests.post(f"{live.url}/api/v2/chats", data=chunks, timeout=WAIT,
                             headers={"Coder-Session-Token": live.alice["token"], "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["message"] == "Request body too large."


# --- slow clients do not take the service -------------------------------------------


def test_eight_trickling_uploads_leave_a_normal_upload_unaffected(live):
    stop = threading.Event()
    sockets = [connect(live) for _ in range(8)]

    def trickle(sock):
        # A byte twice per BODY_READ_TIMEOUT: never stalled, never done. Stops with the test.
        sock.sendall(upload_head(live, LIMIT))
        while not stop.wait(0.5):
            sock.sendall(b"\0")

    threads = [threading.Thread(target=trickle, args=(sock,), daemon=True) for sock in sockets]
    for thread in threads:
        thread.start()
    try:
        stop.wait(1)  # the trickles are on the wire
        image = make_image("image/png", 600, 400)
        response = requests.post(f"{live.url}{UPLOAD_PATH}", params={"organization": live.alice["organization_id"]},
                                 data=image, timeout=WAIT,
                                 headers={"Coder-Session-Token": live.alice["token"], "Content-Type": "image/png"})
        assert response.status_code == 201, response.text
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        for sock in sockets:
            sock.close()


# --- gunicorn's own warnings hold no secrets ----------------------------------------


def test_gunicorn_warnings_about_bad_requests_hold_no_token_cookie_or_query(live):
    token = live.alice["token"]
    secret = "query-secret-4711"
    bad_requests = [
        f"GET /api/v2/chats?coder_session_token={token}&q={secret}\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /api/v2/chats?coder_session_token={token}&q={secret}\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /api/v2/chats?q={secret} HTTP/9.9\r\nHost: x\r\n\r\n",
        f"G\x7fT /api/v2/chats?q={secret} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nCookie coder_session_token={token}\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\ncoder_session_token={token}: x\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nX{token}(: x\r\n\r\n",
    ]
    for raw in bad_requests:
        with connect(live) as sock:
            sock.sendall(raw.encode("latin-1"))
            assert read_response(sock)[0] == 400
    with open(live.log_path, encoding="utf-8", errors="replace") as log:
        text = log.read()
    assert text.count("Invalid request from ip=") >= len(bad_requests)  # the warnings were written
    secret_part = token.split("-", 1)[1]
    assert secret_part not in text
    assert secret not in text


# --- reading a body ---------------------------------------------------------------


def test_gunicorn_reads_a_body_ahead_no_further_than_one_read_of_the_app(monkeypatch, tmp_path):
    """gunicorn's reader copies all it holds ahead on every read the app makes: more read-ahead than one
    read of the app costs CPU for every byte of an upload (the benchmark's upload overhead)."""
    monkeypatch.setattr(SocketUnreader, "max_body_chunk", 1024 * 1024)  # gunicorn's own
    make_app(f"sqlite:///{tmp_path}/app.db", {"LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}, tmp_path)
    assert SocketUnreader.max_body_chunk <= bodies.READ_CHUNK


@pytest.mark.parametrize("environ, length", [
    ({}, 0),  # no body (PEP 3333: CONTENT_LENGTH absent or empty)
    ({"CONTENT_LENGTH": ""}, 0),
    ({"CONTENT_LENGTH": "12"}, 12),
    ({"CONTENT_LENGTH": "-5"}, 0),
    ({"CONTENT_LENGTH": "abc"}, 0),
    ({"wsgi.input_terminated": True}, None),  # chunked: read until the server's stream ends
    ({"CONTENT_LENGTH": "", "wsgi.input_terminated": True}, None),
    ({"CONTENT_LENGTH": "abc", "wsgi.input_terminated": True}, None),
])
def test_a_bodys_declared_length(environ, length):
    """A chunked body is never taken for an empty one, and a malformed length never for a body."""
    assert bodies._declared_length(environ) == length

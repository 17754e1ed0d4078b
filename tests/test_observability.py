"""Request logs, metrics, the watch-socket registry, and the same under gunicorn.

In-process tests use the SQLite/local app (none of this depends on the
backends) and read the JSON lines the app writes to stdout. The live tests
share one gunicorn server with two workers, PROXY_HOPS=1 and an operator-set
PROMETHEUS_MULTIPROC_DIR.
"""

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import click
import pytest
import requests
import websocket
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

import models
import storage.local
from app import create_app
from config import ConfigError
from harness.imaging import make_image
from harness.live import GunicornServer, sqlite_settings
from harness.servers import LOCALHOST
from ops import jsonlog, observability, shutdown
from storage import StorageError
from tests.conftest import make_app

DOWNLOAD_ROUTE = "/api/v2/chats/files/<file_id>"
UPLOAD_ROUTE = "/api/v2/chats/files"
WAIT_SECONDS = 10  # upper bound for polls; they end as soon as the condition holds


@pytest.fixture
def app(sqlite_app):
    """conftest's user/auth/client fixtures on the SQLite app only."""
    return sqlite_app


@pytest.fixture
def app_with(tmp_path):
    """Build an app with extra settings."""

    def build(**overrides):
        return make_app(f"sqlite:///{tmp_path}/other.db", {"LOCAL_STORAGE_ROOT": str(tmp_path / "o")}, tmp_path,
                        **overrides)

    yield build
    models.close_all_connections()


def log_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def request_lines(text, request_id=None):
    lines = [line for line in log_lines(text) if line["logger"] == "request"]
    return [line for line in lines if request_id is None or line["request_id"] == request_id]


def only_request_line(capsys, request_id):
    (line,) = request_lines(capsys.readouterr().out, request_id)
    return line


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rejection_counts():
    return {reason: sample("chatfiles_upload_rejections_total", reason=reason)
            for reason in observability.REJECTION_REASONS}


def upload(client, token, data, organization, content_type="image/png", **kwargs):
    headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
    if token:
        headers["Coder-Session-Token"] = token
    return client.post(UPLOAD_ROUTE, query_string={"organization": organization}, data=data, headers=headers,
                       buffered=True, **kwargs)


def uploaded_file(client, user, data):
    response = upload(client, user["token"], data, user["organization_id"])
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json["id"]


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


# --- the request line ---------------------------------------------------------


def test_upload_is_one_json_line_with_every_field(client, user, capsys):
    data = make_image("image/png", 40, 30)
    capsys.readouterr()
    response = upload(client, user["token"], data, user["organization_id"], headers={"X-Request-ID": "req-1.A_b"})
    assert response.status_code == 201
    assert response.headers["X-Request-ID"] == "req-1.A_b"
    line = only_request_line(capsys, "req-1.A_b")
    assert line["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert {key: line[key] for key in ("method", "route", "path", "status", "user_id", "bytes_in", "remote_addr")} == {
        "method": "POST",
        "route": UPLOAD_ROUTE,
        "path": UPLOAD_ROUTE,
        "status": 201,
        "user_id": user["user_id"],
        "bytes_in": len(data),
        "remote_addr": "127.0.0.1",
    }
    assert line["bytes_out"] == len(response.data)
    assert line["duration_ms"] >= 0


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("abc-DEF_0.9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        (None, False),
    ],
)
def test_request_id_is_the_clients_only_when_sane(client, capsys, sent, kept):
    headers = {} if sent is None else {"X-Request-ID": sent}
    response = client.get("/healthz", headers=headers, buffered=True)
    echoed = response.headers["X-Request-ID"]
    if kept:
        assert echoed == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    assert only_request_line(capsys, echoed)["status"] == 200


def test_route_is_the_url_rule_and_nothing_secret_is_logged(client, user, capsys):
    file_id = uploaded_file(client, user, make_image())
    client.set_cookie("coder_session_token", user["token"])
    capsys.readouterr()
    response = client.get(f"/api/v2/chats/files/{file_id}", query_string={"coder_session_token": user["token"]},
                          headers={"X-Request-ID": "secret-check"}, buffered=True)
    assert response.status_code == 200
    out = capsys.readouterr().out
    line = request_lines(out, "secret-check")[0]
    assert line["route"] == DOWNLOAD_ROUTE
    assert line["path"] == f"/api/v2/chats/files/{file_id}"
    secret = user["token"].partition("-")[2]
    assert secret not in out
    assert "coder_session_token" not in out


def test_an_upstream_alias_is_logged_by_its_own_rule_and_counted_by_the_same_endpoint(client, user, capsys):
    """web/aliases.py: the route label is the alias's rule (a template, never an id); what observability
    keys on the endpoint (a download's bytes out) holds for the alias as for its /api/v2 rule."""
    data = make_image()
    file_id = uploaded_file(client, user, data)
    capsys.readouterr()
    served_before = sample("chatfiles_download_bytes_total")
    response = client.get(f"/api/experimental/chats/files/{file_id}", headers={
        "Coder-Session-Token": user["token"], "X-Request-ID": "alias-check"}, buffered=True)
    assert response.status_code == 200
    line = request_lines(capsys.readouterr().out, "alias-check")[0]
    assert (line["route"], line["bytes_out"]) == ("/api/experimental/chats/files/<file_id>", len(data))
    assert sample("chatfiles_download_bytes_total") - served_before == len(data)


def test_unmatched_path_is_logged_with_no_route(client, capsys):
    response = client.get("/no/such/thing", headers={"X-Request-ID": "lost"}, buffered=True)
    assert response.status_code == 404
    line = only_request_line(capsys, "lost")
    assert (line["route"], line["path"], line["status"], line["user_id"]) == (None, "/no/such/thing", 404, None)


def test_download_counts_bytes_sent_and_head_and_304_send_none(client, user, capsys):
    data = make_image("image/png", 64, 48)
    file_id = uploaded_file(client, user, data)
    url = f"/api/v2/chats/files/{file_id}"
    auth = {"Coder-Session-Token": user["token"]}
    served_before = sample("chatfiles_download_bytes_total")

    get = client.get(url, headers={**auth, "X-Request-ID": "get"}, buffered=True)
    head = client.head(url, headers={**auth, "X-Request-ID": "head"}, buffered=True)
    cached = client.get(url, headers={**auth, "X-Request-ID": "cached", "If-None-Match": get.headers["ETag"]},
                        buffered=True)

    assert (get.status_code, head.status_code, cached.status_code) == (200, 200, 304)
    out = capsys.readouterr().out
    assert request_lines(out, "get")[0]["bytes_out"] == len(data)
    assert request_lines(out, "head")[0]["bytes_out"] == 0
    assert request_lines(out, "cached")[0]["bytes_out"] == 0
    assert sample("chatfiles_download_bytes_total") - served_before == len(data)


def test_download_cut_short_counts_only_what_the_server_took(app, user, monkeypatch, capsys):
    monkeypatch.setattr(storage.local, "CHUNK_SIZE", 100)
    client = app.test_client()
    data = make_image("image/png", 64, 48)
    assert len(data) > 300
    file_id = uploaded_file(client, user, data)
    served_before = sample("chatfiles_download_bytes_total")
    environ = EnvironBuilder(path=f"/api/v2/chats/files/{file_id}", headers={
        "Coder-Session-Token": user["token"], "X-Request-ID": "cut"}).get_environ()

    body = app(environ, lambda status, headers, exc_info=None: None)
    next(body)  # written by the server...
    next(body)  # ...which asks for more, then its client goes away
    body.close()

    line = only_request_line(capsys, "cut")
    assert (line["bytes_out"], line["aborted"]) == (100, True)
    assert sample("chatfiles_download_bytes_total") - served_before == 100


def test_other_records_in_a_request_carry_its_id(client, user, monkeypatch, capsys):
    def failing_put(*args, **kwargs):
        raise StorageError("bucket on fire")

    monkeypatch.setattr(type(client.application.extensions["storage"]), "put", failing_put)
    response = upload(client, user["token"], make_image(), user["organization_id"], headers={"X-Request-ID": "boom"})
    assert response.status_code == 500
    lines = [line for line in log_lines(capsys.readouterr().out) if line.get("request_id") == "boom"]
    error = next(line for line in lines if line["logger"] == "attachments.store")
    assert error["level"] == "ERROR"
    assert "bucket on fire" in error["exception"]
    assert [line["logger"] for line in lines][-1] == "request"


def test_records_outside_requests_have_no_request_id(sqlite_app, capsys):
    logging.getLogger("somewhere").warning("disk %s", "full")
    (line,) = log_lines(capsys.readouterr().out)
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "somewhere", "disk full")
    assert "request_id" not in line


def test_admin_commands_log_to_stderr_so_json_output_stays_clean(sqlite_app, capsys):
    with click.Context(click.Command("create-user")):
        logging.getLogger("cli").warning("careful")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert log_lines(captured.err)[0]["message"] == "careful"


def test_log_level_comes_from_config(app_with, tmp_path, capsys):
    try:
        quiet = app_with(LOG_LEVEL="warning")
        quiet.test_client().get("/healthz", buffered=True)
        assert request_lines(capsys.readouterr().out) == []
        with pytest.raises(ConfigError, match="LOG_LEVEL"):
            create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/q.db", "LOG_LEVEL": "chatty"})
    finally:
        jsonlog.configure("INFO")


@pytest.mark.parametrize("hops, expected", [(0, "10.0.0.1"), (1, "203.0.113.7")])
def test_remote_addr_is_the_forwarded_client_only_behind_trusted_hops(app_with, capsys, hops, expected):
    client = app_with(PROXY_HOPS=hops).test_client()
    client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "hop"},
               environ_base={"REMOTE_ADDR": "10.0.0.1"}, buffered=True)
    assert only_request_line(capsys, "hop")["remote_addr"] == expected


# --- metrics ------------------------------------------------------------------


def test_metrics_need_no_token_and_label_by_rule_method_and_status(client, user):
    file_id = uploaded_file(client, user, make_image())
    labels = {"method": "GET", "route": DOWNLOAD_ROUTE, "status": "200"}
    before = sample("chatfiles_http_requests_total", **labels)
    client.get(f"/api/v2/chats/files/{file_id}", headers={"Coder-Session-Token": user["token"]}, buffered=True)
    client.open("/healthz", method="BREW", buffered=True)
    client.get(f"/nothing/{uuid.uuid4()}", buffered=True)

    response = client.get("/metrics", buffered=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}
    requests_seen = {tuple(sorted(s.labels.items())) for s in families["chatfiles_http_requests"].samples}
    assert tuple(sorted({**labels}.items())) in requests_seen
    assert (("method", "other"), ("route", "<unmatched>"), ("status", "405")) in requests_seen
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", dict(seen)["route"]) for seen in requests_seen)  # no ids
    assert sample("chatfiles_http_requests_total", **labels) - before == 1
    assert sample("chatfiles_http_request_duration_seconds_count", **labels) >= 1
    for name in ("chatfiles_upload_bytes", "chatfiles_download_bytes", "chatfiles_upload_rejections",
                 "chatfiles_watch_sockets_open", "chatfiles_http_request_duration_seconds"):
        assert name in families


def test_an_upload_adds_the_cpu_time_of_its_image_work(client, user):
    before = sample("chatfiles_upload_image_cpu_seconds_total")
    uploaded_file(client, user, make_image("image/png", 600, 400))
    assert sample("chatfiles_upload_image_cpu_seconds_total") > before


def test_accepted_upload_adds_its_size(client, user):
    data = make_image("image/jpeg", 50, 40)
    before = sample("chatfiles_upload_bytes_total")
    rejected_before = rejection_counts()
    uploaded_file(client, user, data)
    assert sample("chatfiles_upload_bytes_total") - before == len(data)
    assert rejection_counts() == rejected_before


def _reject_storage(client, monkeypatch):
    def failing_put(*args, **kwargs):
        raise StorageError("no")

    monkeypatch.setattr(type(client.application.extensions["storage"]), "put", failing_put)


def _fill_upload_budget(client, monkeypatch):
    import attachments.budget

    monkeypatch.setattr(attachments.budget, "BUDGET_WAIT_SECONDS", 0.05)
    budget = client.application.extensions["upload_budget"]
    holder = budget.reserve(budget.capacity, timeout=1)  # a (pretend) upload holds all of it
    holder.__enter__()
    monkeypatch.setattr(budget, "held_for_test", holder, raising=False)  # kept alive until the test ends


def _one_byte_quota(client, monkeypatch):
    monkeypatch.setitem(client.application.config, "ORG_STORAGE_QUOTA", 1)


REJECTIONS = {
    # reason: (token?, organization, content type, body, setup)
    "unauthenticated": (False, "org", "image/png", make_image(), None),
    "bad_request": (True, "not-a-uuid", "image/png", make_image(), None),
    "not_member": (True, str(uuid.uuid4()), "image/png", make_image(), None),
    "unsupported_type": (True, "org", "text/html", b"hello", None),
    "invalid_text": (True, "org", "text/plain", b"nul\0byte", None),
    "invalid_json": (True, "org", "application/json", b"{nope", None),
    "invalid_pdf": (True, "org", "application/pdf", b"%PDF-1.7\n", None),
    "too_large": (True, "org", "image/png", make_image("image/png", 64, 64),
                  lambda client, monkeypatch: client.application.config.update(MAX_FILE_SIZE=100)),
    "empty": (True, "org", "image/png", b"", None),
    "invalid_image": (True, "org", "image/png", make_image()[:60], None),
    "storage_error": (True, "org", "image/png", make_image(), _reject_storage),
    "busy": (True, "org", "image/png", make_image(), _fill_upload_budget),
    "quota_exceeded": (True, "org", "image/png", make_image(), _one_byte_quota),
}


@pytest.mark.parametrize("reason", sorted(REJECTIONS))
def test_rejected_upload_is_counted_by_reason(client, user, monkeypatch, reason):
    with_token, organization, content_type, body, setup = REJECTIONS[reason]
    if setup:
        setup(client, monkeypatch)
    organization = user["organization_id"] if organization == "org" else organization
    before = rejection_counts()
    uploaded_before = sample("chatfiles_upload_bytes_total")

    response = upload(client, user["token"] if with_token else None, body, organization, content_type)

    assert response.status_code >= 400
    after = rejection_counts()
    assert {name: after[name] - before[name] for name in after if after[name] != before[name]} == {reason: 1}
    assert sample("chatfiles_upload_bytes_total") == uploaded_before


# --- WebSockets -----------------------------------------------------------------


class FakeSocket:
    def __init__(self, fail=False):
        self.closed_with = []
        self.fail = fail
        self.closed = threading.Event()

    def close(self, reason=None, message=None):
        self.closed_with.append((reason, message))
        self.closed.set()
        if self.fail:
            raise OSError("client already gone")


def test_registry_closes_every_socket_once_with_going_away():
    registry = shutdown.SocketRegistry()
    first, broken, last = FakeSocket(), FakeSocket(fail=True), FakeSocket()
    for ws in (first, broken, last):
        assert registry.register(ws)
    registry.unregister(last)

    assert registry.close_all() == 2
    assert registry.close_all() == 0  # worker_exit after SIGTERM: nothing twice
    assert first.closed_with == broken.closed_with == [(1001, "Server shutting down")]
    assert last.closed_with == []


def test_socket_registered_during_shutdown_is_closed_at_once():
    registry = shutdown.SocketRegistry()
    registry.close_all(code=1001, reason="bye")
    late = FakeSocket()
    assert registry.register(late) is False
    assert late.closed_with == [(1001, "bye")]
    assert len(registry) == 0


def test_sigterm_closes_sockets_then_runs_the_previous_handler():
    registry = shutdown.SocketRegistry()
    ws = FakeSocket()
    registry.register(ws)
    previous_ran = threading.Event()
    original = signal.signal(signal.SIGTERM, lambda signum, frame: previous_ran.set())
    try:
        shutdown.close_sockets_on_sigterm(registry)
        os.kill(os.getpid(), signal.SIGTERM)
        assert previous_ran.wait(WAIT_SECONDS)
        assert ws.closed.wait(WAIT_SECONDS)
        for thread in threading.enumerate():
            if thread.name == "close-websockets":
                thread.join(WAIT_SECONDS)  # it logs after closing; not into the next test's output
    finally:
        signal.signal(signal.SIGTERM, original)
    assert ws.closed_with == [(1001, "Server shutting down")]


@contextlib.contextmanager
def serving(app):
    """The app on werkzeug's threaded server on loopback, for a real WebSocket client; stopped after."""
    server = make_server(LOCALHOST, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()


def test_watch_socket_is_counted_and_logged_once_when_it_closes(app, client, auth, user, capsys):
    """The real watch route on werkzeug's server: open in the gauge while the hub holds it, one request
    line (status 101) when it closes, and nothing left registered."""
    Path(user["workspaces_dir"], "proj").mkdir(parents=True)
    chat = client.post("/api/v2/chats", json={"title": "w", "workspace": "proj"}, headers=auth).json
    hub = app.extensions["watch_hub"]
    open_before = sample("chatfiles_watch_sockets_open")
    with serving(app) as server:
        path = f"/api/v2/chats/{chat['id']}/git/watch"
        ws = websocket.create_connection(f"ws://{LOCALHOST}:{server.port}{path}", timeout=WAIT_SECONDS,
                                         header=[f"Coder-Session-Token: {user['token']}", "X-Request-ID: socket-1"])
        assert json.loads(ws.recv())["type"] == "changes"
        assert sample("chatfiles_watch_sockets_open") - open_before == 1
        assert request_lines(capsys.readouterr().out, "socket-1") == []  # not before it closes
        ws.close()
        output = []
        wait_until(lambda: output.append(capsys.readouterr().out) or request_lines("".join(output), "socket-1"),
                   "the socket's request line")
    (line,) = request_lines("".join(output), "socket-1")
    assert (line["status"], line["route"], line["path"]) == (101, "/api/v2/chats/<chat_id>/git/watch", path)
    assert sample("chatfiles_watch_sockets_open") == open_before
    assert hub.open_sockets() == 0


def test_a_watch_whose_handover_fails_is_logged_as_an_ordinary_request(app, client, auth, user, capsys, monkeypatch):
    """The hub refused the socket (no descriptors left): no socket will close to finish the record, so the
    request ends as any other, one line with its 500, and nothing stays counted open."""
    Path(user["workspaces_dir"], "proj").mkdir(parents=True)
    chat = client.post("/api/v2/chats", json={"title": "w", "workspace": "proj"}, headers=auth).json

    def no_more_descriptors(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(app.extensions["watch_hub"], "adopt", no_more_descriptors)
    open_before = sample("chatfiles_watch_sockets_open")
    output = []
    with serving(app) as server:
        path = f"/api/v2/chats/{chat['id']}/git/watch"
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(f"ws://{LOCALHOST}:{server.port}{path}", timeout=WAIT_SECONDS,
                                        header=[f"Coder-Session-Token: {user['token']}", "X-Request-ID: socket-2"])
        wait_until(lambda: output.append(capsys.readouterr().out) or request_lines("".join(output), "socket-2"),
                   "the failed watch's request line")
    (line,) = request_lines("".join(output), "socket-2")
    assert (line["status"], line["route"]) == (500, "/api/v2/chats/<chat_id>/git/watch")
    assert sample("chatfiles_watch_sockets_open") == open_before


# --- under gunicorn -----------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("observability-live")
    metrics_dir = work_dir / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by a previous run")
    server = GunicornServer(sqlite_settings(work_dir, WEB_CONCURRENCY=2, WEB_THREADS=4, PROXY_HOPS=1,
                                            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)), work_dir=str(work_dir))
    server.metrics_dir = str(metrics_dir)
    server.start()
    yield server
    server.stop()


def live_request_line(live, request_id):
    def find():
        with open(live.log_path) as handle:
            return request_lines(handle.read(), request_id)

    return wait_until(find, f"the request line of {request_id}")[0]


def scrape(live):
    with requests.Session() as session:  # a new connection: any worker may answer
        text = session.get(f"{live.url}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_live_logs_stream_bytes_and_forwarded_client(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    auth = {"Coder-Session-Token": account["token"]}
    data = make_image("image/png", 300, 200)
    created = requests.post(f"{live.url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                            data=data, headers={**auth, "Content-Type": "image/png", "X-Request-ID": "live-up"},
                            timeout=10)
    assert created.status_code == 201
    url = f"{live.url}/api/v2/chats/files/{created.json()['id']}"
    got = requests.get(url, headers={**auth, "X-Request-ID": "live-get", "X-Forwarded-For": "198.51.100.9"},
                       timeout=10)
    head = requests.head(url, headers={**auth, "X-Request-ID": "live-head"}, timeout=10)
    assert got.content == data and got.headers["X-Request-ID"] == "live-get"
    assert head.status_code == 200

    uploaded = live_request_line(live, "live-up")
    downloaded = live_request_line(live, "live-get")
    assert (uploaded["bytes_in"], uploaded["user_id"]) == (len(data), account["user_id"])
    assert (downloaded["bytes_out"], downloaded["route"]) == (len(data), DOWNLOAD_ROUTE)
    assert downloaded["remote_addr"] == "198.51.100.9"  # PROXY_HOPS=1
    assert live_request_line(live, "live-head")["bytes_out"] == 0
    with open(live.log_path) as handle:
        lines = [line for line in handle if line.startswith("{")]
    assert any(json.loads(line)["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own lines are JSON too


def test_live_metrics_add_up_every_worker(live):
    assert not os.path.exists(os.path.join(live.metrics_dir, "counter_999999.db"))  # a stale file is wiped at start
    pids = set(live.worker_pids())
    assert len(pids) == 2
    files = os.listdir(live.metrics_dir)
    assert pids <= {int(name.rsplit("_", 1)[1].split(".")[0]) for name in files}

    key = ("chatfiles_http_requests_total", (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))
    before = scrape(live).get(key, 0)
    for _ in range(6):
        with requests.Session() as session:
            assert session.get(f"{live.url}/not-here", timeout=10).status_code == 404
    # However the requests and scrapes were spread over the workers, each scrape sees them all.
    for _ in range(3):
        assert scrape(live)[key] - before == 6


def test_live_dead_worker_keeps_its_counts_but_not_its_gauge(live):
    key = ("chatfiles_http_requests_total", (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))
    for _ in range(4):
        with requests.Session() as session:
            session.get(f"{live.url}/gone", timeout=10)
    before = scrape(live)[key]
    victim = live.worker_pids()[0]
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: victim not in live.worker_pids() and len(live.worker_pids()) == 2, "a replacement worker")
    gauge_file = os.path.join(live.metrics_dir, f"gauge_livesum_{victim}.db")
    wait_until(lambda: not os.path.exists(gauge_file), "child_exit to drop the dead worker's gauge")
    assert os.path.exists(os.path.join(live.metrics_dir, f"counter_{victim}.db"))
    wait_until(lambda: live._answers(), "the server to answer")
    assert scrape(live)[key] == before
    assert scrape(live)[("chatfiles_watch_sockets_open", ())] == 0


def test_line_timestamps_are_each_records_own_second():
    """The formatted second is reused between lines: a line in another second must never get it."""
    # A second, the same second again, the next one, an earlier one (another thread's older record), the epoch.
    for created in (1_764_630_000.25, 1_764_630_000.75, 1_764_630_001.0, 1_764_629_999.5, 0.0):
        second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(created)))
        assert jsonlog._timestamp(created) == f"{second}.{round(created % 1 * 1000):03d}Z"


def test_scrub_removes_query_strings_cookies_and_tokens_from_gunicorn_warnings():
    token = "0123456789-abcdefghijklmnopqrstuv"
    line = (f"Invalid request from ip=1.2.3.4: Invalid HTTP request line: "
            f"'GET /x?coder_session_token={token}&a=b\\x7f HTTP/1.1' Cookie: s={token}")
    scrubbed = jsonlog.scrub(line)
    assert token not in scrubbed and "a=b" not in scrubbed
    assert scrubbed.startswith("Invalid request from ip=1.2.3.4: Invalid HTTP request line: 'GET /x?[redacted] HTTP/1.1'")


def test_gunicorn_builds_no_access_log_atoms_with_the_projects_settings(monkeypatch, tmp_path):
    from gunicorn.app.base import Application

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # else the file makes (and exports) its own

    class ProjectSettings(Application):  # gunicorn.conf.py read as gunicorn reads it
        def init(self, parser, opts, args):
            pass

        def load_config(self):
            self.load_config_from_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "gunicorn.conf.py"))

        def load(self):
            pass

    monkeypatch.setattr(sys, "argv", ["gunicorn"])
    settings = ProjectSettings().cfg
    logger = settings.logger_class(settings)
    monkeypatch.setattr(logger, "atoms", lambda *args: pytest.fail("access-log atoms built for a dropped line"))
    logger.access(None, None, {}, None)  # what the worker calls after every request
    assert not logger.access_log_enabled

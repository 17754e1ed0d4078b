"""The service as an operator runs it: gunicorn, the Procfile's config, real HTTP."""

import concurrent.futures
import contextlib
import hashlib
import json
import os
import signal
import time

import psycopg2
import pytest
import requests

from harness.imaging import make_image
from harness.live import GunicornServer, archive_and_wait_for_close, backend_settings, sqlite_settings
from harness.servers import raw_exchange
from harness.wsclient import WatchClient
from tests.concurrency import run_at_once, wait_for


@pytest.fixture(params=["sqlite-local", "postgres-s3"])
def live(request, tmp_path):
    server = GunicornServer({**backend_settings(request, tmp_path), "WEB_CONCURRENCY": 3, "WEB_THREADS": 8},
                            work_dir=str(tmp_path))
    server.start()
    yield server
    server.stop()


def test_readme_flow_upload_and_download_over_http(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    data = make_image("image/png", 300, 200)
    response = requests.post(
        f"{live.url}/api/v2/chats/files",
        params={"organization": account["organization_id"]},
        data=data,
        headers={**headers, "Content-Type": "image/png", "Content-Disposition": 'attachment; filename="a.png"'},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    download = requests.get(f"{live.url}/api/v2/chats/files/{response.json()['id']}", headers=headers, timeout=10)
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def test_a_deleted_file_answers_404_on_every_instance_at_once(live, tmp_path):
    """Two instances (3 and 2 workers) on one database and one store: a delete on one is seen by all."""
    (tmp_path / "second").mkdir()
    second = GunicornServer({**live.env, "WEB_CONCURRENCY": 2, "WEB_THREADS": 4}, work_dir=str(tmp_path / "second"))
    second.start()
    try:
        account = live.flask("create-user", "alice", "--org", "acme")
        headers = {"Coder-Session-Token": account["token"]}
        response = requests.post(f"{live.url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                                 data=make_image("image/png", 300, 200),
                                 headers={**headers, "Content-Type": "image/png"}, timeout=10)
        file_url = f"/api/v2/chats/files/{response.json()['id']}"
        paths = [file_url, f"{file_url}/thumbnail", f"{file_url}/preview", f"{file_url}/info"]
        # Several requests per path and instance, so every worker has served the file before.
        for server in (live, second):
            for path in paths * 3:
                assert requests.get(f"{server.url}{path}", headers=headers, timeout=10).status_code == 200, path

        assert requests.delete(f"{second.url}{file_url}", headers=headers, timeout=10).status_code == 204

        for server in (live, second):
            for path in paths * 3:
                gone = requests.get(f"{server.url}{path}", headers=headers, timeout=10)
                assert (gone.status_code, gone.json()["message"]) == (404, "File not found."), path
    finally:
        second.stop()


def test_chunked_upload_over_http(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    data = make_image("image/jpeg", 300, 200)
    chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))  # a generator: requests sends it chunked
    response = requests.post(
        f"{live.url}/api/v2/chats/files",
        params={"organization": account["organization_id"]},
        data=chunks,
        headers={"Coder-Session-Token": account["token"], "Content-Type": "image/jpeg"},
        timeout=10,
    )
    assert response.status_code == 201, response.text


def test_concurrent_archives_across_workers_give_one_204(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    chat = requests.post(f"{live.url}/api/v2/chats", json={"title": "race"}, headers=headers, timeout=10).json()

    def archive():
        with requests.Session() as session:  # one connection each, spread over the workers
            return session.post(f"{live.url}/api/v2/chats/{chat['id']}/archive", headers=headers, timeout=30).status_code

    assert sorted(run_at_once(archive, 10)) == [204] + [400] * 9


@pytest.fixture(params=["sqlite-local", "postgres-s3"])
def procfile_live(request, tmp_path):
    """The service with the Procfile's own worker and thread counts."""
    # One user opens fifty sockets below: above the default per-user limit on purpose.
    server = GunicornServer({**backend_settings(request, tmp_path), "WATCH_MAX_PER_USER": "64"}, work_dir=str(tmp_path))
    server.start()
    yield server
    server.stop()


def test_fifty_watch_sockets_while_uploads_and_downloads_answer_then_archive_closes_them(procfile_live):
    live = procfile_live
    account, headers, chat, sockets = watched_chat(live, live, 50)
    try:
        metrics = requests.get(f"{live.url}/metrics", timeout=10).text
        assert "chatfiles_watch_sockets_open 50.0" in metrics

        assert_round_trip(live, account, headers, "image/webp", make_image("image/webp", 200, 100))

        # Archived through one worker; every socket, on whichever worker, closes.
        archive_and_wait_for_close(live.url, chat, headers, sockets)
    finally:
        for ws in sockets:
            ws.close()


def test_open_sockets_take_no_request_threads(tmp_path):
    """Four times as many sockets as the worker has threads: an upload, a download and a chat still answer,
    because a socket is handed to the worker's event loop once upgraded."""
    live = GunicornServer({**sqlite_settings(tmp_path), "WEB_CONCURRENCY": 1, "WEB_THREADS": 2,
                           "WATCH_MAX_PER_USER": "64"}, work_dir=str(tmp_path))
    live.start()
    sockets = []
    try:
        account, headers, chat, sockets = watched_chat(live, live, 8)
        assert_round_trip(live, account, headers, "image/png", make_image("image/png", 64, 64))
        assert requests.get(f"{live.url}/api/v2/chats/{chat['id']}", headers=headers, timeout=10).status_code == 200
    finally:
        for ws in sockets:
            ws.close()
        live.stop()


def test_sigterm_closes_watch_sockets_with_going_away_and_exits_promptly(tmp_path):
    live = GunicornServer(sqlite_settings(tmp_path), work_dir=str(tmp_path))
    live.start()
    account = live.flask("create-user", "alice", "--org", "acme")
    os.makedirs(os.path.join(account["workspaces_dir"], "proj"))
    chat = requests.post(f"{live.url}/api/v2/chats", json={"title": "w", "workspace": "proj"},
                         headers={"Coder-Session-Token": account["token"]}, timeout=10).json()
    ws_url = live.url.replace("http://", "ws://") + f"/api/v2/chats/{chat['id']}/git/watch"
    sockets = [WatchClient(ws_url, account["token"]) for _ in range(4)]
    for ws in sockets:
        ws.receive(timeout=10)

    live._process.send_signal(signal.SIGTERM)
    for ws in sockets:
        closed = ws.wait_until_closed()
        assert (closed.code, closed.reason) == (1001, "Server shutting down")
    # Well inside graceful_timeout (20 s): nothing was left for the master to wait on.
    assert live._process.wait(timeout=15) == 0
    live.stop()


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
    b"NOT A REQUEST LINE\r\n\r\n",
])
def test_http_gunicorn_cannot_parse_gets_a_json_error(live, request_bytes):
    status, headers, body = raw_exchange(live.port, request_bytes, timeout=10)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"]


def test_an_archive_on_one_instance_reaches_another_by_notify_without_a_query_per_socket(request, tmp_path,
                                                                                         postgres_server):
    """PostgreSQL: the archiving transaction NOTIFYs; each process of B listens on one connection. While
    the sockets are idle, B asks the database nothing about archives (the server's statement log says)."""
    url = request.getfixturevalue("postgres_url")
    database = url.rsplit("/", 1)[1]
    with contextlib.closing(psycopg2.connect(postgres_server.url)) as admin:
        admin.autocommit = True
        admin.cursor().execute(f'ALTER DATABASE "{database}" SET log_statement = \'all\'')
    settings = {"DATABASE_URL": url, "LOCAL_STORAGE_ROOT": str(tmp_path / "objects"),
                "WORKSPACES_ROOT": str(tmp_path / "workspaces")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    instance_a = GunicornServer({**settings, "WEB_CONCURRENCY": 1, "WEB_THREADS": 4}, work_dir=str(tmp_path / "a"))
    instance_b = GunicornServer({**settings, "WEB_CONCURRENCY": 2, "WEB_THREADS": 16}, work_dir=str(tmp_path / "b"))
    instance_a.start()
    instance_b.start()
    sockets = []
    try:
        _, headers, chat, sockets = watched_chat(instance_a, instance_b, 12)
        logged_before = os.path.getsize(postgres_server.log_path)
        time.sleep(3)  # idle: a query per socket every 2 s would be 18 here
        idle = [line for line in statements_logged_since(postgres_server.log_path, logged_before) if '"archived"' in line]
        # At most each listening process's one catch-up after its LISTEN (a slow start may put it here):
        # one query for all of its chats, never one per socket.
        assert len(idle) <= 2 and all("unnest" in line for line in idle)

        archive_and_wait_for_close(instance_a.url, chat, headers, sockets)
        # The log does record this database's statements: the archive and its NOTIFY are there.
        assert any("pg_notify" in line for line in statements_logged_since(postgres_server.log_path, logged_before))
    finally:
        for ws in sockets:
            ws.close()
        instance_a.stop()
        instance_b.stop()


def watched_chat(api, sockets_from, count):
    """alice, a chat of hers on workspace "proj" (made through ``api``), and ``count`` watch sockets on it
    opened through ``sockets_from``, each past its first message: (account, headers, chat, sockets)."""
    account = api.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    os.makedirs(os.path.join(account["workspaces_dir"], "proj"))
    chat = requests.post(f"{api.url}/api/v2/chats", json={"title": "w", "workspace": "proj"}, headers=headers,
                         timeout=10).json()
    ws_url = sockets_from.url.replace("http://", "ws://") + f"/api/v2/chats/{chat['id']}/git/watch"
    sockets = [WatchClient(ws_url, account["token"]) for _ in range(count)]
    for ws in sockets:
        assert ws.receive(timeout=10)["type"] == "changes"
    return account, headers, chat, sockets


def assert_round_trip(live, account, headers, content_type, data):
    """An upload answers 201 and downloads byte-identical."""
    upload = requests.post(f"{live.url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                           data=data, headers={**headers, "Content-Type": content_type}, timeout=10)
    assert upload.status_code == 201
    download = requests.get(f"{live.url}/api/v2/chats/files/{upload.json()['id']}", headers=headers, timeout=10)
    assert download.content == data


def statements_logged_since(log_path, offset):
    with open(log_path, "rb") as log:
        log.seek(offset)
        return [line for line in log.read().decode(errors="replace").splitlines() if "statement:" in line]



def test_concurrent_uploads_near_the_quota_never_take_the_organization_past_it(request, tmp_path):
    """PostgreSQL, three workers, 24 uploads of one image with room for a few. The test holds the organization's
    usage row locked until every upload waits on it, then lets them all go at once: the conditional UPDATE lets
    in exactly as many as fit (a check read before the write would let them all in), and the counter ends equal
    to what the rows say is stored."""
    postgres_url = request.getfixturevalue("postgres_url")
    image = make_image("image/png", 300, 200)
    quota = 4 * len(image)  # room for three or so: each needs the original and its stored variants
    count = 24
    server = GunicornServer({"DATABASE_URL": postgres_url, "LOCAL_STORAGE_ROOT": str(tmp_path / "objects"),
                             "WORKSPACES_ROOT": str(tmp_path / "workspaces"), "ORG_STORAGE_QUOTA": str(quota),
                             # Threads enough for every upload in any one worker: all of them can wait at once.
                             "WEB_CONCURRENCY": 3, "WEB_THREADS": count}, work_dir=str(tmp_path))
    server.start()
    lock = psycopg2.connect(postgres_url)
    try:
        account = server.flask("create-user", "alice", "--org", "acme")
        headers = {"Coder-Session-Token": account["token"], "Content-Type": "image/png"}
        with lock.cursor() as cursor:
            cursor.execute("INSERT INTO organizationusage VALUES (%s, 0, 0)", (account["organization_id"],))
            lock.commit()
            cursor.execute("SELECT bytes FROM organizationusage FOR UPDATE")  # held until every upload waits

        def upload():
            with requests.Session() as session:  # a connection each, spread over the workers
                response = session.post(f"{server.url}/api/v2/chats/files", data=image, headers=headers,
                                        params={"organization": account["organization_id"]}, timeout=120)
                return response.status_code, response.json()["message"] if response.status_code != 201 else None

        uploads = concurrent.futures.ThreadPoolExecutor(count)
        results = [uploads.submit(upload) for _ in range(count)]
        with contextlib.closing(psycopg2.connect(postgres_url)) as watcher:
            watcher.autocommit = True  # a fresh look each time (a transaction sees one snapshot of the statistics)
            wait_for(lambda: waiting_on_locks(watcher) == count, "every upload waiting on the usage row", seconds=60)
        lock.rollback()
        results = [result.result() for result in results]
        uploads.shutdown()
    finally:
        lock.close()
        server.stop()

    stored = [result for result in results if result[0] == 201]
    assert sorted(set(results) - set(stored)) == [(400, "Upload would exceed the organization's storage quota.")]
    with contextlib.closing(psycopg2.connect(postgres_url)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT bytes, files FROM organizationusage")
        counted_bytes, counted_files = cursor.fetchone()
        cursor.execute("SELECT COALESCE(SUM(size), 0) FROM chatfile")
        originals = cursor.fetchone()[0]
        cursor.execute("SELECT COALESCE(SUM(size), 0) FROM chatfilevariant WHERE NOT original")
        variants = cursor.fetchone()[0]
    assert counted_bytes <= quota
    assert (counted_bytes, counted_files) == (originals + variants, len(stored))
    per_file = counted_bytes // len(stored)  # every upload is the same image: the same stored bytes
    assert len(stored) == quota // per_file  # exactly as many as fit: none refused that had room


def waiting_on_locks(connection):
    """How many other sessions of the database wait for a lock (here: the usage row the test holds)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]

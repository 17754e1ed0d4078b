"""purge: retention of unlinked files and archived chats (CONTRACT.md "Files in chats").

Runs on both databases, and on both stores where objects matter. Links are
made as rows here (the link route is another part's); a link in these tests
is what the route's INSERT does, on a connection of its own.
"""

import datetime
import http.client
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import threading
import urllib.parse
import uuid

import psycopg2
import pytest

import cli
import config
import models
from attachments import usage
from harness.imaging import make_image
from harness.live import BIN, ROOT
from jobs import purge
from storage import StorageError, get_storage
from tests.concurrency import wait_for
from tests.test_files import upload

HOUR = 3600
LONG_AGO = datetime.datetime(2020, 1, 1)


# --- helpers: files, chats, links, as rows ------------------------------------

def uploaded(client, auth, user, count=1):
    ids = []
    for _ in range(count):
        response = upload(client, auth, make_image(), "image/png", user["organization_id"])
        assert response.status_code == 201, response.json
        ids.append(response.json["id"])
    return ids if count > 1 else ids[0]


def in_db(app, action):
    with app.app_context(), models.db.connection_context():
        return action()


def backdate(app, file_ids, when=LONG_AGO):
    in_db(app, lambda: models.ChatFile.update(created_at=when).where(models.ChatFile.id.in_(file_ids)).execute())


def chat(app, user, archived=False, updated_at=None):
    def create():
        return str(models.Chat.create(owner=user["user_id"], title="t", archived=archived,
                                      updated_at=updated_at or models.utcnow()).id)
    return in_db(app, create)


def link(app, chat_id, *file_ids):
    in_db(app, lambda: [models.ChatFileLink.create(chat=chat_id, file=file_id) for file_id in file_ids])


def file_ids_left(app):
    return in_db(app, lambda: sorted(str(row.id) for row in models.ChatFile.select(models.ChatFile.id)))


def chat_ids_left(app):
    return in_db(app, lambda: sorted(str(row.id) for row in models.Chat.select(models.Chat.id)))


def all_keys(app):
    with app.app_context():
        store = get_storage()
        return sorted(key for prefix in (store.originals_prefix, store.variants_prefix)
                      for key, _ in store.iter_objects(prefix))


def keys_of(app, organization_id, file_id):
    """The keys a file's upload stored: its original and its thumbnail (a small image is its own preview)."""
    return sorted([f"{app.config['S3_PREFIX']}{organization_id}/{file_id}",
                   f"{app.config['VARIANTS_PREFIX']}{organization_id}/{file_id}/thumbnail"])


def stored_bytes(app, file_ids):
    return in_db(app, lambda: sum(usage.stored_bytes_of([uuid.UUID(file_id) for file_id in file_ids]).values()))


def usage_of(app, organization_id):
    return in_db(app, lambda: usage.of(uuid.UUID(organization_id)))


def counted_usage(app, organization_id):
    """Make sure the organization's usage row exists (uploads count into it once the quota lands); its numbers."""
    in_db(app, lambda: usage.reserve(uuid.UUID(organization_id), 0, None, files=0))
    return usage_of(app, organization_id)


def run(app, *args, unlinked=None, days=None):
    """``flask purge`` through click's runner with these retention settings: (exit code, output)."""
    app.config.update(UNLINKED_FILE_RETENTION=unlinked, ARCHIVED_CHAT_RETENTION_DAYS=days)
    result = app.test_cli_runner().invoke(args=["purge", *args])
    return result.exit_code, result.output


def run_json(app, *args, **settings):
    code, output = run(app, *args, "--json", **settings)
    assert code == 0, output
    return json.loads(output)


# --- what goes and what stays -------------------------------------------------

@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_nothing_is_deleted_when_neither_retention_is_set(app, client, auth, user):
    file_id = uploaded(client, auth, user)
    backdate(app, [file_id])
    chat(app, user, archived=True, updated_at=LONG_AGO)

    code, output = run(app)

    assert code == 0
    assert output == ("Nothing to purge: neither UNLINKED_FILE_RETENTION nor ARCHIVED_CHAT_RETENTION_DAYS is set, "
                      "so every file and chat is kept.\n")
    summary = run_json(app)
    assert (summary["chats"], summary["unlinked_files"], summary["unlinked_file_retention"]) == ([], [], None)
    assert file_ids_left(app) == [file_id] and len(chat_ids_left(app)) == 1


def test_unlinked_files_past_the_retention_go_objects_and_all(app, client, auth, user):
    old, young, old_linked = uploaded(client, auth, user, 3)
    backdate(app, [old, old_linked])
    link(app, chat(app, user), old_linked)
    before = counted_usage(app, user["organization_id"])
    old_bytes = stored_bytes(app, [old])
    assert old_bytes > 0

    summary = run_json(app, unlinked=HOUR)

    assert summary == {"dry_run": False, "unlinked_file_retention": HOUR, "archived_chat_retention_days": None,
                       "chats": [], "files_of_chats": [], "unlinked_files": [old], "bytes": old_bytes,
                       "skipped": 0, "failed": []}
    assert file_ids_left(app) == sorted([young, old_linked])
    organization = user["organization_id"]
    assert all_keys(app) == sorted(keys_of(app, organization, young) + keys_of(app, organization, old_linked))
    after = usage_of(app, organization)
    assert (before.bytes - after.bytes, before.files - after.files) == (old_bytes, 1)
    assert client.get(f"/api/v2/chats/files/{old}", headers=auth).status_code == 404


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_archived_chats_past_the_retention_go_with_the_files_linked_only_to_them(app, client, auth, user):
    only_a, a_and_active, a_and_b, in_young, unlinked = uploaded(client, auth, user, 5)
    backdate(app, [unlinked])
    expired_a, expired_b = (chat(app, user, archived=True, updated_at=LONG_AGO) for _ in range(2))
    young = chat(app, user, archived=True)
    active = chat(app, user, updated_at=LONG_AGO)  # old but not archived: kept
    link(app, expired_a, only_a, a_and_active, a_and_b)
    link(app, expired_b, a_and_b)
    link(app, active, a_and_active)
    link(app, young, in_young)
    before = counted_usage(app, user["organization_id"])
    freed_bytes = stored_bytes(app, [only_a, a_and_b])

    # One chat a batch: a file in two expired chats goes with the second of them.
    code, output = run(app, "--batch-size", "1", days=30)

    assert code == 0, output
    lines = output.splitlines()
    assert sorted(lines[:2]) == sorted([f"deleted chat {expired_a}", f"deleted chat {expired_b}"])
    assert sorted(lines[2:4]) == sorted(f"deleted file {file_id} (linked only to deleted chats)"
                                        for file_id in (only_a, a_and_b))
    assert lines[4:] == [
        "Unlinked files are kept: UNLINKED_FILE_RETENTION is unset.",
        f"Deleted 2 archived chats with 2 files linked only to them, and 0 unlinked files: {freed_bytes} bytes "
        "were given back.",
    ]
    assert chat_ids_left(app) == sorted([young, active])
    assert file_ids_left(app) == sorted([a_and_active, in_young, unlinked])
    assert in_db(app, lambda: models.ChatFileLink.select().count()) == 2  # the kept chats' links
    after = usage_of(app, user["organization_id"])
    assert (before.bytes - after.bytes, before.files - after.files) == (freed_bytes, 2)


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_both_retentions_together_and_a_file_freed_by_a_chat_goes_once(app, client, auth, user):
    in_expired, unlinked = uploaded(client, auth, user, 2)
    backdate(app, [in_expired, unlinked])
    link(app, chat(app, user, archived=True, updated_at=LONG_AGO), in_expired)

    summary = run_json(app, unlinked=HOUR, days=1)

    assert (summary["files_of_chats"], summary["unlinked_files"]) == ([in_expired], [unlinked])
    assert file_ids_left(app) == [] and chat_ids_left(app) == []


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_dry_run_lists_what_the_run_then_deletes_and_deletes_nothing(app, client, auth, user):
    in_two_expired, in_expired_and_active, unlinked_old, unlinked_young = uploaded(client, auth, user, 4)
    backdate(app, [unlinked_old])
    expired = [chat(app, user, archived=True, updated_at=LONG_AGO) for _ in range(2)]
    link(app, expired[0], in_two_expired, in_expired_and_active)
    link(app, expired[1], in_two_expired)
    link(app, chat(app, user), in_expired_and_active)
    files, keys = file_ids_left(app), all_keys(app)

    dry = run_json(app, "--dry-run", "--batch-size", "1", unlinked=HOUR, days=7)

    assert dry["dry_run"] is True
    assert sorted(dry["chats"]) == sorted(expired)
    assert dry["files_of_chats"] == [in_two_expired]  # listed once, though two expired chats hold it
    assert dry["unlinked_files"] == [unlinked_old]
    assert dry["bytes"] == stored_bytes(app, [in_two_expired, unlinked_old])
    assert (file_ids_left(app), all_keys(app), len(chat_ids_left(app))) == (files, keys, 3)
    code, text = run(app, "--dry-run", unlinked=HOUR, days=7)
    assert f"would delete file {unlinked_old} (linked to no chat)" in text.splitlines()
    assert text.splitlines()[-1].startswith("Would delete 2 archived chats with 1 file linked only to them, and "
                                            "1 unlinked file: ")

    real = run_json(app, unlinked=HOUR, days=7)

    assert ({key: sorted(value) if isinstance(value, list) else value for key, value in real.items()}
            == {key: sorted(value) if isinstance(value, list) else value for key, value in {**dry, "dry_run": False}.items()})
    assert file_ids_left(app) == sorted([in_expired_and_active, unlinked_young])


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_purge_shows_a_progress_line_on_a_terminal(app, client, auth, user, monkeypatch):
    files = uploaded(client, auth, user, 3)
    backdate(app, files)
    monkeypatch.setattr(cli, "stdout_is_terminal", lambda: True)

    code, output = run(app, "--batch-size", "2", unlinked=HOUR)

    assert code == 0, output
    assert "\r2/3 chats and files checked, 0 chats and 2 files deleted" in output
    assert "\r3/3 chats and files checked, 0 chats and 3 files deleted" in output
    assert output.splitlines()[-1].endswith("Deleted 0 archived chats with 0 files linked only to them, and "
                                            f"3 unlinked files: {output.split('files: ')[1].split(' ')[0]} bytes "
                                            "were given back.")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_failed_object_deletion_is_reported_and_left_to_gc_storage(app, client, auth, user, monkeypatch):
    doomed, kept = uploaded(client, auth, user, 2)
    backdate(app, [doomed])
    thumbnail = keys_of(app, user["organization_id"], doomed)[0]
    assert thumbnail.startswith(app.config["VARIANTS_PREFIX"])
    with app.app_context():
        store = get_storage()
        real_delete = store.delete

        def delete(key):
            if key == thumbnail:
                raise StorageError("the store said no")
            real_delete(key)

        with monkeypatch.context() as patch:
            patch.setattr(store, "delete", delete)
            code, output = run(app, unlinked=HOUR)
            summary = run_json(app, unlinked=HOUR)  # nothing left to do: the row went first

    assert code == 0, output  # not fatal: the rows are gone, gc-storage removes the object
    assert f"failed to delete {thumbnail}: the store said no (gc-storage will remove it)" in output
    assert output.splitlines()[-1].endswith("1 object deletion failed; gc-storage removes what is left.")
    assert (summary["unlinked_files"], summary["failed"]) == ([], [])
    assert file_ids_left(app) == [kept]
    assert all_keys(app) == sorted(keys_of(app, user["organization_id"], kept) + [thumbnail])
    gc = app.test_cli_runner().invoke(args=["gc-storage", "--older-than", "0", "--json"])
    assert json.loads(gc.output)["deleted"] == [thumbnail]
    assert all_keys(app) == keys_of(app, user["organization_id"], kept)


def test_retention_settings_are_validated():
    assert config.load({})["UNLINKED_FILE_RETENTION"] is None
    loaded = config.load({"UNLINKED_FILE_RETENTION": "86400", "ARCHIVED_CHAT_RETENTION_DAYS": "0"})
    assert (loaded["UNLINKED_FILE_RETENTION"], loaded["ARCHIVED_CHAT_RETENTION_DAYS"]) == (86400, 0)
    for name, value in [("UNLINKED_FILE_RETENTION", "a day"), ("UNLINKED_FILE_RETENTION", "-1"),
                        ("ARCHIVED_CHAT_RETENTION_DAYS", "3.5"), ("ARCHIVED_CHAT_RETENTION_DAYS", str(10 ** 9))]:
        with pytest.raises(config.ConfigError, match=name):
            config.load({name: value})


# --- a link racing the purge --------------------------------------------------

class LinkingConnection:
    """Another connection (another request's), inserting a link as the link route does."""

    def __init__(self, database_url):
        self.is_sqlite = database_url.startswith("sqlite")
        if self.is_sqlite:
            self.connection = sqlite3.connect(database_url.split("sqlite:///", 1)[1], isolation_level=None,
                                              check_same_thread=False)
            self.connection.execute("PRAGMA foreign_keys = ON")
        else:
            self.connection = psycopg2.connect(database_url)

    def begin_link(self, chat_id, file_id):
        """Insert the link in a transaction left open (PostgreSQL: its foreign-key check holds the file)."""
        sql = "INSERT INTO chatfilelink (chat_id, file_id, created_at) VALUES (%s, %s, %s)"
        if self.is_sqlite:  # as peewee stores them: UUIDs as 32 hex digits
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.execute(sql.replace("%s", "?"), (uuid.UUID(chat_id).hex, uuid.UUID(file_id).hex,
                                                            models.utcnow().isoformat(" ")))
        else:
            self.connection.cursor().execute(sql, (chat_id, file_id, models.utcnow()))

    def commit(self):
        self.connection.commit() if not self.is_sqlite else self.connection.execute("COMMIT")

    def link(self, chat_id, file_id):
        self.begin_link(chat_id, file_id)
        self.commit()

    def pid(self):
        return self.connection.get_backend_pid()

    def close(self):
        self.connection.close()


def waiting_on_a_lock(database_url, pid=None):
    """PostgreSQL: whether a backend of this database (or backend ``pid``) is waiting on a row lock."""
    with psycopg2.connect(database_url) as watcher, watcher.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'" + (" AND pid = %s" if pid else ""), (pid,) if pid else ())
        found = cursor.fetchall()
    watcher.close()
    return bool(found)


def between_look_and_delete(monkeypatch, action):
    """Run ``action()`` once, after the purge chose its batch and before its transaction begins."""
    real = purge.write_transaction
    done = []

    def hooked():
        if not done:
            done.append(True)
            action()
        return real()

    monkeypatch.setattr(purge, "write_transaction", hooked)
    return done


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_a_file_linked_between_the_look_and_the_delete_is_kept(app, client, auth, user, database_url, monkeypatch):
    linked_meanwhile, doomed = uploaded(client, auth, user, 2)
    backdate(app, [linked_meanwhile, doomed])
    target = chat(app, user)
    other = LinkingConnection(database_url)
    try:
        hooked = between_look_and_delete(monkeypatch, lambda: other.link(target, linked_meanwhile))
        summary = run_json(app, unlinked=HOUR)
    finally:
        other.close()

    assert hooked == [True]
    assert (summary["unlinked_files"], summary["skipped"]) == ([doomed], 1)
    assert file_ids_left(app) == [linked_meanwhile]
    assert in_db(app, lambda: models.ChatFileLink.select().count()) == 1
    assert client.get(f"/api/v2/chats/files/{linked_meanwhile}", headers=auth).status_code == 200


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_a_file_of_an_expired_chat_linked_meanwhile_to_a_kept_chat_stays(app, client, auth, user, database_url,
                                                                        monkeypatch):
    file_id = uploaded(client, auth, user)
    expired, kept = chat(app, user, archived=True, updated_at=LONG_AGO), chat(app, user)
    link(app, expired, file_id)
    other = LinkingConnection(database_url)
    try:
        between_look_and_delete(monkeypatch, lambda: other.link(kept, file_id))
        summary = run_json(app, days=1)
    finally:
        other.close()

    assert (summary["chats"], summary["files_of_chats"]) == ([expired], [])
    assert file_ids_left(app) == [file_id]
    assert in_db(app, lambda: [str(row.chat_id) for row in models.ChatFileLink.select()]) == [kept]


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_a_link_in_flight_when_the_purge_begins_is_waited_for_and_the_file_kept(app, client, auth, user,
                                                                               database_url, monkeypatch):
    """The link's transaction is open (PostgreSQL: its foreign-key check holds the file) when the purge's
    begins; it commits only once the purge waits for it."""
    file_id = uploaded(client, auth, user)
    backdate(app, [file_id])
    target = chat(app, user)
    other = LinkingConnection(database_url)
    committer = threading.Thread(target=lambda: (
        wait_for(lambda: waiting_on_a_lock(database_url), "the purge to wait on the link") if not other.is_sqlite
        else threading.Event().wait(0.3),  # SQLite shows no waiter: the purge waits at BEGIN within this
        other.commit()))

    def begin_link():
        other.begin_link(target, file_id)
        committer.start()

    try:
        between_look_and_delete(monkeypatch, begin_link)
        summary = run_json(app, unlinked=HOUR)
        committer.join(timeout=30)
    finally:
        other.close()

    assert (summary["unlinked_files"], summary["skipped"]) == ([], 1)
    assert file_ids_left(app) == [file_id]
    assert in_db(app, lambda: models.ChatFileLink.select().count()) == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_a_link_made_while_the_purge_holds_the_file_fails_on_the_foreign_key(app, client, auth, user, database_url,
                                                                            monkeypatch):
    file_id = uploaded(client, auth, user)
    backdate(app, [file_id])
    target = chat(app, user)
    other = LinkingConnection(database_url)
    outcome = []

    def try_to_link():
        try:
            other.link(target, file_id)
            outcome.append("linked")
        except psycopg2.errors.ForeignKeyViolation:
            outcome.append("foreign key violation")

    linker = threading.Thread(target=try_to_link)
    linker_pid = other.pid()
    real_release = purge._release

    def release_while_a_link_waits(deleted):  # inside the purge's transaction, after its DELETE
        linker.start()
        wait_for(lambda: waiting_on_a_lock(database_url, linker_pid), "the link to wait on the purge")
        real_release(deleted)

    monkeypatch.setattr(purge, "_release", release_while_a_link_waits)
    try:
        summary = run_json(app, unlinked=HOUR)
        linker.join(timeout=30)
    finally:
        other.close()

    assert summary["unlinked_files"] == [file_id]
    assert outcome == ["foreign key violation"]  # the link route answers 404 for it
    assert file_ids_left(app) == []
    assert in_db(app, lambda: models.ChatFileLink.select().count()) == 0


# --- a real `flask purge`, killed mid-run, then run again --------------------

class BlockingS3Proxy:
    """An HTTP proxy in front of the S3 server that passes the first ``allowed`` DELETEs, then holds every
    DELETE without an answer: the store blocks, the purge waits on it, and the test kills the purge there."""

    def __init__(self, endpoint_url, allowed):
        target = urllib.parse.urlsplit(endpoint_url)
        self.allowed = allowed
        self.deletes = 0
        self.blocked = threading.Event()
        self.released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                if self.command == "DELETE":
                    proxy.deletes += 1
                    if proxy.deletes > proxy.allowed:
                        proxy.blocked.set()
                        proxy.released.wait(60)
                        self.close_connection = True
                        return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                upstream.request(self.command, self.path, body, dict(self.headers))
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def flask_purge(settings, *args):
    return subprocess.Popen([os.path.join(BIN, "flask"), "--app", "wsgi", "purge", "--json", *args], cwd=ROOT,
                            env={**os.environ, **settings}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("storage_config", ["s3"], indirect=True)
def test_a_purge_killed_mid_run_finishes_when_run_again(app, client, auth, user, database_url, storage_config,
                                                       tmp_path):
    organization = user["organization_id"]
    doomed = sorted(uploaded(client, auth, user, 3))
    kept = uploaded(client, auth, user)
    backdate(app, doomed + [kept])
    link(app, chat(app, user), kept)
    before = counted_usage(app, organization)
    doomed_bytes = stored_bytes(app, doomed)
    settings = {"DATABASE_URL": database_url, "S3_BUCKET": storage_config["S3_BUCKET"],
                "WORKSPACES_ROOT": str(tmp_path / "workspaces"), "UNLINKED_FILE_RETENTION": str(HOUR)}
    # One file a batch, each file three keys to delete (its original, thumbnail and preview): the first file's
    # objects go, and the second's row is committed when the store stops answering during its objects.
    proxy = BlockingS3Proxy(storage_config["S3_ENDPOINT_URL"], allowed=4)
    try:
        killed = flask_purge({**settings, "S3_ENDPOINT_URL": proxy.url}, "--batch-size", "1")
        try:
            assert proxy.blocked.wait(60), killed.communicate(timeout=30)
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.communicate(timeout=30)
    finally:
        proxy.close()

    # Whole batches only: two committed (rows and usage), nothing of the third; every row left has its objects.
    assert file_ids_left(app) == sorted(doomed[2:] + [kept])
    first_two_bytes = doomed_bytes - stored_bytes(app, doomed[2:])
    between = usage_of(app, organization)
    assert (before.bytes - between.bytes, before.files - between.files) == (first_two_bytes, 2)
    for file_id in doomed[2:] + [kept]:
        assert set(keys_of(app, organization, file_id)) <= set(all_keys(app))

    summary = run_json(app, unlinked=HOUR)  # run again (here in-process, as the same command)

    assert (summary["unlinked_files"], summary["skipped"], summary["failed"]) == ([doomed[2]], 0, [])
    assert file_ids_left(app) == [kept]
    after = usage_of(app, organization)
    assert (before.bytes - after.bytes, before.files - after.files) == (doomed_bytes, 3)  # each given back once
    assert first_two_bytes + summary["bytes"] == doomed_bytes
    # What the kill left in the store (the second batch's objects) is gc-storage's; the kept file is whole.
    gc = app.test_cli_runner().invoke(args=["gc-storage", "--older-than", "0", "--json"])
    assert gc.exit_code == 0, gc.output
    assert all_keys(app) == keys_of(app, organization, kept)
    assert client.get(f"/api/v2/chats/files/{kept}", headers=auth).status_code == 200


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_a_chat_unarchived_between_the_look_and_the_delete_is_kept_with_its_files(app, client, auth, user,
                                                                                 monkeypatch):
    file_id = uploaded(client, auth, user)
    expired = chat(app, user, archived=True, updated_at=LONG_AGO)
    link(app, expired, file_id)
    headers = {**auth}
    unarchived = []

    def unarchive():  # another request, on its own thread and connection
        worker = threading.Thread(target=lambda: unarchived.append(
            client.post(f"/api/v2/chats/{expired}/unarchive", headers=headers).status_code))
        worker.start()
        worker.join(timeout=30)

    between_look_and_delete(monkeypatch, unarchive)
    summary = run_json(app, days=1)

    assert unarchived == [204]
    assert (summary["chats"], summary["files_of_chats"], summary["skipped"]) == ([], [], 1)
    assert chat_ids_left(app) == [expired] and file_ids_left(app) == [file_id]


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_stored_bytes_are_the_original_and_the_variants_stored_apart(app, client, auth, user):
    small = uploaded(client, auth, user)  # its own preview: that adds nothing
    response = upload(client, auth, make_image("image/png", 1600, 1200), "image/png", user["organization_id"])
    large = response.json["id"]  # a preview of its own
    with app.app_context():
        store = get_storage()
        sizes = {key: store.head(key).size for key in all_keys(app)}
    expected = {file_id: sum(size for key, size in sizes.items() if file_id in key) for file_id in (small, large)}
    assert len([key for key in sizes if large in key]) == 3

    assert in_db(app, lambda: usage.stored_bytes_of([uuid.UUID(small), uuid.UUID(large), uuid.uuid4()])) == {
        uuid.UUID(file_id): size for file_id, size in expected.items()}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_a_store_that_keeps_failing_is_not_tried_for_the_rest_of_the_run(app, client, auth, user, monkeypatch):
    files = uploaded(client, auth, user, 3)  # nine keys to delete
    backdate(app, files)
    tried = []

    def failing_delete(key):
        tried.append(key)
        raise StorageError("the store is down")

    with app.app_context():
        monkeypatch.setattr(get_storage(), "delete", failing_delete)
    summary = run_json(app, unlinked=HOUR)

    assert len(tried) == purge.MAX_FAILURES_IN_A_ROW == 5
    assert [failure["error"] for failure in summary["failed"]] == (
        ["the store is down"] * 5 + ["Not tried: the store failed 5 times in a row."] * 4)
    assert sorted(summary["unlinked_files"]) == sorted(files) and file_ids_left(app) == []

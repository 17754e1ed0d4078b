"""gc-storage: objects without a row go after the grace period; nothing with a row ever goes.

Runs on every database and storage backend. S3 cannot backdate an object, so
"old" means running gc with ``now`` in the future, or ``--older-than 0``.
"""

import datetime
import io
import json
import os
import signal
import sqlite3
import tempfile
import threading
import uuid

import psycopg2
import pytest
import requests

import config
import models
import storage
from attachments import rows
from harness.imaging import make_image
from harness.live import GunicornServer, backend_settings
from jobs import gc_storage
from storage import StorageError, get_storage, object_key, variant_key
from storage.local import LocalStore
from tests.concurrency import wait_for
from tests.test_files import upload

LATER = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)


class SimulatedCrash(BaseException):
    """Like the process dying: not an Exception, so no handler cleans up after it."""


def gc(app, **options):
    with app.app_context(), models.db.connection_context():
        return gc_storage.collect_orphans(get_storage(), variants=False, **options)  # originals only


def gc_command(app, *args):
    result = app.test_cli_runner().invoke(args=["gc-storage", *args])
    assert result.exit_code == 0, result.output
    return result.output


def put_orphan(app, organization_id=None):
    """An object in the layout whose row never came."""
    key = object_key(app.config["S3_PREFIX"], organization_id or uuid.uuid4(), uuid.uuid4())
    with app.app_context():
        get_storage().put(key, make_image(), "image/png", {})
    return key


def exists(app, key):
    with app.app_context():
        try:
            get_storage().head(key)
        except FileNotFoundError:
            return False
        return True


def all_keys(app):
    with app.app_context():
        return sorted(key for key, _ in get_storage().iter_objects(app.config["S3_PREFIX"]))


def uploaded(app, client, auth, user):
    """Upload an image; return (file id, its object key)."""
    response = upload(client, auth, make_image(), "image/png", user["organization_id"])
    assert response.status_code == 201, response.json
    file_id = response.json["id"]
    return file_id, object_key(app.config["S3_PREFIX"], user["organization_id"], file_id)


def test_an_object_with_a_row_is_never_deleted_however_old(app, client, auth, user):
    file_id, key = uploaded(app, client, auth, user)
    far_future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3650)

    result = gc(app, older_than=0, now=far_future)

    assert (result.deleted, result.kept_with_row) == ([], 1)
    assert client.get(f"/api/v2/chats/files/{file_id}", headers=auth).status_code == 200


def test_an_orphan_younger_than_the_grace_period_is_kept(app):
    key = put_orphan(app)
    result = gc(app)  # the default grace period: an hour
    assert (result.deleted, result.kept_recent) == ([], 1)
    assert exists(app, key)


def test_an_old_orphan_is_deleted(app, client, auth, user):
    _, kept = uploaded(app, client, auth, user)
    orphan = put_orphan(app, user["organization_id"])

    result = gc(app, now=LATER)

    assert result.deleted == [orphan]
    assert all_keys(app) == [kept]


def test_dry_run_reports_and_deletes_nothing(app):
    orphan = put_orphan(app)

    output = json.loads(gc_command(app, "--older-than", "0", "--dry-run", "--json"))

    assert output["dry_run"] is True
    assert output["deleted"] == [orphan]
    assert exists(app, orphan)
    text = gc_command(app, "--older-than", "0", "--dry-run")
    assert text.splitlines()[0] == f"would delete {orphan}"
    assert text.splitlines()[-1].startswith("Would delete 1 orphaned object and 0 leftover files;")


def test_gc_command_deletes_and_prints_each_key_and_a_summary(app, client, auth, user):
    uploaded(app, client, auth, user)  # the original and its thumbnail (the small original is its own preview)
    orphan = put_orphan(app)
    young = gc_command(app)  # default grace period: nothing old enough yet
    assert young.splitlines()[-1] == (
        "Deleted 0 orphaned objects and 0 leftover files; kept 0 objects with a row and 3 younger than 3600 s; "
        "left 0 keys outside the layout alone."
    )

    lines = gc_command(app, "--older-than", "0").splitlines()

    assert lines == [
        f"deleted {orphan}",
        "Deleted 1 orphaned object and 0 leftover files; kept 2 objects with a row and 0 younger than 0 s; "
        "left 0 keys outside the layout alone.",
    ]
    assert not exists(app, orphan)


@pytest.mark.parametrize("older_than", ["-1", "10000000000000", "soon"])
def test_a_bad_grace_period_is_a_usage_error(sqlite_app, older_than):
    result = sqlite_app.test_cli_runner().invoke(args=["gc-storage", "--older-than", older_than])
    assert result.exit_code == 2
    assert "--older-than" in result.output


def test_keys_outside_the_layout_are_reported_and_left_alone(app):
    prefix = app.config["S3_PREFIX"]
    organization = str(uuid.uuid4())
    foreign = [
        f"{prefix}notes.txt",
        f"{prefix}{organization}/not-a-uuid",
        f"{prefix}{organization}/{str(uuid.uuid4()).upper()}",
        f"{prefix}{organization}/{uuid.uuid4()}/extra",
        f"{prefix}not-an-org/{uuid.uuid4()}",
    ]
    outside_prefix = f"other-tool/{organization}/{uuid.uuid4()}"
    with app.app_context():
        for key in foreign + [outside_prefix]:
            get_storage().put(key, b"not ours", "text/plain", {})

    result = gc(app, older_than=0, now=LATER)

    assert result.deleted == []
    assert sorted(result.unrecognized) == sorted(foreign)
    assert all(exists(app, key) for key in foreign + [outside_prefix])


def test_rows_are_looked_up_in_batches(app, client, auth, user, monkeypatch):
    with_rows = [uploaded(app, client, auth, user)[1] for _ in range(3)]
    orphans = [put_orphan(app) for _ in range(2)]
    queries = []
    real_lookup = gc_storage._ids_with_rows

    def counting_lookup(file_ids):
        queries.append(len(file_ids))
        return real_lookup(file_ids)

    monkeypatch.setattr(gc_storage, "_ids_with_rows", counting_lookup)

    result = gc(app, now=LATER, batch_size=2)

    assert sorted(queries) == [1, 2, 2]  # five objects, two per query
    assert sorted(result.deleted) == sorted(orphans)
    assert all_keys(app) == sorted(with_rows)


def test_a_crash_between_the_object_and_its_row_leaves_garbage_gc_removes(app, client, auth, user, monkeypatch):
    before_crash, _ = uploaded(app, client, auth, user)
    interrupted = {}

    def crash(*values):  # the row's INSERT, after the objects were written
        interrupted.update({field.name: value for field, value in zip(rows.INSERT_FILE.fields, values)})
        raise SimulatedCrash()

    with monkeypatch.context() as patch:
        patch.setattr(rows.INSERT_FILE, "execute", crash)
        with pytest.raises(SimulatedCrash):
            upload(client, auth, make_image("image/gif", 10, 10), "image/gif", user["organization_id"])
    after_crash, _ = uploaded(app, client, auth, user)

    garbage = object_key(app.config["S3_PREFIX"], interrupted["organization"], interrupted["id"])
    assert exists(app, garbage)
    with app.app_context(), models.db.connection_context():
        assert models.ChatFile.get_or_none(models.ChatFile.id == interrupted["id"]) is None
    assert len(all_keys(app)) == 3

    garbage_thumbnail = variant_key(app.config["VARIANTS_PREFIX"], interrupted["organization"], interrupted["id"],
                                    "thumbnail")
    assert exists(app, garbage_thumbnail)

    output = json.loads(gc_command(app, "--older-than", "0", "--json"))

    assert output["deleted"] == [garbage, garbage_thumbnail]
    assert output["kept_with_row"] == 4  # two originals and their thumbnails
    assert not exists(app, garbage)
    assert not exists(app, garbage_thumbnail)
    for file_id in (before_crash, after_crash):
        assert client.get(f"/api/v2/chats/files/{file_id}", headers=auth).status_code == 200


def test_a_failed_deletion_is_reported_and_the_run_goes_on(app, monkeypatch):
    orphans = sorted(put_orphan(app) for _ in range(2))
    with app.app_context():
        store = get_storage()
        real_delete = store.delete

        def delete(key):
            if key == orphans[0]:
                raise StorageError("the store said no")
            real_delete(key)

        monkeypatch.setattr(store, "delete", delete)
        result = app.test_cli_runner().invoke(args=["gc-storage", "--older-than", "0", "--json"])

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["deleted"] == [orphans[1]]
    assert report["failed"] == [{"key": orphans[0], "error": "the store said no"}]
    assert "1 deletions failed" in result.output


# --- the local store's own debris --------------------------------------------

local_only = pytest.mark.parametrize("storage_config", ["local"], indirect=True)


def local_path(app, name):
    return os.path.join(app.config["LOCAL_STORAGE_ROOT"], name)


def write_file(app, name, age_seconds):
    path = local_path(app, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"{}")
    mtime = datetime.datetime.now().timestamp() - age_seconds
    os.utime(path, (mtime, mtime))


@local_only
def test_old_leftovers_of_interrupted_local_writes_are_removed(app):
    prefix, organization = app.config["S3_PREFIX"], uuid.uuid4()
    whole = put_orphan(app, organization)  # young, so kept
    os.utime(local_path(app, whole + ".meta.json"), (0, 0))  # an old sidecar with its bytes: part of an object
    # What a killed writer leaves: a temporary file, and a sidecar whose bytes never arrived.
    old_temp = f"{prefix}{organization}/.tmp-abc123"
    old_sidecar = f"{prefix}{organization}/{uuid.uuid4()}.meta.json"
    young_temp = f"{prefix}{organization}/.tmp-def456"
    write_file(app, old_temp, age_seconds=7200)
    write_file(app, old_sidecar, age_seconds=7200)
    write_file(app, young_temp, age_seconds=0)

    dry = gc(app, dry_run=True)
    assert sorted(dry.leftovers) == sorted([old_temp, old_sidecar])
    assert os.path.exists(local_path(app, old_temp))

    lines = gc_command(app).splitlines()

    assert sorted(lines[:2]) == sorted([f"deleted leftover {old_temp}", f"deleted leftover {old_sidecar}"])
    assert lines[2].startswith("Deleted 0 orphaned objects and 2 leftover files;")
    assert not os.path.exists(local_path(app, old_temp))
    assert not os.path.exists(local_path(app, old_sidecar))
    assert os.path.exists(local_path(app, young_temp))
    assert exists(app, whole)


@local_only
def test_a_sidecar_whose_bytes_arrive_is_not_removed(app):
    key = put_orphan(app)
    with app.app_context():
        get_storage().remove_leftover(key + ".meta.json")  # as if listed a moment before the bytes' rename
        assert exists(app, key)
        with pytest.raises(StorageError):
            get_storage().remove_leftover(key)  # an object is never a leftover
        with pytest.raises(StorageError):
            get_storage().remove_leftover("../outside.meta.json")


def empty_directories(root):
    return sorted(os.path.relpath(directory, root) for directory, dirs, names in os.walk(root)
                  if directory != root and not dirs and not names)


@local_only
def test_deleting_every_key_of_a_file_leaves_no_directory_of_it(app, client, auth, user):
    root = app.config["LOCAL_STORAGE_ROOT"]
    organization = user["organization_id"]
    doomed, kept = (uploaded(app, client, auth, user)[0] for _ in range(2))
    variants_dir = os.path.join(root, app.config["VARIANTS_PREFIX"], organization)
    assert sorted(os.listdir(variants_dir)) == sorted([doomed, kept])  # chat-file-variants/<org>/<file>/thumbnail

    assert client.delete(f"/api/v2/chats/files/{doomed}", headers=auth).status_code == 204
    assert os.listdir(variants_dir) == [kept]  # its siblings stay
    assert empty_directories(root) == []

    assert client.delete(f"/api/v2/chats/files/{kept}", headers=auth).status_code == 204
    assert os.listdir(root) == []  # nothing of the organization left; the root itself stays
    with app.app_context():
        get_storage().delete(object_key(app.config["S3_PREFIX"], organization, kept))  # deleting again: no error
    assert os.path.isdir(root)


@local_only
def test_removing_a_leftover_leaves_no_empty_directory(app):
    root = app.config["LOCAL_STORAGE_ROOT"]
    leftover = f"{app.config['S3_PREFIX']}{uuid.uuid4()}/.tmp-abc123"
    write_file(app, leftover, age_seconds=7200)
    assert gc(app).leftovers == [leftover]
    assert os.listdir(root) == []


def read_object(store, key):
    stored = store.open(key)
    try:
        return b"".join(stored)
    finally:
        stored.close()


def test_a_put_whose_directory_a_delete_removes_meanwhile_still_stores(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "objects")
    directory = os.path.join(store.root, "chat-file-variants", "org", "file")
    store.put("chat-file-variants/org/file/thumbnail", b"thumbnail", "image/webp", {})
    real_mkstemp = tempfile.mkstemp
    removed = []

    def delete_the_last_object_then_mkstemp(*args, **kwargs):
        # Between the put's makedirs and its first file: the directory is empty but for what goes.
        if not removed:
            store.delete("chat-file-variants/org/file/thumbnail")
            removed.append(not os.path.exists(os.path.join(store.root, "chat-file-variants")))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", delete_the_last_object_then_mkstemp)
    store.put("chat-file-variants/org/file/preview", io.BytesIO(b"preview"), "image/webp", {"a": "b"})

    assert removed == [True]  # the delete did remove the directories under the put
    info = store.head("chat-file-variants/org/file/preview")
    assert (info.size, info.content_type, info.metadata) == (7, "image/webp", {"a": "b"})
    assert read_object(store, "chat-file-variants/org/file/preview") == b"preview"
    assert sorted(os.listdir(directory)) == ["preview", "preview.meta.json"]


def test_puts_and_deletes_racing_in_one_directory_all_succeed(tmp_path):
    store = LocalStore(tmp_path / "objects")
    errors = []

    def churn(name):
        key = f"chat-file-variants/org/file/{name}"
        try:
            for round_ in range(300):
                data = f"{name} {round_}".encode()
                store.put(key, data, "image/webp", {})
                assert read_object(store, key) == data
                store.delete(key)
        except BaseException as error:  # noqa: BLE001 - reported below, with its thread
            errors.append((name, error))

    threads = [threading.Thread(target=churn, args=(name,)) for name in ("thumbnail", "preview", "other")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert os.listdir(store.root) == []


# --- a real gunicorn worker, SIGKILLed between the two writes ----------------

class RowWriteBlocker:
    """Holds the database's lock on chatfile inserts from another connection.

    Reads go on, so an upload gets as far as writing its object, then waits
    at its INSERT: the window between the two writes, held open for as long as
    the test needs, with nothing in the service's code to help.
    """

    def __init__(self, database_url):
        self.database_url = database_url
        self.is_sqlite = database_url.startswith("sqlite")

    def __enter__(self):
        if self.is_sqlite:
            self.connection = sqlite3.connect(self.database_url.split("sqlite:///", 1)[1], isolation_level=None)
            self.connection.execute("BEGIN IMMEDIATE")  # the one write lock; the worker's busy wait is 10 s
        else:
            self.connection = psycopg2.connect(self.database_url)
            self.connection.cursor().execute('LOCK TABLE "chatfile" IN SHARE MODE')
        return self

    def waiting_insert(self):
        """PostgreSQL: the pid of the backend whose INSERT waits on our lock, or None."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"chatfile\"%'"
            )
            row = cursor.fetchone()
        return row and row[0]

    def end_session(self, pid):
        """PostgreSQL notices a dead client only on its next read: end its session as it would."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
            assert cursor.fetchone()[0] is True

    def row_count(self):
        return self._query('SELECT COUNT(*) FROM "chatfile"')[0]

    def _query(self, sql):
        if self.is_sqlite:
            return self.connection.execute(sql).fetchone()
        with self.connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()

    def __exit__(self, *exc_info):
        if self.is_sqlite:
            self.connection.execute("ROLLBACK")
        else:
            self.connection.rollback()
        self.connection.close()


def is_dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture(params=["sqlite-local", "postgres-s3"])
def one_worker_service(request, tmp_path):
    settings = backend_settings(request, tmp_path)
    server = GunicornServer({**settings, "WEB_CONCURRENCY": 1, "WEB_THREADS": 4}, work_dir=str(tmp_path))
    server.start()
    yield server, settings, config.load(settings)
    server.stop()


def test_a_worker_killed_between_the_object_and_its_row_leaves_garbage_gc_removes(one_worker_service):
    server, settings, effective = one_worker_service
    store, prefix = storage.from_config(effective), effective["S3_PREFIX"]
    account = server.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    files_url = f"{server.url}/api/v2/chats/files?organization={account['organization_id']}"

    def post_image():
        return requests.post(files_url, data=make_image(), headers={**headers, "Content-Type": "image/png"}, timeout=30)

    kept = post_image().json()["id"]
    kept_key = object_key(prefix, account["organization_id"], kept)
    outcome = []
    with RowWriteBlocker(settings["DATABASE_URL"]) as blocker:
        request_thread = threading.Thread(target=lambda: outcome.append(_attempt(post_image)))
        request_thread.start()
        garbage = wait_for(lambda: [key for key, _ in store.iter_objects(prefix) if key != kept_key],
                           "the interrupted upload's object")
        backend = None if blocker.is_sqlite else wait_for(blocker.waiting_insert, "the blocked INSERT")
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: is_dead(pid), f"worker {pid} to die")
        if backend:
            blocker.end_session(backend)
        request_thread.join(timeout=30)
        assert blocker.row_count() == 1
    assert outcome and isinstance(outcome[0], requests.ConnectionError)  # never acknowledged
    variants_prefix = effective["VARIANTS_PREFIX"]
    garbage_variants = [key for key, _ in store.iter_objects(variants_prefix) if kept not in key]

    report = server.flask("gc-storage", "--older-than", "0")

    assert report["deleted"] == garbage + garbage_variants
    assert report["kept_with_row"] == 2  # the kept file and its thumbnail
    assert [key for key, _ in store.iter_objects(prefix)] == [kept_key]
    assert [key for key, _ in store.iter_objects(variants_prefix)] == [f"{variants_prefix}{kept_key[len(prefix):]}/thumbnail"]
    download = requests.get(f"{server.url}/api/v2/chats/files/{kept}", headers=headers, timeout=30)
    assert download.status_code == 200


def _attempt(call):
    try:
        return call()
    except requests.RequestException as error:
        return error

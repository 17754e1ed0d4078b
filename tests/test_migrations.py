"""Schema migrations: ``init-db`` upgrades a database the first release made, rows and all.

The version-1 schema below is frozen as the first release created it (its
``create_tables`` output, per dialect), with rows written the way that release
wrote them, so these tests keep describing a real old install when the models
move on.
"""

import datetime
import hashlib
import json
import threading
import uuid

import pytest
from peewee import PostgresqlDatabase

import migrations
import models
from app import create_app
from harness.imaging import make_image
from storage import get_storage, object_key
from web import auth

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)

VERSION_1_TABLES = {
    "sqlite": [
        'CREATE TABLE "organization" ("id" TEXT NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, '
        '"created_at" DATETIME NOT NULL)',
        'CREATE UNIQUE INDEX "organization_name" ON "organization" ("name")',
        'CREATE TABLE "user" ("id" TEXT NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, '
        '"created_at" DATETIME NOT NULL)',
        'CREATE UNIQUE INDEX "user_name" ON "user" ("name")',
        'CREATE TABLE "membership" ("id" INTEGER NOT NULL PRIMARY KEY, "user_id" TEXT NOT NULL, '
        '"organization_id" TEXT NOT NULL, FOREIGN KEY ("user_id") REFERENCES "user" ("id") ON DELETE CASCADE, '
        'FOREIGN KEY ("organization_id") REFERENCES "organization" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "membership_user_id" ON "membership" ("user_id")',
        'CREATE INDEX "membership_organization_id" ON "membership" ("organization_id")',
        'CREATE UNIQUE INDEX "membership_user_id_organization_id" ON "membership" ("user_id", "organization_id")',
        'CREATE TABLE "apikey" ("id" VARCHAR(32) NOT NULL PRIMARY KEY, "user_id" TEXT NOT NULL, '
        '"secret_hash" VARCHAR(64) NOT NULL, "created_at" DATETIME NOT NULL, "expires_at" DATETIME NOT NULL, '
        'FOREIGN KEY ("user_id") REFERENCES "user" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "apikey_user_id" ON "apikey" ("user_id")',
        'CREATE INDEX "apikey_expires_at" ON "apikey" ("expires_at")',
        'CREATE TABLE "chatfile" ("id" TEXT NOT NULL PRIMARY KEY, "owner_id" TEXT NOT NULL, '
        '"organization_id" TEXT NOT NULL, "name" VARCHAR(255), "content_type" VARCHAR(64) NOT NULL, '
        '"size" INTEGER NOT NULL, "sha256" VARCHAR(64) NOT NULL, "width" INTEGER NOT NULL, '
        '"height" INTEGER NOT NULL, "created_at" DATETIME NOT NULL, '
        'FOREIGN KEY ("owner_id") REFERENCES "user" ("id") ON DELETE CASCADE, '
        'FOREIGN KEY ("organization_id") REFERENCES "organization" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "chatfile_owner_id" ON "chatfile" ("owner_id")',
        'CREATE INDEX "chatfile_organization_id" ON "chatfile" ("organization_id")',
        'CREATE TABLE "chat" ("id" TEXT NOT NULL PRIMARY KEY, "owner_id" TEXT NOT NULL, "title" TEXT NOT NULL, '
        '"archived" INTEGER NOT NULL, "workspace" TEXT, "created_at" DATETIME NOT NULL, '
        '"updated_at" DATETIME NOT NULL, FOREIGN KEY ("owner_id") REFERENCES "user" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "chat_owner_id" ON "chat" ("owner_id")',
        'CREATE INDEX "chat_owner_id_created_at" ON "chat" ("owner_id", "created_at")',
    ],
    "postgres": [
        'CREATE TABLE "organization" ("id" UUID NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, '
        '"created_at" TIMESTAMP NOT NULL)',
        'CREATE UNIQUE INDEX "organization_name" ON "organization" ("name")',
        'CREATE TABLE "user" ("id" UUID NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, '
        '"created_at" TIMESTAMP NOT NULL)',
        'CREATE UNIQUE INDEX "user_name" ON "user" ("name")',
        'CREATE TABLE "membership" ("id" SERIAL NOT NULL PRIMARY KEY, "user_id" UUID NOT NULL, '
        '"organization_id" UUID NOT NULL, FOREIGN KEY ("user_id") REFERENCES "user" ("id") ON DELETE CASCADE, '
        'FOREIGN KEY ("organization_id") REFERENCES "organization" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "membership_user_id" ON "membership" ("user_id")',
        'CREATE INDEX "membership_organization_id" ON "membership" ("organization_id")',
        'CREATE UNIQUE INDEX "membership_user_id_organization_id" ON "membership" ("user_id", "organization_id")',
        'CREATE TABLE "apikey" ("id" VARCHAR(32) NOT NULL PRIMARY KEY, "user_id" UUID NOT NULL, '
        '"secret_hash" VARCHAR(64) NOT NULL, "created_at" TIMESTAMP NOT NULL, "expires_at" TIMESTAMP NOT NULL, '
        'FOREIGN KEY ("user_id") REFERENCES "user" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "apikey_user_id" ON "apikey" ("user_id")',
        'CREATE INDEX "apikey_expires_at" ON "apikey" ("expires_at")',
        'CREATE TABLE "chatfile" ("id" UUID NOT NULL PRIMARY KEY, "owner_id" UUID NOT NULL, '
        '"organization_id" UUID NOT NULL, "name" VARCHAR(255), "content_type" VARCHAR(64) NOT NULL, '
        '"size" BIGINT NOT NULL, "sha256" VARCHAR(64) NOT NULL, "width" INTEGER NOT NULL, '
        '"height" INTEGER NOT NULL, "created_at" TIMESTAMP NOT NULL, '
        'FOREIGN KEY ("owner_id") REFERENCES "user" ("id") ON DELETE CASCADE, '
        'FOREIGN KEY ("organization_id") REFERENCES "organization" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "chatfile_owner_id" ON "chatfile" ("owner_id")',
        'CREATE INDEX "chatfile_organization_id" ON "chatfile" ("organization_id")',
        'CREATE TABLE "chat" ("id" UUID NOT NULL PRIMARY KEY, "owner_id" UUID NOT NULL, "title" TEXT NOT NULL, '
        '"archived" BOOLEAN NOT NULL, "workspace" TEXT, "created_at" TIMESTAMP NOT NULL, '
        '"updated_at" TIMESTAMP NOT NULL, FOREIGN KEY ("owner_id") REFERENCES "user" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "chat_owner_id" ON "chat" ("owner_id")',
        'CREATE INDEX "chat_owner_id_created_at" ON "chat" ("owner_id", "created_at")',
    ],
}
TABLES = ["organization", "user", "membership", "apikey", "chatfile", "chat"]


def dialect(database_url):
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


def bare_app(database_url, storage_config, tmp_path):
    """The app without init-db: the database is whatever the test puts there."""
    return create_app({"DATABASE_URL": database_url, "WORKSPACES_ROOT": str(tmp_path / "workspaces"),
                       "TESTING": True, **storage_config})


class Legacy:
    """What a version-1 install holds: one user with a token, a stored file, a chat."""

    def __init__(self):
        self.organization_id = uuid.uuid4()
        self.user_id = uuid.uuid4()
        self.file_id = uuid.uuid4()
        self.chat_id = uuid.uuid4()
        self.key_id, self.secret = "0123456789", "old-secret"
        self.image = make_image("image/png", 40, 30)

    @property
    def token(self):
        return f"{self.key_id}-{self.secret}"

    def write(self, app, kind):
        """Create the version-1 tables and fill them as the first release did (UUIDs as hex)."""
        created = "2024-05-01 12:00:00"
        expires = (datetime.datetime.now() + datetime.timedelta(days=30)).strftime("%Y-%m-%d %H:%M:%S")
        rows = [
            ("organization", ("id", "name", "created_at"), (self.organization_id.hex, "acme", created)),
            ("user", ("id", "name", "created_at"), (self.user_id.hex, "alice", created)),
            ("membership", ("user_id", "organization_id"), (self.user_id.hex, self.organization_id.hex)),
            ("apikey", ("id", "user_id", "secret_hash", "created_at", "expires_at"),
             (self.key_id, self.user_id.hex, auth.hash_secret(self.secret), created, expires)),
            ("chatfile", ("id", "owner_id", "organization_id", "name", "content_type", "size", "sha256", "width",
                          "height", "created_at"),
             (self.file_id.hex, self.user_id.hex, self.organization_id.hex, "old.png", "image/png",
              len(self.image), hashlib.sha256(self.image).hexdigest(), 40, 30, created)),
            ("chat", ("id", "owner_id", "title", "archived", "workspace", "created_at", "updated_at"),
             (self.chat_id.hex, self.user_id.hex, "Old chat", False, None, created, created)),
        ]
        database = models.db.obj
        with app.app_context(), models.db.connection_context(), models.db.atomic():
            for statement in VERSION_1_TABLES[kind]:
                database.execute_sql(statement)
            for table, columns, values in rows:
                names = ", ".join(f'"{column}"' for column in columns)
                marks = ", ".join([database.param] * len(values))
                database.execute_sql(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', values)
            get_storage().put(
                object_key(app.config["S3_PREFIX"], self.organization_id, self.file_id), self.image, "image/png", {}
            )


@pytest.fixture
def legacy(database_url, storage_config, tmp_path):
    app = bare_app(database_url, storage_config, tmp_path)
    old = Legacy()
    old.write(app, dialect(database_url))
    old.app = app
    yield old
    models.close_all_connections()


@pytest.fixture
def empty_app(database_url, storage_config, tmp_path):
    app = bare_app(database_url, storage_config, tmp_path)
    yield app
    models.close_all_connections()


@pytest.fixture
def other_database_url(database_url, request, tmp_path):
    """A second empty database of the same kind."""
    if dialect(database_url) == "sqlite":
        yield f"sqlite:///{tmp_path}/other.db"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"test_other_{uuid.uuid4().hex[:12]}"
    yield server.create_database(name)
    models.close_all_connections()
    server.drop_database(name)


def init_db(app, *args):
    result = app.test_cli_runner().invoke(args=["init-db", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def row_counts(app):
    with app.app_context(), models.db.connection_context():
        return {table: models.db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in TABLES}


def recorded_versions():
    with models.db.connection_context():
        return [row.version for row in migrations.SchemaVersion.select().order_by(migrations.SchemaVersion.version)]


def describe_schema(app):
    """Tables, columns and indexes as the database reports them: what two schemas must share."""
    with app.app_context(), models.db.connection_context():
        database = models.db.obj
        return {
            table: {
                "columns": sorted((c.name, c.data_type.lower(), c.null, c.primary_key) for c in database.get_columns(table)),
                "indexes": sorted((i.name, tuple(i.columns), i.unique) for i in database.get_indexes(table)),
            }
            for table in sorted(database.get_tables())
        }


def index_names(table):
    with models.db.connection_context():
        return {index.name for index in models.db.get_indexes(table)}


def test_init_db_upgrades_a_version_1_database_keeping_its_rows(legacy):
    before = row_counts(legacy.app)
    assert before == {table: 1 for table in TABLES}

    latest = migrations.LATEST
    assert init_db(legacy.app) == {"from_version": 1, "version": latest, "applied": sorted(migrations.MIGRATIONS)}
    assert init_db(legacy.app) == {"from_version": latest, "version": latest, "applied": []}

    assert row_counts(legacy.app) == before
    with legacy.app.app_context():
        assert recorded_versions() == [1, *sorted(migrations.MIGRATIONS)]
        assert "chatfile_owner_id_created_at" in index_names("chatfile")
        assert "chatfile_owner_id" not in index_names("chatfile")
        assert migrations.current_version() == migrations.LATEST


def test_init_db_prints_what_it_did(legacy):
    runner = legacy.app.test_cli_runner()
    latest = migrations.LATEST
    assert runner.invoke(args=["init-db"]).output == f"Upgraded the database schema from version 1 to {latest}.\n"
    assert runner.invoke(args=["init-db"]).output == f"Database schema is up to date (version {latest}).\n"


def test_the_app_serves_old_rows_and_new_uploads_after_the_upgrade(legacy):
    init_db(legacy.app)
    client = legacy.app.test_client()
    headers = {"Coder-Session-Token": legacy.token}

    old_file = client.get(f"/api/v2/chats/files/{legacy.file_id}", headers=headers)
    assert old_file.status_code == 200
    assert old_file.data == legacy.image
    assert old_file.headers["Content-Disposition"] == 'inline; filename="old.png"'
    # Variants came after version 1: none until generate-variants makes them.
    info = client.get(f"/api/v2/chats/files/{legacy.file_id}/info", headers=headers).json
    assert (info["animated"], info["thumbnail"], info["preview"]) == (False, None, None)
    assert client.get(f"/api/v2/chats/files/{legacy.file_id}/thumbnail", headers=headers).status_code == 404
    backfill = legacy.app.test_cli_runner().invoke(args=["generate-variants", "--json"])
    assert json.loads(backfill.output)["generated"] == 1, backfill.output
    thumbnail = client.get(f"/api/v2/chats/files/{legacy.file_id}/thumbnail", headers=headers)
    assert (thumbnail.status_code, thumbnail.headers["Content-Type"]) == (200, "image/webp")
    chats = client.get("/api/v2/chats", headers=headers)
    assert [chat["id"] for chat in chats.json] == [str(legacy.chat_id)]

    data = make_image("image/jpeg", 20, 10)
    upload = client.post(f"/api/v2/chats/files?organization={legacy.organization_id}", data=data,
                         headers={**headers, "Content-Type": "image/jpeg"})
    assert upload.status_code == 201, upload.json
    assert client.get(f"/api/v2/chats/files/{upload.json['id']}", headers=headers).data == data

    # New rows in old tables: the membership id sequence carried on where version 1 left it.
    joined = legacy.app.test_cli_runner().invoke(args=["create-user", "bob", "--org", "acme", "--json"])
    assert joined.exit_code == 0, joined.output


def test_an_upgraded_database_has_the_schema_a_fresh_one_gets(legacy, storage_config, other_database_url, tmp_path):
    init_db(legacy.app)
    upgraded = describe_schema(legacy.app)
    models.close_all_connections()

    fresh_app = bare_app(other_database_url, storage_config, tmp_path)
    assert init_db(fresh_app) == {"from_version": None, "version": migrations.LATEST, "applied": []}
    fresh = describe_schema(fresh_app)
    assert upgraded == fresh


def test_init_db_on_an_empty_database_creates_the_latest_schema(empty_app):
    runner = empty_app.test_cli_runner()
    assert runner.invoke(args=["init-db"]).output == f"Created the database schema at version {migrations.LATEST}.\n"
    assert init_db(empty_app) == {"from_version": migrations.LATEST, "version": migrations.LATEST, "applied": []}
    with empty_app.app_context():
        assert recorded_versions() == [migrations.LATEST]
        assert set(TABLES) <= set(models.db.get_tables())


def test_init_db_refuses_a_database_newer_than_this_release(empty_app):
    init_db(empty_app)
    with empty_app.app_context(), models.db.connection_context():
        migrations.SchemaVersion.create(version=migrations.LATEST + 1)
    result = empty_app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert f"schema version {migrations.LATEST + 1}, newer than this release knows" in result.output


def test_init_db_refuses_a_database_with_only_some_tables(empty_app):
    with empty_app.app_context(), models.db.connection_context():
        models.db.create_tables([models.Organization, models.User])
    result = empty_app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert "but not apikey, chat, chatfile, membership" in result.output
    with empty_app.app_context():
        assert migrations.VERSION_TABLE not in models.db.get_tables()


def add_a_migration(monkeypatch, steps):
    """One more schema version, made of ``steps``, for this test only."""
    version = migrations.LATEST + 1
    monkeypatch.setitem(migrations.MIGRATIONS, version, steps)
    monkeypatch.setattr(migrations, "LATEST", version)


def test_a_failing_migration_leaves_the_database_as_it_was(legacy, monkeypatch):
    def add_a_column_then_fail(migrator):
        from peewee import IntegerField

        return [migrator.add_column("chat", "pinned", IntegerField(null=True)), migrator.drop_index("chat", "nope")]

    add_a_migration(monkeypatch, add_a_column_then_fail)
    before = describe_schema(legacy.app)

    result = legacy.app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert "Database error, nothing was changed" in result.output
    assert describe_schema(legacy.app) == before  # the migrations, the version table and the column all rolled back
    assert row_counts(legacy.app) == {table: 1 for table in TABLES}


def test_a_migration_that_would_leave_rows_pointing_at_nothing_is_refused_and_rolled_back(legacy, monkeypatch):
    """SQLite runs migrations with foreign keys off (a table rebuild must not cascade), so it checks them before
    the commit: a step that leaves a chat owned by no user fails the run and changes nothing."""

    def orphan_the_chat(migrator):
        def rewrite():
            models.db.execute_sql(f"UPDATE chat SET owner_id = {models.db.obj.param}", (uuid.uuid4().hex,))

        return [migrations._RowChange(rewrite)]

    add_a_migration(monkeypatch, orphan_the_chat)
    before = describe_schema(legacy.app)

    result = legacy.app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    if not isinstance(models.db.obj, PostgresqlDatabase):  # PostgreSQL refuses the UPDATE itself
        assert "The migration would leave rows pointing at nothing" in result.output
    assert describe_schema(legacy.app) == before
    assert row_counts(legacy.app) == {table: 1 for table in TABLES}
    with legacy.app.app_context(), models.db.connection_context():
        assert models.Chat.get_by_id(legacy.chat_id).owner_id == legacy.user_id


def test_concurrent_init_db_runs_migrate_once(legacy):
    barrier = threading.Barrier(2)
    changes, errors = [], []

    def run():
        try:
            with legacy.app.app_context():
                barrier.wait(timeout=10)
                changes.append(migrations.upgrade())
        except Exception as error:  # reported below, with the test's assertion
            errors.append(error)
        finally:
            models.release_connection()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(change.applied for change in changes) == [(), tuple(sorted(migrations.MIGRATIONS))]
    with legacy.app.app_context():
        assert recorded_versions() == [1, *sorted(migrations.MIGRATIONS)]


def test_chat_workspaces_become_relative_to_their_owners_directory(legacy):
    """Migration 3: a workspace that named the owner's directory loses that prefix."""
    owner = str(legacy.user_id)
    rows = {uuid.uuid4(): f"{owner}/proj/one", uuid.uuid4(): owner, uuid.uuid4(): "shared/proj"}
    database = models.db.obj
    with legacy.app.app_context(), models.db.connection_context():
        for chat_id, workspace in rows.items():
            database.execute_sql(
                'INSERT INTO "chat" ("id", "owner_id", "title", "archived", "workspace", "created_at", "updated_at") '
                f"VALUES ({', '.join([database.param] * 7)})",
                (chat_id.hex, legacy.user_id.hex, "t", False, workspace, "2024-05-01 12:00:00", "2024-05-01 12:00:00"),
            )

    init_db(legacy.app)

    with legacy.app.app_context(), models.db.connection_context():
        after = {chat.id: chat.workspace for chat in models.Chat.select().where(models.Chat.id.in_(list(rows)))}
    assert after == dict(zip(rows, ["proj/one", None, "shared/proj"]))


def test_from_version_4_old_files_stay_unlinked_usage_is_counted_and_nothing_is_deleted(legacy, monkeypatch):
    """Migration 6 from the previous release's schema: usage per organization is originals plus the variants
    that are not the original itself; no file is linked, none deleted, whatever the retention settings."""
    with monkeypatch.context() as at_version_4:
        at_version_4.setattr(migrations, "MIGRATIONS", {v: m for v, m in migrations.MIGRATIONS.items() if v <= 4})
        at_version_4.setattr(migrations, "LATEST", 4)
        init_db(legacy.app)
    globex, bob = uuid.uuid4(), uuid.uuid4()
    acme_file, globex_file = uuid.uuid4(), uuid.uuid4()
    created = "2024-06-01 12:00:00"
    file_columns = ("id", "owner_id", "organization_id", "name", "content_type", "size", "sha256", "width",
                    "height", "created_at", "animated")
    rows = [
        ("organization", ("id", "name", "created_at"), (globex.hex, "globex", created)),
        ("user", ("id", "name", "created_at"), (bob.hex, "bob", created)),
        ("chatfile", file_columns, (acme_file.hex, legacy.user_id.hex, legacy.organization_id.hex, "b.png",
                                    "image/png", 1000, "0" * 64, 10, 10, created, False)),
        ("chatfile", file_columns, (globex_file.hex, bob.hex, globex.hex, "c.png", "image/png", 5000, "1" * 64, 10,
                                    10, created, False)),
    ]
    variant_columns = ("file_id", "variant", "original", "content_type", "width", "height", "size", "sha256")
    for file_id, variant, original, size in [(acme_file, "thumbnail", False, 111), (acme_file, "preview", True, 1000),
                                             (globex_file, "thumbnail", False, 50),
                                             (globex_file, "preview", False, 70)]:
        rows.append(("chatfilevariant", variant_columns,
                     (file_id.hex, variant, original, "image/webp", 10, 10, size, "2" * 64)))
    database = models.db.obj
    with legacy.app.app_context(), models.db.connection_context():
        for table, columns, values in rows:
            names = ", ".join(f'"{column}"' for column in columns)
            database.execute_sql(f'INSERT INTO "{table}" ({names}) VALUES ({", ".join([database.param] * len(values))})',
                                 values)
    legacy.app.config.update(UNLINKED_FILE_RETENTION=1, ARCHIVED_CHAT_RETENTION_DAYS=1)  # settings change nothing
    tables = [*TABLES, "chatfilevariant"]

    def counts():
        with legacy.app.app_context(), models.db.connection_context():
            return {table: database.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}

    before = counts()
    assert recorded_versions_of(legacy.app)[-1] == 4

    init_db(legacy.app)

    assert counts() == before
    assert recorded_versions_of(legacy.app)[-1] == migrations.LATEST
    with legacy.app.app_context(), models.db.connection_context():
        assert models.ChatFileLink.select().count() == 0
        usage = {row.organization_id: (row.bytes, row.files) for row in models.OrganizationUsage.select()}
    assert usage == {legacy.organization_id: (len(legacy.image) + 1000 + 111, 2), globex: (5000 + 50 + 70, 1)}
    with legacy.app.app_context():
        assert get_storage().head(object_key(legacy.app.config["S3_PREFIX"], legacy.organization_id, legacy.file_id))
    old_chat = legacy.app.test_client().get(f"/api/v2/chats/{legacy.chat_id}",
                                            headers={"Coder-Session-Token": legacy.token})
    assert old_chat.status_code == 200 and old_chat.json["files"] == []


def recorded_versions_of(app):
    with app.app_context():
        return recorded_versions()
def test_version_5_lets_files_without_pixels_have_no_width_or_height(legacy, monkeypatch):
    """Migration 5: text and PDF files (filetypes) have no dimensions; the image rows keep theirs."""
    with monkeypatch.context() as at_version_4:
        for version in [version for version in migrations.MIGRATIONS if version > 4]:
            at_version_4.delitem(migrations.MIGRATIONS, version)
        at_version_4.setattr(migrations, "LATEST", 4)
        assert init_db(legacy.app)["version"] == 4
    with legacy.app.app_context(), models.db.connection_context():
        nullable = {column.name: column.null for column in models.db.get_columns("chatfile")}
    assert (nullable["width"], nullable["height"]) == (False, False)

    change = init_db(legacy.app)
    assert change["from_version"] == 4 and 5 in change["applied"]

    with legacy.app.app_context(), models.db.connection_context():
        nullable = {column.name: column.null for column in models.db.get_columns("chatfile")}
        old = models.ChatFile.get_by_id(legacy.file_id)
        assert "chatfile_owner_id_created_at" in index_names("chatfile")  # the table rebuild kept its indexes
    assert (nullable["width"], nullable["height"]) == (True, True)
    assert (old.width, old.height, old.name) == (40, 30, "old.png")
    client = legacy.app.test_client()
    headers = {"Coder-Session-Token": legacy.token}
    response = client.post(f"/api/v2/chats/files?organization={legacy.organization_id}", data=b"# notes\n",
                           headers={**headers, "Content-Type": "text/markdown"})
    assert response.status_code == 201, response.json
    info = client.get(f"/api/v2/chats/files/{response.json['id']}/info", headers=headers).json
    assert (info["width"], info["height"]) == (None, None)
    assert client.get(f"/api/v2/chats/files/{legacy.file_id}", headers=headers).data == legacy.image

"""Schema versions: ``init-db`` creates a new database at the latest version,
or upgrades an older one in place, keeping its rows.

``schema_version`` holds one row per version the database reached; the
highest is its version. Version 1 is what the first release created, with no
version table: a database holding those tables and no ``schema_version`` is a
version-1 install. Every later version is a function of a playhouse
``SchemaMigrator`` returning its operations. Migrations name tables, columns
and indexes literally: the models describe only the latest version.

A run is one transaction (SQLite and PostgreSQL both have transactional DDL)
taken under an exclusive lock, so a crashed ``init-db`` leaves the old
version and a concurrent one waits, then finds nothing left to do.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    Column,
    CompositeKey,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    PostgresqlDatabase,
    Table,
    fn,
)
from playhouse.migrate import Operation, SchemaMigrator
from playhouse.migrate import migrate as run_operations

from models import MODELS, BaseModel, Chat, ChatFile, Organization, db, utcnow  # one way only: models never imports this module

BASELINE = 1
BASELINE_TABLES = frozenset({"organization", "user", "membership", "apikey", "chatfile", "chat"})
# Any constant shared by every instance: PostgreSQL advisory locks are keyed by a number.
ADVISORY_LOCK_ID = 0x63686174_66696C65  # "chatfile"


class SchemaError(Exception):
    """The database is in a state this release cannot migrate."""


class SchemaVersion(BaseModel):
    version = IntegerField(primary_key=True)
    applied_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_version"


VERSION_TABLE = SchemaVersion._meta.table_name


def _index_chatfiles_by_owner_and_date(migrator: SchemaMigrator) -> list[Operation]:
    """A user's files newest first from one index; it also serves lookups by owner
    alone (including the cascade on user deletion), so the owner-only index goes."""
    return [
        migrator.add_index("chatfile", ("owner_id", "created_at")),
        migrator.drop_index("chatfile", "chatfile_owner_id"),
    ]


class _RowChange:
    """A migration step that rewrites rows, run in the same transaction as schema operations."""

    def __init__(self, function: Callable[[], None]) -> None:
        self.run = function


def _chat_workspaces_relative_to_owner(migrator: SchemaMigrator) -> list[_RowChange]:
    """Workspaces became relative to ``WORKSPACES_ROOT/<owner id>/``. A path that
    already started with the owner's directory loses that prefix (it is the owner
    directory itself: cleared, a chat cannot watch all of them); any other path
    keeps its text, now below the owner's directory (the README says what to move)."""

    def rewrite() -> None:
        chat = Table("chat", ("id", "owner_id", "workspace")).bind(db)
        # The columns the table sets as its attributes, which peewee's stubs do not declare.
        chat_id, workspace = Column(chat, "id"), Column(chat, "workspace")
        for row in chat.select().where(workspace.is_null(False)).dicts():
            owner = str(uuid.UUID(str(row["owner_id"])))
            if row["workspace"] == owner or row["workspace"].startswith(owner + "/"):
                relative = row["workspace"][len(owner) + 1:] or None
                chat.update({workspace: relative}).where(chat_id == row["id"]).execute()

    return [_RowChange(rewrite)]


def _add_file_variants(migrator: SchemaMigrator) -> list[Operation]:
    """Thumbnails and previews (imaging/variants.py): one row per variant of a file, and whether a file is animated."""

    class ChatFileVariant(BaseModel):  # as version 4 made it
        file = ForeignKeyField(ChatFile, backref="+", on_delete="CASCADE", index=False)  # no backref on ChatFile
        variant = CharField(max_length=32)
        original = BooleanField(default=False)
        content_type = CharField(max_length=64)
        width = IntegerField()
        height = IntegerField()
        size = BigIntegerField()
        sha256 = CharField(max_length=64)

        class Meta:
            table_name = "chatfilevariant"
            indexes = ((("file", "variant"), True),)

    return [
        migrator.add_column("chatfile", "animated", BooleanField(default=False)),
        Operation(migrator, lambda _migrator: ChatFileVariant.create_table(safe=False)),
    ]


def _files_without_pixels(migrator: SchemaMigrator) -> list[Operation]:
    """Text and PDF attachments have no width or height (filetypes): the columns take NULL."""
    return [migrator.drop_not_null("chatfile", "width"), migrator.drop_not_null("chatfile", "height")]


def _link_files_to_chats_and_count_usage(migrator: SchemaMigrator) -> list[Operation | _RowChange]:
    """Files in chats (issue 20): which chats carry a file, and each organization's stored bytes.

    Files uploaded before links existed are linked to nothing: purge deletes unlinked files only when
    ``UNLINKED_FILE_RETENTION`` is set, and upgrading deletes nothing. Usage starts as what is stored:
    originals plus the variants that are not the original itself.
    """

    class ChatFileLink(BaseModel):  # as version 6 made it
        chat = ForeignKeyField(Chat, backref="+", on_delete="CASCADE", index=False)
        file = ForeignKeyField(ChatFile, backref="+", on_delete="CASCADE")
        created_at = DateTimeField(default=utcnow)

        class Meta:
            table_name = "chatfilelink"
            primary_key = CompositeKey("chat", "file")

    class OrganizationUsage(BaseModel):  # as version 6 made it
        organization = ForeignKeyField(Organization, primary_key=True, backref="+", on_delete="CASCADE")
        bytes = BigIntegerField(default=0)
        files = BigIntegerField(default=0)

        class Meta:
            table_name = "organizationusage"

    def count_usage() -> None:
        db.execute_sql(
            "INSERT INTO organizationusage (organization_id, bytes, files) "
            "SELECT f.organization_id, SUM(f.size) + COALESCE(SUM(v.stored), 0), COUNT(*) FROM chatfile f "
            "LEFT JOIN (SELECT file_id, SUM(size) AS stored FROM chatfilevariant WHERE NOT original "
            "GROUP BY file_id) v ON v.file_id = f.id GROUP BY f.organization_id")

    return [
        Operation(migrator, lambda _migrator: ChatFileLink.create_table(safe=False)),
        Operation(migrator, lambda _migrator: OrganizationUsage.create_table(safe=False)),
        _RowChange(count_usage),
    ]


# A version's steps: playhouse operations, or rows rewritten (both have ``run()``).
MIGRATIONS: dict[int, Callable[[SchemaMigrator], Sequence[Operation | _RowChange]]] = {
    2: _index_chatfiles_by_owner_and_date,
    3: _chat_workspaces_relative_to_owner,
    4: _add_file_variants,
    5: _files_without_pixels,
    6: _link_files_to_chats_and_count_usage,
}
LATEST = max(MIGRATIONS, default=BASELINE)


@dataclass(frozen=True)
class SchemaChange:
    from_version: int | None  # None: the database had none of our tables
    to_version: int
    applied: tuple[int, ...]  # the migrations run, in order


def upgrade() -> SchemaChange:
    """Bring the database to ``LATEST``: create it, migrate it, or leave it as it is."""
    with db.connection_context(), _exclusive_transaction():
        tables = set(db.get_tables())
        current = _version(tables)
        if current is None:
            db.create_tables(MODELS + [SchemaVersion])
            SchemaVersion.create(version=LATEST)
            return SchemaChange(None, LATEST, ())
        if current > LATEST:
            raise SchemaError(
                f"The database is at schema version {current}, newer than this release knows ({LATEST}); "
                "run a newer release."
            )
        if VERSION_TABLE not in tables:
            _adopt_pre_migration_install(tables)
        pending = [version for version in sorted(MIGRATIONS) if version > current]
        migrator = SchemaMigrator.from_database(db)
        for version in pending:
            run_operations(*MIGRATIONS[version](migrator))
            SchemaVersion.create(version=version)
        return SchemaChange(current, LATEST, tuple(pending))


def current_version() -> int | None:
    """The database's schema version, or None when it has none of the service's tables."""
    with db.connection_context():
        return _version(set(db.get_tables()))


def _version(tables: set[str]) -> int | None:
    if VERSION_TABLE in tables:
        return SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar()
    return BASELINE if BASELINE_TABLES & tables else None


def _adopt_pre_migration_install(tables: set[str]) -> None:
    """Record a database the first release created (no version table) as version 1."""
    missing = BASELINE_TABLES - tables
    if missing:
        raise SchemaError(
            f"The database has some of the service's tables but not {', '.join(sorted(missing))}; "
            "restore it from a backup."
        )
    db.create_tables([SchemaVersion])
    SchemaVersion.create(version=BASELINE)


@contextlib.contextmanager
def _exclusive_transaction() -> Iterator[None]:
    """One transaction, one migrator at a time across every instance."""
    if isinstance(db.obj, PostgresqlDatabase):
        with db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
            yield
    else:
        # SQLite alters a column by rebuilding its table, and dropping the old one deletes its rows: with
        # foreign keys on, that cascades to every child (a file's variants and links). So, as SQLite's own
        # procedure says (sqlite.org/lang_altertable.html), foreign keys are off for the run (the pragma is
        # a no-op inside a transaction) and checked before the commit.
        db.execute_sql("PRAGMA foreign_keys = OFF")
        try:
            # The write lock up front, so two runs cannot both read version N.
            with db.atomic(lock_type="IMMEDIATE"):
                yield
                broken = db.execute_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise SchemaError(f"The migration would leave rows pointing at nothing: {broken[:5]}.")
        finally:
            db.execute_sql("PRAGMA foreign_keys = ON")

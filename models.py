"""Peewee models: ids and metadata only, never file bytes.

One ``DatabaseProxy`` is bound at start-up to SQLite (the embedded default)
or pooled PostgreSQL, chosen by ``DATABASE_URL``.
"""

from __future__ import annotations

import datetime
import os
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Callable, Generic, Protocol, Sequence, TypeVar

from peewee import (
    BaseQuery,
    BigIntegerField,
    BooleanField,
    CharField,
    CompositeKey,
    Database,
    DatabaseProxy,
    DateTimeField,
    Field,
    ForeignKeyField,
    IntegerField,
    Model,
    ModelSelect,
    TextField,
    UUIDField,
)
from playhouse import db_url

if TYPE_CHECKING:
    from flask import Flask

db = DatabaseProxy()

def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def rfc3339(moment: datetime.datetime) -> str:
    """A stored (naive UTC) time as the API shows it, e.g. ``2026-11-22T13:00:00.123Z``."""
    return moment.isoformat(timespec="milliseconds") + "Z"


class BaseModel(Model):
    class Meta:
        database = db


class Organization(BaseModel):
    id = UUIDField(primary_key=True, default=uuid.uuid4)
    name = CharField(max_length=255, unique=True)
    created_at = DateTimeField(default=utcnow)


class User(BaseModel):
    id = UUIDField(primary_key=True, default=uuid.uuid4)
    name = CharField(max_length=255, unique=True)
    created_at = DateTimeField(default=utcnow)


class Membership(BaseModel):
    user = ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    organization = ForeignKeyField(Organization, backref="memberships", on_delete="CASCADE")
    # Declared for mypy only (bare annotations, nothing at run time): what peewee adds, each foreign key's raw id.
    user_id: uuid.UUID
    organization_id: uuid.UUID

    class Meta:
        indexes = ((("user", "organization"), True),)


class ApiKey(BaseModel):
    """A session token ``<id>-<secret>``: the id is looked up, the secret only hashed."""

    id = CharField(max_length=32, primary_key=True)
    user = ForeignKeyField(User, backref="api_keys", on_delete="CASCADE")
    secret_hash = CharField(max_length=64)
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(index=True)
    # Declared for mypy only (bare annotations, nothing at run time): what peewee adds, the foreign key's raw id.
    user_id: uuid.UUID


class ChatFile(BaseModel):
    id = UUIDField(primary_key=True, default=uuid.uuid4)
    # Indexed by (owner, created_at) below, which also serves lookups by owner alone.
    owner = ForeignKeyField(User, backref="chat_files", on_delete="CASCADE", index=False)
    organization = ForeignKeyField(Organization, backref="chat_files", on_delete="CASCADE")
    name = CharField(max_length=255, null=True)
    content_type = CharField(max_length=64)
    size = BigIntegerField()
    sha256 = CharField(max_length=64)
    width = IntegerField(null=True)  # as displayed: EXIF orientation applied; None without pixels (text, PDF)
    height = IntegerField(null=True)
    created_at = DateTimeField(default=utcnow)
    animated = BooleanField(default=False)
    # Declared for mypy only (bare annotations, nothing at run time): what peewee adds, each foreign key's raw
    # id, and ChatFileVariant.file's backref.
    owner_id: uuid.UUID
    organization_id: uuid.UUID
    variants: ModelSelect[ChatFileVariant]

    class Meta:
        indexes = ((("owner", "created_at"), False),)


class ChatFileVariant(BaseModel):
    """A thumbnail or preview of a file (variants.VARIANTS). ``original``: the file's own bytes serve as it."""

    # Indexed by (file, variant) below, which also serves lookups and the cascade by file alone.
    file = ForeignKeyField(ChatFile, backref="variants", on_delete="CASCADE", index=False)
    variant = CharField(max_length=32)
    original = BooleanField(default=False)
    content_type = CharField(max_length=64)
    width = IntegerField()
    height = IntegerField()
    size = BigIntegerField()
    sha256 = CharField(max_length=64)
    # Declared for mypy only (bare annotations, nothing at run time): what peewee adds, the foreign key's raw id.
    file_id: uuid.UUID

    class Meta:
        indexes = ((("file", "variant"), True),)


class Chat(BaseModel):
    id = UUIDField(primary_key=True, default=uuid.uuid4)
    owner = ForeignKeyField(User, backref="chats", on_delete="CASCADE")
    title = TextField(default="")
    archived = BooleanField(default=False)
    workspace = TextField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    # Declared for mypy only (bare annotations, nothing at run time): what peewee adds, the foreign key's raw id.
    owner_id: uuid.UUID

    class Meta:
        indexes = ((("owner", "created_at"), False),)


class ChatFileLink(BaseModel):
    """A file carried by a chat's message (upstream Coder's ``chat_file_links``); a file may be in several chats.

    The primary key (chat, file) serves a chat's files and its count; the index on file serves
    the chats a file is in, the cascade when a file is deleted, and purge's "linked to nothing".
    """

    chat = ForeignKeyField(Chat, backref="file_links", on_delete="CASCADE", index=False)
    file = ForeignKeyField(ChatFile, backref="chat_links", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow)
    # Declared for mypy only (bare annotations, nothing at run time): the foreign keys' raw ids.
    chat_id: uuid.UUID
    file_id: uuid.UUID

    class Meta:
        primary_key = CompositeKey("chat", "file")


class OrganizationUsage(BaseModel):
    """Bytes stored for an organization (originals plus stored variants) and its file count.

    Kept as a counter, changed in the same statement that checks the quota, so an upload
    neither scans the organization's files nor races another upload past the quota.
    """

    organization = ForeignKeyField(Organization, primary_key=True, backref="+", on_delete="CASCADE")
    bytes = BigIntegerField(default=0)
    files = BigIntegerField(default=0)
    # Declared for mypy only (bare annotations, nothing at run time): the foreign key's raw id.
    organization_id: uuid.UUID


MODELS: list[type[BaseModel]] = [Organization, User, Membership, ApiKey, ChatFile, ChatFileVariant, Chat,
                                 ChatFileLink, OrganizationUsage]

M = TypeVar("M", bound=Model)
Q = TypeVar("Q", bound=BaseQuery)


class Cursor(Protocol):
    """The DB-API cursor (sqlite3's or psycopg2's) a prepared query ran on."""

    rowcount: int  # rows an UPDATE or DELETE changed

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> object: ...


class PreparedQuery(Generic[Q]):
    """A query on the hot path whose SQL peewee builds once per database instead of on every call.

    Building a query's SQL costs peewee more CPU than the database spends
    running it (a ChatFile lookup: ~0.5 ms of Python to compose, ~0.05 ms to
    run; an upload's three INSERTs ~2 ms). ``build(*samples)`` returns the
    query with one placeholder value per field in ``fields``, used in that
    order; calls then run the same SQL with each value converted by its
    field, as peewee would. A query whose parameters are not exactly those
    values, in that order, is refused when first built.
    """

    def __init__(
        self, build: Callable[..., Q], fields: Sequence[Field[Any]], samples: Sequence[object]
    ) -> None:
        self.build = build
        self.fields = fields
        self.samples = samples
        # Per database: quoting and placeholders differ.
        self._prepared: weakref.WeakKeyDictionary[Database, str] = weakref.WeakKeyDictionary()

    def execute(self, *values: object) -> Cursor:
        """Run the query with ``values``; returns the cursor (the caller closes it)."""
        database = db.obj
        sql = self._sql(database)
        return database.execute_sql(sql, [field.db_value(value) for field, value in zip(self.fields, values)])

    def _sql(self, database: Database) -> str:
        sql = self._prepared.get(database)
        if sql is None:
            query = self.build(*self.samples)
            sql, params = query.sql()
            expected = [field.db_value(sample) for field, sample in zip(self.fields, self.samples)]
            if params != expected:  # the query must use exactly its fields' values, in order
                raise ValueError(f"prepared query takes {params!r}, not {expected!r}")
            self._check(query)
            self._prepared[database] = sql
        return sql

    def _check(self, query: Q) -> None:
        """At first build: refuse a query this kind cannot run, keep what it needs of it."""


class PreparedSelect(PreparedQuery["ModelSelect[M]"], Generic[M]):
    """A prepared SELECT of some of one model's columns: ``first()`` is its first row as a model instance.

    The row's columns are converted by their fields, as peewee would; columns
    not selected are absent from the instance (None), not defaulted.
    """

    _returning: list[Any] | None = None  # the built query's columns, the same for every database

    def first(self, *values: object) -> M | None:
        cursor = self.execute(*values)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        assert self._returning is not None  # set by execute(), when it first built the query
        model: type[M] = self.fields[0].model
        return model(__no_default__=True,
                     **{field.name: field.python_value(value) for field, value in zip(self._returning, row)})

    def exists(self, *values: object) -> bool:
        cursor = self.execute(*values)
        try:
            return cursor.fetchone() is not None
        finally:
            cursor.close()

    def _check(self, query: ModelSelect[M]) -> None:
        model = self.fields[0].model
        if any(getattr(column, "model", None) is not model for column in query.selected_columns):
            raise ValueError(f"a prepared select returns columns of {model.__name__} only")
        self._returning = query.selected_columns


# libpq settings that notice a server gone silent (a partition, a dead host)
# in seconds instead of the kernel's minutes: TCP keepalives on idle pooled
# connections, and a cap on how long sent data may go unacknowledged.
POSTGRES_NETWORK_TIMEOUTS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def connect_database(url: str, pool_size: int = 20) -> Database:
    """A peewee Database for ``url``: SQLite in WAL mode, or pooled PostgreSQL."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # busy_timeout lets concurrent writers queue instead of failing at once.
        pragmas = {"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1, "busy_timeout": 10_000}
        # Pooled, so a request's end does not close the last connection: closing
        # it makes SQLite checkpoint and fsync, tens of milliseconds per write.
        return db_url.connect(
            f"sqlite+pool:///{path}",
            pragmas=pragmas,
            max_connections=pool_size,
            stale_timeout=300,
            timeout=10,
            check_same_thread=False,  # the pool hands each connection to one thread at a time
        )
    scheme, rest = url.split("://", 1)
    if not scheme.endswith("+pool"):
        scheme = "postgresql+pool"
    # Bounded waits everywhere: an unreachable server answers errors, not hangs.
    # No reconnect logic needed: the pool checks every idle connection with a
    # `SELECT 1` at checkout and drops dead ones, so a restarted server costs no
    # request (tests/test_outages.py holds peewee to that).
    return db_url.connect(
        f"{scheme}://{rest}",
        max_connections=pool_size,
        stale_timeout=300,
        timeout=10,
        connect_timeout=5,
        **POSTGRES_NETWORK_TIMEOUTS,
    )


def release_connection() -> None:
    """Give this thread's connection back to the pool.

    Connections open lazily on the first query (peewee's autoconnect) and are
    released at the end of each request; a view about to wait on a slow client
    or on storage releases its connection early so waiting never starves the pool.
    """
    if not db.is_closed():
        db.close()


def close_all_connections() -> None:
    """Close this thread's connection and every idle pooled one (shutdown, tests)."""
    release_connection()
    if hasattr(db.obj, "close_all"):
        db.obj.close_all()


def init_app(app: Flask) -> None:
    db.initialize(connect_database(app.config["DATABASE_URL"], app.config["DATABASE_POOL_SIZE"]))
    app.teardown_request(lambda exc: release_connection())

"""An attachment's rows and their SQL: the file, its variants, and the membership an upload checks.

The hot paths' queries have their SQL built once per database
(models.PreparedQuery): composing them was most of a 304's CPU, and a fifth
of a small upload's.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import Any, Iterable, Iterator, Sequence

from peewee import Field

from imaging.variants import Made
from models import BaseModel, ChatFile, ChatFileVariant, Membership, PreparedQuery, PreparedSelect, db, utcnow
from web.errors import ApiError


def _own_file_query(*columns: Field[Any]) -> PreparedSelect[ChatFile]:
    """One owner's file by id, prepared: the given columns of its row (all of them when none)."""
    return PreparedSelect(
        lambda file_id, owner_id: ChatFile.select(*columns).where((ChatFile.id == file_id)
                                                                  & (ChatFile.owner == owner_id)),
        (ChatFile.id, ChatFile.owner), (uuid.UUID(int=1), uuid.UUID(int=2)))


OWN_FILE = _own_file_query()
# What sending the bytes needs, and no more: no dates to parse.
FILE_TO_SEND = _own_file_query(ChatFile.id, ChatFile.organization, ChatFile.name, ChatFile.content_type,
                               ChatFile.size, ChatFile.sha256)
# A variant's row as sending it needs it.
VARIANT_TO_SEND = PreparedSelect(
    lambda file_id, variant: ChatFileVariant.select(ChatFileVariant.original, ChatFileVariant.content_type,
                                                    ChatFileVariant.size, ChatFileVariant.sha256)
    .where((ChatFileVariant.file == file_id) & (ChatFileVariant.variant == variant)),
    (ChatFileVariant.file, ChatFileVariant.variant), (uuid.UUID(int=1), "thumbnail"))
MEMBER = PreparedSelect(
    lambda user_id, organization_id: Membership.select(Membership.organization)
    .where((Membership.user == user_id) & (Membership.organization == organization_id)),
    (Membership.user, Membership.organization), (uuid.UUID(int=1), uuid.UUID(int=2)))
_FILE_COLUMNS = (ChatFile.id, ChatFile.owner, ChatFile.organization, ChatFile.name, ChatFile.content_type,
                 ChatFile.size, ChatFile.sha256, ChatFile.width, ChatFile.height, ChatFile.created_at,
                 ChatFile.animated)
INSERT_FILE = PreparedQuery(
    lambda *values: ChatFile.insert(dict(zip(_FILE_COLUMNS, values))), _FILE_COLUMNS,
    (uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3), "name", "image/png", 4, "0" * 64, 5, 6,
     datetime.datetime(2000, 1, 1), True))
_VARIANT_COLUMNS = (ChatFileVariant.file, ChatFileVariant.variant, ChatFileVariant.original,
                    ChatFileVariant.content_type, ChatFileVariant.width, ChatFileVariant.height,
                    ChatFileVariant.size, ChatFileVariant.sha256)
UPSERT_VARIANT = PreparedQuery(
    lambda *values: ChatFileVariant.insert(dict(zip(_VARIANT_COLUMNS, values))).on_conflict(
        conflict_target=[ChatFileVariant.file, ChatFileVariant.variant], preserve=_VARIANT_COLUMNS[2:]),
    _VARIANT_COLUMNS, (uuid.UUID(int=1), "thumbnail", True, "image/webp", 2, 3, 4, "0" * 64))


def require_member(user_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    """403 unless the user is a member of the organization (uploads, listings and usage are members' only)."""
    if not MEMBER.exists(user_id, organization_id):
        raise ApiError(403, "You are not a member of this organization.")


def insert_file(file_id: uuid.UUID, owner_id: uuid.UUID, organization_id: uuid.UUID, name: str | None,
                content_type: str, size: int, sha256: str, width: int | None, height: int | None,
                animated: bool) -> None:
    """The file's row, created now (no width and height for a file without pixels)."""
    INSERT_FILE.execute(file_id, owner_id, organization_id, name, content_type, size, sha256, width, height,
                        utcnow(), animated).close()


def record_variants(file_id: uuid.UUID, made: Iterable[Made]) -> None:
    """Insert or replace the variant rows of a file."""
    for variant in made:
        UPSERT_VARIANT.execute(file_id, variant.name, variant.original, variant.content_type, variant.width,
                               variant.height, variant.size, variant.sha256).close()


@contextlib.contextmanager
def write_transaction() -> Iterator[None]:
    """A transaction that may lock rows (``lock``): PostgreSQL locks them one by one; SQLite takes its one write
    lock at BEGIN, so nothing is written between this transaction's reads and its writes."""
    with db.atomic() if db.obj.for_update else db.atomic(lock_type="IMMEDIATE"):
        yield


def lock(model: type[BaseModel], ids: Sequence[uuid.UUID]) -> None:
    """In a write_transaction, on PostgreSQL: hold these rows until the commit, in id order (two lockers never
    wait on each other in a circle). SQLite's write lock already holds everything."""
    if ids and db.obj.for_update:
        key: Any = model._meta.primary_key
        list(model.select(key).where(key.in_(list(ids))).order_by(key).for_update().tuples())


@contextlib.contextmanager
def file_locked(file_id: uuid.UUID) -> Iterator[None]:
    """A transaction in which no one else changes the file's rows until it ends (what it deletes and what it
    gives back then agree): a variant recorded meanwhile needs the file's row."""
    with write_transaction():
        lock(ChatFile, [file_id])
        yield


def delete_owned(file_id: uuid.UUID, owner_id: uuid.UUID) -> bool:
    """Delete the owner's file row; False when there was none (a concurrent delete got there first)."""
    return bool(ChatFile.delete().where((ChatFile.id == file_id) & (ChatFile.owner == owner_id)).execute())


def exists(file_id: uuid.UUID) -> bool:
    """Whether the file's row is there, asked on a connection of its own (the request gave its own back)."""
    with db.connection_context():
        return ChatFile.select(ChatFile.id).where(ChatFile.id == file_id).exists()

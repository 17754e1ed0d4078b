"""An organization's storage usage, and the quota an upload must fit in.

Usage is a counter row per organization (models.OrganizationUsage), moved by the same
statement that checks the quota: ``UPDATE … SET bytes = bytes + n WHERE bytes + n <= quota``.
PostgreSQL re-checks that condition on the row it locked, and SQLite runs one writer at a
time, so two uploads racing for the last bytes cannot both get in, and no upload scans the
organization's files to know where it stands.

What a file counts is its stored bytes: the original plus each variant that is stored apart
(a variant that *is* the original is not stored twice, so it is not counted twice either).
``bytes_to_store`` says it for an upload about to be stored, ``stored_bytes`` for a file's rows;
every path that adds or removes a file (upload, delete, generate-variants, purge) counts with them.

Without a quota an upload is counted in the transaction that inserts its rows (attachments/store.py),
so the counter is exact. Under a quota it can only err upwards: an upload reserves before it stores
and gives the bytes back when the save fails, but a process killed in between (or a give-back the
database refuses) leaves them counted. An organization is then refused early, never let past.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Collection, Iterable, cast

from peewee import JOIN, Field, ModelUpdate, PeeweeException, fn
from playhouse.pool import MaxConnectionsExceeded

from imaging.variants import Made
from models import ChatFile, ChatFileVariant, OrganizationUsage, PreparedQuery, PreparedSelect
from web.errors import ApiError

log = logging.getLogger(__name__)

QUOTA_EXCEEDED = "Upload would exceed the organization's storage quota."


@dataclass(frozen=True)
class Usage:
    bytes: int
    files: int


def bytes_to_store(size: int, made: Iterable[Made]) -> int:
    """What an upload of ``size`` bytes with variants ``made`` stores: the original and each variant stored apart."""
    return size + sum(variant.size for variant in made if not variant.original)


def stored_bytes(file_id: uuid.UUID) -> int:
    """What file ``file_id`` holds in storage (``stored_bytes_of``); 0 when the file has no row. Read it in the
    transaction that deletes the file, after locking its row (rows.file_locked), so a variant recorded meanwhile
    is not missed."""
    return stored_bytes_of([file_id]).get(file_id, 0)


def stored_bytes_of(file_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, int]:
    """What each file holds in storage, as usage counts it: its original plus its variants stored apart (a
    variant that is the original itself adds nothing). One query; files without a row are left out."""
    if not file_ids:
        return {}
    variants = fn.COALESCE(fn.SUM(ChatFileVariant.size), 0)
    query = (ChatFile.select(ChatFile.id, ChatFile.size, variants)
             .join(ChatFileVariant, JOIN.LEFT_OUTER,
                   on=(ChatFileVariant.file == ChatFile.id) & (ChatFileVariant.original == False))  # noqa: E712
             .where(ChatFile.id.in_(list(file_ids)))
             .group_by(ChatFile.id, ChatFile.size))
    rows = cast("Iterable[tuple[uuid.UUID, int, int]]", query.tuples())
    return {file_id: size + int(variant_bytes) for file_id, size, variant_bytes in rows}


def stored_bytes_of_owner(owner_id: uuid.UUID, organization_id: uuid.UUID) -> int:
    """What one user's files in the organization hold in storage (``stored_bytes`` summed over them): what deleting
    them all would give back. Two sums over the owner's files (the (owner, created_at) index), not the organization's."""
    owned = (ChatFile.owner == owner_id) & (ChatFile.organization == organization_id)
    originals = ChatFile.select(fn.COALESCE(fn.SUM(ChatFile.size), 0)).where(owned).scalar()
    variants = (ChatFileVariant.select(fn.COALESCE(fn.SUM(ChatFileVariant.size), 0))
                .join(ChatFile, on=ChatFileVariant.file == ChatFile.id)
                .where(owned & (ChatFileVariant.original == False)).scalar())  # noqa: E712
    return int(originals) + int(variants)


def _add_query(quota_checked: bool) -> PreparedQuery[ModelUpdate]:
    """``UPDATE … SET bytes = bytes + size, files = files + n WHERE organization = …`` [``AND bytes + size <= quota``],
    its SQL built once (it runs on every upload and delete)."""
    counter = OrganizationUsage

    def build(size: int, files: int, organization_id: uuid.UUID, *quota: int) -> ModelUpdate:
        where = counter.organization == organization_id
        if quota_checked:
            where &= counter.bytes + size <= quota[0]
        return counter.update(bytes=counter.bytes + size, files=counter.files + files).where(where)

    fields: list[Field[Any]] = [counter.bytes, counter.files, counter.organization]
    samples: list[object] = [3, 4, uuid.UUID(int=5)]
    if quota_checked:  # the size again, and the quota
        fields += [counter.bytes, counter.bytes]
        samples += [3, 7]
    return PreparedQuery(lambda *values: build(*values[:3], *values[4:]), fields, samples)


_ADD = _add_query(quota_checked=False)
_ADD_IF_FITS = _add_query(quota_checked=True)


def reserve(organization_id: uuid.UUID, size: int, quota: int | None, *, files: int = 1) -> bool:
    """Count ``size`` bytes and ``files`` files for the organization, unless that takes it past ``quota``.

    True when counted; False (nothing changed) when the quota would be exceeded. One statement when the
    organization's row exists (every upload but its first).
    """
    if _added(organization_id, size, quota, files):
        return True
    # No row yet (the organization's first upload), or no room: make sure the row is there and ask again.
    OrganizationUsage.insert(organization=organization_id, bytes=0, files=0).on_conflict_ignore().execute()
    return _added(organization_id, size, quota, files)


def _added(organization_id: uuid.UUID, size: int, quota: int | None, files: int) -> bool:
    if quota is None:
        cursor = _ADD.execute(size, files, organization_id)
    else:
        cursor = _ADD_IF_FITS.execute(size, files, organization_id, size, quota)
    try:
        return bool(cursor.rowcount)
    finally:
        cursor.close()


def add(organization_id: uuid.UUID, size: int, *, files: int = 0) -> None:
    """Count bytes (or give them back, when negative) whatever the quota: variants a job made for stored files."""
    reserve(organization_id, size, None, files=files)


def release(organization_id: uuid.UUID, size: int, *, files: int = 1) -> None:
    """Give back what a deleted (or never stored) file counted."""
    (OrganizationUsage.update(bytes=OrganizationUsage.bytes - size, files=OrganizationUsage.files - files)
     .where(OrganizationUsage.organization == organization_id).execute())


def release_quietly(organization_id: uuid.UUID, size: int) -> None:
    """``release`` for a save that failed: when the database refuses it too, the bytes stay counted (logged)."""
    try:
        release(organization_id, size)
    except (PeeweeException, MaxConnectionsExceeded):
        log.exception("could not give back %d bytes of a failed upload to organization %s", size, organization_id)


_COUNTER = PreparedSelect(
    lambda organization_id: OrganizationUsage.select(OrganizationUsage.bytes, OrganizationUsage.files)
    .where(OrganizationUsage.organization == organization_id),
    (OrganizationUsage.organization,), (uuid.UUID(int=1),))


def of(organization_id: uuid.UUID) -> Usage:
    """The organization's counted bytes and files (a prepared primary-key read: the early check runs it per upload)."""
    row = _COUNTER.first(organization_id)
    return Usage(0, 0) if row is None else Usage(row.bytes, row.files)


def refuse_early(organization_id: uuid.UUID, declared_size: int | None, quota: int | None) -> None:
    """400 before the body is read when its declared size alone cannot fit (variants only add to it).

    A cheap first line: nothing is counted here, ``reserve_or_refuse`` is the binding check.
    """
    if quota is None or declared_size is None:
        return
    used = of(organization_id).bytes
    if used + declared_size > quota:
        raise _exceeded(used, f"at least {declared_size}", quota)


def reserve_or_refuse(organization_id: uuid.UUID, size: int, quota: int | None) -> None:
    """Count an upload's ``size`` stored bytes for the organization, or 400 when they take it past ``quota``."""
    if not reserve(organization_id, size, quota):
        raise _exceeded(of(organization_id).bytes, f"{size}", quota)


def _exceeded(used: int, needed: str, quota: int | None) -> ApiError:
    return ApiError(400, QUOTA_EXCEEDED,
                    f"The organization uses {used} of its {quota} bytes; this upload needs {needed} more "
                    "(the file and its stored thumbnail and preview).", code="quota_exceeded")

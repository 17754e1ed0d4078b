"""An organization's storage usage, and the quota an upload must fit in.

Usage is a counter row per organization (models.OrganizationUsage), moved by the same
statement that checks the quota: ``UPDATE … SET bytes = bytes + n WHERE bytes + n <= quota``.
PostgreSQL re-checks that condition on the row it locked, and SQLite runs one writer at a
time, so two uploads racing for the last bytes cannot both get in, and no upload scans the
organization's files to know where it stands.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Collection, Iterable, cast

from peewee import JOIN, fn

from models import ChatFile, ChatFileVariant, OrganizationUsage


@dataclass(frozen=True)
class Usage:
    bytes: int
    files: int


def reserve(organization_id: uuid.UUID, size: int, quota: int | None, *, files: int = 1) -> bool:
    """Count ``size`` bytes and ``files`` files for the organization, unless that takes it past ``quota``.

    True when counted; False (nothing changed) when the quota would be exceeded.
    """
    OrganizationUsage.insert(organization=organization_id, bytes=0, files=0).on_conflict_ignore().execute()
    query = OrganizationUsage.update(bytes=OrganizationUsage.bytes + size, files=OrganizationUsage.files + files)
    query = query.where(OrganizationUsage.organization == organization_id)
    if quota is not None:
        query = query.where(OrganizationUsage.bytes + size <= quota)
    return bool(query.execute())


def release(organization_id: uuid.UUID, size: int, *, files: int = 1) -> None:
    """Give back what a deleted (or never stored) file counted."""
    (OrganizationUsage.update(bytes=OrganizationUsage.bytes - size, files=OrganizationUsage.files - files)
     .where(OrganizationUsage.organization == organization_id).execute())


def of(organization_id: uuid.UUID) -> Usage:
    row = OrganizationUsage.get_or_none(OrganizationUsage.organization == organization_id)
    return Usage(0, 0) if row is None else Usage(row.bytes, row.files)


def stored_bytes(file_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, int]:
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

"""A user's files in an organization, newest first, a page at a time.

Keyset paging on (created_at, id), both descending: a page is the files strictly after the
last one of the page before, whatever was inserted or deleted in between, so no file is shown
twice or skipped (a file uploaded meanwhile is newer than the cursor and shows on a new first
page). The cursor is that last file's (created_at, id), encoded; it is opaque to clients and
checked strictly when it comes back. It is not signed: a forged one only moves the start
within the caller's own files, which the query is confined to anyway. The (owner, created_at)
index serves the query.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass

from models import ChatFile, ChatFileLink

MAX_CURSOR_LENGTH = 200


@dataclass(frozen=True)
class Position:
    """Where a page ends: its last file's creation time and id."""

    created_at: datetime.datetime
    file_id: uuid.UUID


@dataclass(frozen=True)
class Page:
    files: list[ChatFile]
    chat_ids: dict[uuid.UUID, list[uuid.UUID]]  # per file, the chats it is linked to (oldest link first)
    next: Position | None  # None: this was the last page


def page(owner_id: uuid.UUID, organization_id: uuid.UUID, after: Position | None, limit: int) -> Page:
    """Up to ``limit`` of the owner's files in the organization, newest first, after ``after``: two queries."""
    query = (ChatFile.select(ChatFile.id, ChatFile.name, ChatFile.content_type, ChatFile.size, ChatFile.created_at)
             .where((ChatFile.owner == owner_id) & (ChatFile.organization == organization_id)))
    if after is not None:
        query = query.where((ChatFile.created_at < after.created_at)
                            | ((ChatFile.created_at == after.created_at) & (ChatFile.id < after.file_id)))
    files = list(query.order_by(ChatFile.created_at.desc(), ChatFile.id.desc()).limit(limit + 1))
    more = len(files) > limit
    files = files[:limit]
    last = files[-1] if more else None
    return Page(files, _chats_of([file.id for file in files]),
                None if last is None else Position(last.created_at, last.id))


def _chats_of(file_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The chats each file is linked to, for a whole page in one query."""
    chats: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    if not file_ids:
        return chats
    links = (ChatFileLink.select(ChatFileLink.file, ChatFileLink.chat).where(ChatFileLink.file.in_(file_ids))
             .order_by(ChatFileLink.created_at, ChatFileLink.chat))
    for link in links:
        chats[link.file_id].append(link.chat_id)
    return chats


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position.created_at.isoformat(timespec="microseconds"), position.file_id.hex])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position ``encode_cursor`` made; ValueError for anything else."""
    if not cursor or len(cursor) > MAX_CURSOR_LENGTH:
        raise ValueError("cursor length")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError("cursor encoding") from error
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(part, str) for part in raw)):
        raise ValueError("cursor shape")
    created_at = datetime.datetime.fromisoformat(raw[0])
    if created_at.tzinfo is not None:
        raise ValueError("cursor time")  # stored times are naive UTC
    position = Position(created_at, uuid.UUID(hex=raw[1]))
    if encode_cursor(position) != cursor:  # one spelling per position: what this module made, nothing else
        raise ValueError("cursor spelling")
    return position

"""Files in chats: linking a user's uploads to their chat, unlinking, and what a chat's JSON lists.

The cap (``MAX_FILES_PER_CHAT``) holds under concurrency because a link is
one transaction that first writes the chat's row: PostgreSQL then makes a
second link to the same chat wait for the first to commit (a row lock), and
SQLite lets one writer in at a time, so each sees the other's links when it
counts. The write changes nothing: linking a file is not an edit of the chat
(upstream Coder's view), so ``updated_at``, which archived-chat retention
reads, stays as it was.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from peewee import ModelSelect

from models import Chat, ChatFile, ChatFileLink, db, rfc3339
from web.errors import ApiError

MAX_IDS_PER_CALL = 50


@dataclass(frozen=True)
class LinkedFile:
    """A file as a chat's JSON lists it (upstream Coder's ``ChatFileMetadata``)."""

    id: uuid.UUID
    name: str | None
    mime_type: str
    size_bytes: int
    created_at: datetime.datetime

    def json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "mime_type": self.mime_type, "size_bytes": self.size_bytes,
                "created_at": rfc3339(self.created_at)}


def parse_file_ids(body: object) -> list[uuid.UUID]:
    """The ``file_ids`` of a link request, each once, in the order given; 400 for anything else."""
    ids = body.get("file_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list):
        raise _invalid_ids("file_ids must be an array of file IDs.")
    if len(ids) > MAX_IDS_PER_CALL:
        raise _invalid_ids(f"At most {MAX_IDS_PER_CALL} file IDs per call, got {len(ids)}.", "Too many file IDs.")
    parsed: dict[uuid.UUID, None] = {}
    for value in ids:
        parsed[parse_file_id(value)] = None
    return list(parsed)


def parse_file_id(value: object) -> uuid.UUID:
    try:
        if not isinstance(value, str):
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(400, "Invalid file ID.", f"{value!r} is not a UUID.") from None


def link(chat_id: uuid.UUID, owner_id: uuid.UUID, file_ids: list[uuid.UUID], limit: int) -> None:
    """Link the owner's files to the owner's chat, all or none: 404 for a chat or file not theirs, 400 past ``limit``."""
    with db.atomic():
        # The lock (see the module's docstring), and the ownership check in the same statement.
        locked = Chat.update(title=Chat.title).where((Chat.id == chat_id) & (Chat.owner == owner_id)).execute()
        if not locked:
            raise ApiError(404, "Chat not found.")
        if not file_ids:
            return
        owned = {row.id for row in ChatFile.select(ChatFile.id).where(
            ChatFile.id.in_(file_ids) & (ChatFile.owner == owner_id))}
        missing = [file_id for file_id in file_ids if file_id not in owned]
        if missing:
            raise ApiError(404, "File not found.", f"No file {missing[0]} of yours.")
        linked = {row.file_id for row in ChatFileLink.select(ChatFileLink.file).where(ChatFileLink.chat == chat_id)}
        new = [file_id for file_id in file_ids if file_id not in linked]
        if len(linked) + len(new) > limit:
            raise ApiError(400, "Too many files in this chat.",
                           f"A chat holds at most {limit} files; it has {len(linked)}, and {len(new)} more "
                           "were asked for.")
        if new:
            ChatFileLink.insert_many([{"chat": chat_id, "file": file_id} for file_id in new]).execute()


def unlink(chat_id: uuid.UUID, file_id: uuid.UUID) -> bool:
    """Remove one link; False when the file was not linked to the chat."""
    return bool(ChatFileLink.delete().where((ChatFileLink.chat == chat_id) & (ChatFileLink.file == file_id))
                .execute())


def files_of(chats: Iterable[uuid.UUID] | ModelSelect[Chat]) -> dict[uuid.UUID, list[LinkedFile]]:
    """The files linked to each chat, oldest first (by the file's ``created_at``, then id), in ONE query.

    ``chats``: chat ids, or a query selecting chat ids (a listing's own filter: no id list travels).
    """
    chat_ids = chats if isinstance(chats, ModelSelect) else list(chats)
    query = (ChatFileLink
             .select(ChatFileLink.chat, ChatFile.id, ChatFile.name, ChatFile.content_type, ChatFile.size,
                     ChatFile.created_at)
             .join(ChatFile)
             .where(ChatFileLink.chat.in_(chat_ids))
             .order_by(ChatFile.created_at, ChatFile.id))
    found: dict[uuid.UUID, list[LinkedFile]] = {}
    for row in query:
        file = row.file  # built from the joined columns, no query of its own
        found.setdefault(row.chat_id, []).append(
            LinkedFile(file.id, file.name, file.content_type, file.size, file.created_at))
    return found


def _invalid_ids(detail: str, message: str = "Invalid file_ids.") -> ApiError:
    return ApiError(400, message, detail, validations=[{"field": "file_ids", "detail": detail}])

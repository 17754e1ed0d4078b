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
from typing import Any

from peewee import Expression, Field, IntegrityError, ModelSelect

from models import Chat, ChatFile, ChatFileLink, Cursor, PreparedQuery, db, rfc3339
from web.errors import ApiError
from web.ids import parse_uuid

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
    return parse_uuid(value, "Invalid file ID.")


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
        if not new:
            return  # all linked already: nothing to count, even in a chat over a since lowered cap
        if len(linked) + len(new) > limit:
            raise ApiError(400, "Too many files in this chat.",
                           f"A chat holds at most {limit} files; it has {len(linked)}, and {len(new)} more "
                           "were asked for.")
        try:
            ChatFileLink.insert_many([{"chat": chat_id, "file": file_id} for file_id in new]).execute()
        except IntegrityError:  # a file deleted since it was looked up: its foreign key refuses the link
            raise ApiError(404, "File not found.") from None


def unlink(chat_id: uuid.UUID, file_id: uuid.UUID) -> bool:
    """Remove one link; False when the file was not linked to the chat."""
    return bool(ChatFileLink.delete().where((ChatFileLink.chat == chat_id) & (ChatFileLink.file == file_id))
                .execute())


# What a chat's JSON lists of a file, and the link's chat: each row's columns, in order.
LISTED_COLUMNS: tuple[Field[Any], ...] = (ChatFileLink.chat, ChatFile.id, ChatFile.name, ChatFile.content_type,
                                          ChatFile.size, ChatFile.created_at)


def _files_query(which: Expression) -> ModelSelect[ChatFileLink]:
    """Linked files, oldest first: by the file's ``created_at``, then its id."""
    return (ChatFileLink.select(*LISTED_COLUMNS).join(ChatFile).where(which)
            .order_by(ChatFile.created_at, ChatFile.id))


# A chat's GET: its SQL built once per database (models.PreparedQuery).
ONE_CHATS_FILES = PreparedQuery(lambda chat_id: _files_query(ChatFileLink.chat == chat_id), [ChatFileLink.chat],
                                [uuid.UUID(int=0)])


def files_of_chat(chat_id: uuid.UUID) -> list[LinkedFile]:
    return _by_chat(ONE_CHATS_FILES.execute(chat_id)).get(chat_id, [])


def files_of_chats(chats: ModelSelect[Chat]) -> dict[uuid.UUID, list[LinkedFile]]:
    """The files of every chat ``chats`` selects (a query of chat ids, e.g. a listing's own filter), in ONE query."""
    return _by_chat(db.execute_sql(*_files_query(ChatFileLink.chat.in_(chats)).sql()))


def _by_chat(cursor: Cursor) -> dict[uuid.UUID, list[LinkedFile]]:
    """The rows as plain values converted by their fields: peewee's model instances cost several times the
    query itself at 50 rows (bench/chat_files.py)."""
    try:
        rows = cursor.fetchall()
    finally:
        cursor.close()
    found: dict[uuid.UUID, list[LinkedFile]] = {}
    for row in rows:
        chat_id, *file = (field.python_value(value) for field, value in zip(LISTED_COLUMNS, row))
        found.setdefault(chat_id, []).append(LinkedFile(*file))
    return found


def _invalid_ids(detail: str, message: str = "Invalid file_ids.") -> ApiError:
    return ApiError(400, message, detail, validations=[{"field": "file_ids", "detail": detail}])

"""Retention (``flask --app wsgi purge``): what CONTRACT.md "Files in chats" lets go.

- With ``ARCHIVED_CHAT_RETENTION_DAYS`` set: archived chats whose last update
  is older are deleted (their links go with them, by cascade), and with them
  the files they leave linked to no chat. A file also linked to a kept chat
  stays.
- With ``UNLINKED_FILE_RETENTION`` set: files linked to no chat and created
  longer ago than that are deleted.

Each batch (``BATCH_SIZE`` chats or files, visited in id order) is one
transaction: the rows go, and their organizations' usage is given back (the
originals' and the stored variants' bytes), together or not at all. The
objects are deleted after the commit, as a DELETE request does; what fails
then, or what a kill leaves, is gc-storage's (objects without a row), never
a row without its objects. A run that is killed has committed whole batches
only, and the next run finds what is left by the same conditions.

A file linked between the look and the delete is never deleted. The DELETE
itself re-checks "linked to no chat", and before it the transaction holds
the files: on PostgreSQL by locking their rows (``FOR UPDATE``), which waits
for a link insert in flight (its foreign-key check holds the file ``FOR KEY
SHARE``) to commit, so the DELETE's fresh snapshot sees that link, and makes
a later link insert wait for the purge, whose commit then fails it on the
foreign key; on SQLite by taking the one write lock at BEGIN. Chats are
locked before files, in the order a link insert's foreign-key checks take
them, so a purge and a link never wait on each other in a circle.
"""

from __future__ import annotations

import datetime
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from peewee import Expression, ModelAlias, fn

from attachments import objects, usage
from attachments.rows import lock, write_transaction
from jobs import count_of
from models import BaseModel, Chat, ChatFile, ChatFileLink, db, utcnow
from storage import ObjectStore, StorageError

BATCH_SIZE = 500
# Object deletions failing in a row after which the run stops trying (each can take seconds of timeouts and
# retries): a store that is down would otherwise hold the run for hours. What is not tried is gc-storage's.
MAX_FAILURES_IN_A_ROW = 5


@dataclass
class PurgeResult:
    dry_run: bool
    unlinked_file_retention: int | None  # seconds; None: unlinked files are kept
    archived_chat_retention_days: int | None  # None: archived chats are kept
    chats: list[str] = field(default_factory=list)  # archived chats deleted (a dry run: that would be)
    files_of_chats: list[str] = field(default_factory=list)  # files deleted with them, linked to no other chat
    unlinked_files: list[str] = field(default_factory=list)  # files linked to no chat, past the retention
    bytes: int = 0  # stored bytes (originals and variants) given back to their organizations' usage
    skipped: int = 0  # chats or files that changed between the look and the delete (linked, unarchived): kept
    failed: list[dict[str, str]] = field(default_factory=list)  # {"key", "error"}: left to gc-storage

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def configured(self) -> bool:
        return self.unlinked_file_retention is not None or self.archived_chat_retention_days is not None

    def report_lines(self) -> Iterator[str]:
        """One line per deletion, then what was left alone and the summary."""
        if not self.configured:
            yield ("Nothing to purge: neither UNLINKED_FILE_RETENTION nor ARCHIVED_CHAT_RETENTION_DAYS is set, "
                   "so every file and chat is kept.")
            return
        verb = "would delete" if self.dry_run else "deleted"
        for chat_id in self.chats:
            yield f"{verb} chat {chat_id}"
        for file_id in self.files_of_chats:
            yield f"{verb} file {file_id} (linked only to deleted chats)"
        for file_id in self.unlinked_files:
            yield f"{verb} file {file_id} (linked to no chat)"
        for failure in self.failed:
            yield f"failed to delete {failure['key']}: {failure['error']} (gc-storage will remove it)"
        if self.archived_chat_retention_days is None:
            yield "Archived chats are kept: ARCHIVED_CHAT_RETENTION_DAYS is unset."
        if self.unlinked_file_retention is None:
            yield "Unlinked files are kept: UNLINKED_FILE_RETENTION is unset."
        yield self.summary()

    def summary(self) -> str:
        line = (f"{'Would delete' if self.dry_run else 'Deleted'} {count_of(len(self.chats), 'archived chat')} "
                f"with {count_of(len(self.files_of_chats), 'file')} linked only to them, and "
                f"{count_of(len(self.unlinked_files), 'unlinked file')}: {self.bytes} bytes "
                f"{'would be' if self.dry_run else 'were'} given back.")
        if self.skipped:
            line += f" Kept {self.skipped} that changed meanwhile (linked, or unarchived)."
        if self.failed:
            line += f" {count_of(len(self.failed), 'object deletion')} failed; gc-storage removes what is left."
        return line


@dataclass
class Progress:
    """Candidates looked at so far, of those counted when the run began (chats, then unlinked files)."""

    done: int = 0
    total: int = 0


ProgressCallback = Callable[[PurgeResult, Progress], None]


def purge(storage: ObjectStore, unlinked_file_retention: int | None, archived_chat_retention_days: int | None,
          dry_run: bool = False, now: datetime.datetime | None = None, batch_size: int = BATCH_SIZE,
          progress: ProgressCallback | None = None) -> PurgeResult:
    """Apply the retention settings (None: that kind is kept). Needs a database connection.

    ``now`` is naive UTC, as stored. Raises PeeweeException when the database
    fails (the batches committed so far stay done); a failed object deletion
    is recorded in the result and the run goes on.
    """
    now = now or utcnow()
    run = _Run(storage, PurgeResult(dry_run, unlinked_file_retention, archived_chat_retention_days), batch_size,
               progress)
    chats_before = files_before = None
    if archived_chat_retention_days is not None:
        chats_before = now - datetime.timedelta(days=archived_chat_retention_days)
        if progress is not None:  # the total only feeds the progress line
            run.counted.total += _expired_chats(chats_before).count()
    if unlinked_file_retention is not None:
        files_before = now - datetime.timedelta(seconds=unlinked_file_retention)
        if progress is not None:
            run.counted.total += _unlinked_files(files_before).count()
    if chats_before is not None:
        run.expired_chats(chats_before)
    if files_before is not None:
        run.unlinked_files(files_before)
    return run.result


class _Run:
    def __init__(self, storage: ObjectStore, result: PurgeResult, batch_size: int,
                 progress: ProgressCallback | None) -> None:
        self.storage = storage
        self.result = result
        self.batch_size = batch_size
        self.progress = progress
        self.counted = Progress()
        self.listed: set[uuid.UUID] = set()  # a dry run's files, each listed once however many chats hold it
        self.failures_in_a_row = 0

    def expired_chats(self, before: datetime.datetime) -> None:
        for chat_ids in self._batches(_expired_chats(before), Chat.id):
            if self.result.dry_run:
                self.result.chats += map(str, chat_ids)
                self._list(_files_only_in_expired_chats(chat_ids, before), self.result.files_of_chats)
            else:
                deleted_chats, deleted_files = _delete_chats(chat_ids, before)
                self.result.chats += map(str, deleted_chats)
                self.result.skipped += len(chat_ids) - len(deleted_chats)
                self._deleted(deleted_files, self.result.files_of_chats)
            self._checked(len(chat_ids))

    def unlinked_files(self, before: datetime.datetime) -> None:
        for file_ids in self._batches(_unlinked_files(before), ChatFile.id):
            if self.result.dry_run:
                self._list(file_ids, self.result.unlinked_files)
            else:
                deleted = _delete_files(file_ids, ChatFile.created_at < before)
                self.result.skipped += len(file_ids) - len(deleted)
                self._deleted(deleted, self.result.unlinked_files)
            self._checked(len(file_ids))

    def _batches(self, query: Any, key: Any) -> Iterator[list[uuid.UUID]]:
        """The query's ids, ``batch_size`` at a time, in id order: each batch is asked for after the previous
        one is done, so what a batch deleted is never seen again and a dry run still moves on."""
        last = None
        while True:
            page = query.order_by(key).limit(self.batch_size)
            if last is not None:
                page = page.where(key > last)
            ids = [row_id for (row_id,) in _rows(page)]
            if not ids:
                return
            yield ids
            last = ids[-1]

    def _list(self, file_ids: Sequence[uuid.UUID], into: list[str]) -> None:
        new = [file_id for file_id in file_ids if file_id not in self.listed]
        self.listed.update(new)
        into += map(str, new)
        self.result.bytes += sum(usage.stored_bytes_of(new).values())

    def _deleted(self, deleted: list[_DeletedFile], into: list[str]) -> None:
        into += (str(file.id) for file in deleted)
        self.result.bytes += sum(file.stored_bytes for file in deleted)
        for file in deleted:  # after the commit: the rows are gone, whatever happens to these
            for key in objects.keys_of(self.storage, file.organization_id, file.id):
                self._delete_object(key)

    def _delete_object(self, key: str) -> None:
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.result.failed.append({"key": key, "error": f"Not tried: the store failed {MAX_FAILURES_IN_A_ROW} "
                                                            "times in a row."})
            return
        try:
            self.storage.delete(key)
        except StorageError as error:
            self.failures_in_a_row += 1
            self.result.failed.append({"key": key, "error": str(error)})
        else:
            self.failures_in_a_row = 0

    def _checked(self, count: int) -> None:
        self.counted.done += count
        if self.progress is not None:
            self.progress(self.result, self.counted)


@dataclass(frozen=True)
class _DeletedFile:
    id: uuid.UUID
    organization_id: uuid.UUID
    stored_bytes: int


def _expired_chats(before: datetime.datetime) -> Any:
    return Chat.select(Chat.id).where(_expired(Chat, before))


def _expired(chat: type[Chat] | ModelAlias[Chat], before: datetime.datetime) -> Expression:
    return (chat.archived == True) & (chat.updated_at < before)  # noqa: E712 - SQL, not Python


def _unlinked_files(before: datetime.datetime) -> Any:
    return ChatFile.select(ChatFile.id).where((ChatFile.created_at < before) & _linked_to_no_chat())


def _linked_to_no_chat() -> Expression:
    return ~fn.EXISTS(ChatFileLink.select(ChatFileLink.file).where(ChatFileLink.file == ChatFile.id))


def _files_only_in_expired_chats(chat_ids: list[uuid.UUID], before: datetime.datetime) -> list[uuid.UUID]:
    """The files linked to these chats and to no chat outside the expired ones: a dry run's files_of_chats."""
    other_link, other_chat = ChatFileLink.alias(), Chat.alias()
    kept_link = (other_link.select(other_link.file).join(other_chat, on=other_link.chat == other_chat.id)
                 .where((other_link.file == ChatFileLink.file) & ~_expired(other_chat, before)))
    query = (ChatFileLink.select(ChatFileLink.file).distinct()
             .where(ChatFileLink.chat.in_(chat_ids) & ~fn.EXISTS(kept_link)).order_by(ChatFileLink.file))
    return [file_id for (file_id,) in _rows(query)]


def _delete_chats(chat_ids: list[uuid.UUID], before: datetime.datetime) -> tuple[list[uuid.UUID],
                                                                                list[_DeletedFile]]:
    """Delete the chats still archived and expired, and the files that leaves linked to no chat: one
    transaction. (The chats deleted, the files deleted.)"""
    with write_transaction():
        lock(Chat, chat_ids)
        links = _rows(ChatFileLink.select(ChatFileLink.chat, ChatFileLink.file).where(ChatFileLink.chat.in_(chat_ids)))
        deleted_chats = [chat_id for (chat_id,) in _rows(  # re-checked: one unarchived meanwhile stays
            Chat.delete().where(Chat.id.in_(chat_ids) & _expired(Chat, before)).returning(Chat.id))]
        gone = set(deleted_chats)
        freed = sorted({file_id for chat_id, file_id in links if chat_id in gone})
        return deleted_chats, _delete_unlinked(freed)


def _delete_files(file_ids: list[uuid.UUID], condition: Expression) -> list[_DeletedFile]:
    """Delete those of the files that still meet ``condition`` and are linked to no chat: one transaction."""
    with write_transaction():
        return _delete_unlinked(file_ids, condition)


def _delete_unlinked(file_ids: list[uuid.UUID], condition: Expression | None = None) -> list[_DeletedFile]:
    """Inside a write transaction: delete the files linked to no chat (and meeting ``condition``), give their
    bytes back to their organizations' usage, and say which went."""
    if not file_ids:
        return []
    lock(ChatFile, file_ids)
    sizes = usage.stored_bytes_of(file_ids)
    where = ChatFile.id.in_(file_ids) & _linked_to_no_chat()  # the re-check: linked meanwhile, kept
    if condition is not None:
        where &= condition
    deleted = [_DeletedFile(file_id, organization_id, sizes[file_id]) for file_id, organization_id in
               _rows(ChatFile.delete().where(where).returning(ChatFile.id, ChatFile.organization))]
    _release(deleted)
    return deleted


def _release(deleted: list[_DeletedFile]) -> None:
    by_organization: dict[uuid.UUID, list[_DeletedFile]] = defaultdict(list)
    for file in deleted:
        by_organization[file.organization_id].append(file)
    for organization_id, files in by_organization.items():
        usage.release(organization_id, sum(file.stored_bytes for file in files), files=len(files))


def _rows(query: Any) -> list[tuple[Any, ...]]:
    """A query's rows as tuples, its values converted by their fields (ids as UUIDs)."""
    return list(query.tuples())

"""Garbage collection of objects no row points to (``flask --app wsgi gc-storage``).

An upload writes its object first and its row second (CONTRACT.md), so a
crash in between leaves an object without a row. ``collect_orphans`` deletes
such objects once they are older than a grace period, which must be longer
than any upload takes: an upload between its two writes is never touched.
An object with a row is never deleted, whatever its age, and keys outside the
layout ``{prefix}{organization_id}/{file_id}`` belong to someone else: they are
reported and left alone (the store says which keys are in its layout).
Variants (``{variants_prefix}{organization_id}/{file_id}/{variant}``) are
swept the same way: one whose file has no row is an orphan (an upload cut
short, or a deletion whose storage step failed); one whose file has a row is
live and kept.

Listing streams through the bucket; rows are looked up ``BATCH_SIZE`` ids per
query, and only for objects old enough to matter.
"""

from __future__ import annotations

import datetime
import functools
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from imaging import variants
from jobs import count_of
from models import ChatFile
from storage import ObjectStore, StorageError

# A store's key -> the file id it names, or None for a key outside the layout.
KeyParser = Callable[[str], uuid.UUID | None]

DEFAULT_GRACE_SECONDS = 3600
MAX_GRACE_SECONDS = 100 * 365 * 24 * 3600  # any longer and "now minus it" leaves the calendar
BATCH_SIZE = 500


@dataclass
class GcResult:
    older_than: int
    dry_run: bool
    deleted: list[str] = field(default_factory=list)  # orphaned keys deleted (a dry run: that would be)
    leftovers: list[str] = field(default_factory=list)  # debris of interrupted local writes, removed likewise
    unrecognized: list[str] = field(default_factory=list)  # keys outside the layout, left alone
    failed: list[dict[str, str]] = field(default_factory=list)  # {"key", "error"} for deletions that failed
    kept_with_row: int = 0
    kept_recent: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "Would delete" if self.dry_run else "Deleted"
        line = (
            f"{verb} {count_of(len(self.deleted), 'orphaned object')} and "
            f"{count_of(len(self.leftovers), 'leftover file')}; "
            f"kept {count_of(self.kept_with_row, 'object')} with a row and {self.kept_recent} younger than "
            f"{self.older_than} s; left {count_of(len(self.unrecognized), 'key')} outside the layout alone."
        )
        if self.failed:
            line += f" {count_of(len(self.failed), 'deletion')} failed."
        return line

    def report_lines(self) -> Iterator[str]:
        """One line per action, then the summary."""
        verb = "would delete" if self.dry_run else "deleted"
        for key in self.deleted:
            yield f"{verb} {key}"
        for name in self.leftovers:
            yield f"{verb} leftover {name}"
        for key in self.unrecognized:
            yield f"skipped {key} (not in the storage layout)"
        for failure in self.failed:
            yield f"failed {failure['key']}: {failure['error']}"
        yield self.summary()


def collect_orphans(storage: ObjectStore, older_than: int = DEFAULT_GRACE_SECONDS, dry_run: bool = False,
                    now: datetime.datetime | None = None, batch_size: int = BATCH_SIZE,
                    variants: bool = True) -> GcResult:
    """Delete the store's originals (and, with ``variants``, its variants) that have no ChatFile row and are
    ``older_than`` seconds or more.

    Needs a database connection. Raises StorageError if the store cannot be
    listed; a failed deletion is recorded in the result and the run goes on.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cutoff = now - datetime.timedelta(seconds=older_than)
    result = GcResult(older_than=older_than, dry_run=dry_run)
    layouts: list[tuple[str, KeyParser]] = [(storage.originals_prefix, storage.original_file_id)]
    if variants:
        layouts.append((storage.variants_prefix, functools.partial(_variant_file_id, storage)))
    for layout_prefix, parse_key in layouts:
        # A layout nested in another's prefix is swept on its own: the other skips its keys.
        nested = tuple(other for other, _ in layouts if other != layout_prefix and other.startswith(layout_prefix))
        _sweep(storage, layout_prefix, parse_key, nested, cutoff, dry_run, batch_size, result)
    return result


def _sweep(storage: ObjectStore, prefix: str, parse_key: KeyParser, nested: tuple[str, ...], cutoff: datetime.datetime,
           dry_run: bool, batch_size: int, result: GcResult) -> None:
    batch: list[tuple[uuid.UUID, str]] = []
    for key, last_modified in storage.iter_objects(prefix):
        if nested and key.startswith(nested):
            continue
        file_id = parse_key(key)
        if file_id is None:
            result.unrecognized.append(key)
        elif last_modified > cutoff:
            result.kept_recent += 1
        else:
            batch.append((file_id, key))
            if len(batch) >= batch_size:
                _collect_batch(storage, batch, dry_run, result)
                batch = []
    _collect_batch(storage, batch, dry_run, result)
    _collect_leftovers(storage, prefix, nested, cutoff, dry_run, result)


def _variant_file_id(storage: ObjectStore, key: str) -> uuid.UUID | None:
    """The file id of a variant's key, or None for any other key (a name that is not a variant's included)."""
    variant = storage.variant_of(key)
    return variant[0] if variant is not None and variant[1] in variants.NAMES else None


def _collect_batch(storage: ObjectStore, batch: list[tuple[uuid.UUID, str]], dry_run: bool, result: GcResult) -> None:
    if not batch:
        return
    with_rows = _ids_with_rows([file_id for file_id, _ in batch])
    for file_id, key in batch:
        if file_id in with_rows:
            result.kept_with_row += 1
        elif _remove(storage.delete, key, dry_run, result):
            result.deleted.append(key)


def _ids_with_rows(file_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The subset of ``file_ids`` that have a row: one query."""
    return {row.id for row in ChatFile.select(ChatFile.id).where(ChatFile.id.in_(file_ids))}


def _collect_leftovers(storage: ObjectStore, prefix: str, nested: tuple[str, ...], cutoff: datetime.datetime,
                       dry_run: bool, result: GcResult) -> None:
    # Only the local store writes an object as several files; an S3 put is atomic, and lists none.
    for name, modified in storage.iter_leftovers(prefix):
        if nested and name.startswith(nested):
            continue
        if modified <= cutoff and _remove(storage.remove_leftover, name, dry_run, result):
            result.leftovers.append(name)


def _remove(remove: Callable[[str], None], name: str, dry_run: bool, result: GcResult) -> bool:
    if dry_run:
        return True
    try:
        remove(name)
    except StorageError as error:
        result.failed.append({"key": name, "error": str(error)})
        return False
    return True

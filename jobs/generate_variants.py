"""Variants for files stored before they existed (``flask --app wsgi generate-variants``).

A file needs work when one of its variants has no row, or has a row saying it
is stored while its object is absent from storage (whatever the database
says). Such a file is read, verified and decoded once, by the same code an
upload runs, in a decode sandbox as an upload's is; its missing variants are put, then their rows and the file's
displayed width and height (EXIF orientation applied) and ``animated`` are
written in one transaction, with the bytes of the variants stored added to the
organization's usage (no quota check: the file is already stored and had no
variants to count): objects first, rows last, as an upload does. A run
killed anywhere leaves at worst objects without rows, which the next run makes
and records again, so running it again is always safe and finishes the job.
A file deleted while the run goes on (its row gone, its objects gone or
going) is skipped: counted, not a failure. A file without pixels (text, PDF:
filetypes) has no variants to make: counted apart, never read.

Files are visited in id order, ``BATCH_SIZE`` rows per query.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable, Iterator

from flask import current_app
from peewee import IntegrityError

from attachments import usage
from attachments.objects import store_variants
from attachments.rows import record_variants
import filetypes
from imaging import images, variants
from models import ChatFile, db
from sandbox import tasks as sandboxed
from storage import ObjectStore, StorageError

BATCH_SIZE = 200


@dataclass
class BackfillResult:
    files: int = 0  # files looked at
    complete: int = 0  # already had every variant
    generated: int = 0  # files given their missing variants
    variants_stored: int = 0  # objects put
    skipped: int = 0  # files deleted while the run went on
    no_variants: int = 0  # files without pixels (text, PDF): nothing to make
    failed: list[dict[str, str]] = field(default_factory=list)  # {"id", "error"} for files that could not be done

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report_lines(self) -> Iterator[str]:
        """One line per failed file, then the summary."""
        for failure in self.failed:
            yield f"failed {failure['id']}: {failure['error']}"
        yield self.summary()

    def summary(self) -> str:
        line = (f"Checked {self.files} files: {self.complete} already complete, {self.generated} given their "
                f"missing variants ({self.variants_stored} objects stored).")
        if self.no_variants:
            line += f" {self.no_variants} have none (text, PDF)."
        if self.skipped:
            line += f" {self.skipped} skipped (deleted meanwhile)."
        if self.failed:
            line += f" {len(self.failed)} failed."
        return line


def generate_missing(storage: ObjectStore, progress: Callable[[BackfillResult, int], None] | None = None,
                     batch_size: int = BATCH_SIZE) -> BackfillResult:
    """Make every file's missing variants. Needs a database connection and an app context.

    ``progress(result, total)`` is called after each file. A file that cannot
    be done (its original missing or no longer passing verification, storage
    failing) is recorded in the result and the run goes on; one whose row is
    gone by then was deleted meanwhile, and is skipped.
    """
    result = BackfillResult()
    total = ChatFile.select().count()
    last_id = None
    while True:
        query = ChatFile.select().order_by(ChatFile.id).limit(batch_size)
        if last_id is not None:
            query = query.where(ChatFile.id > last_id)
        rows = list(query)
        if not rows:
            return result
        for row in rows:
            result.files += 1
            _visit(storage, row, result)
            if progress is not None:
                progress(result, total)
        last_id = rows[-1].id


def _visit(storage: ObjectStore, row: ChatFile, result: BackfillResult) -> None:
    """Count ``row`` in ``result``: without pixels, complete, generated, skipped or failed."""
    if not filetypes.has_pixels(row.content_type):
        result.no_variants += 1
        return
    try:
        _complete(storage, row, result)
    except _Deleted:
        result.skipped += 1
    except (StorageError, FileNotFoundError, images.UnsupportedType, images.InvalidImage) as error:
        # A delete removes the row before the objects: an object missing with its row gone is a
        # deletion, with the row there a real loss.
        if _deleted(row):
            result.skipped += 1
        else:
            result.failed.append({"id": str(row.id), "error": _describe(error)})


def _complete(storage: ObjectStore, row: ChatFile, result: BackfillResult) -> None:
    missing = _missing_variants(storage, row)
    if not missing:
        result.complete += 1
        return
    config = current_app.config
    with _spooled_original(storage, row) as original:
        info, still, made = sandboxed.verify_and_make(
            original.fileno(), config["MAX_IMAGE_PIXELS"], config["MAX_DECODE_MEMORY"], row.sha256,
            max_file_size=config["MAX_FILE_SIZE"], wait=config["DECODE_WAIT_TIMEOUT"])
    made = [variant for variant in made if variant.name in missing]
    result.variants_stored += len(store_variants(storage, row.organization_id, row.id, made))
    try:
        with db.atomic():
            # The file's row first: it locks the row, so a delete giving the file's bytes back waits for this
            # transaction and counts the variants recorded here (or this one finds the file gone).
            if not ChatFile.update(width=still.width, height=still.height,
                                   animated=info.animated).where(ChatFile.id == row.id).execute():
                raise _Deleted()
            before = usage.stored_bytes(row.id)
            record_variants(row.id, made)
            # Counted without a quota check: the file is stored already, and its organization had it.
            usage.add(row.organization_id, usage.stored_bytes(row.id) - before)
    except IntegrityError:
        if _deleted(row):  # meanwhile: gc-storage removes the objects just stored
            raise _Deleted() from None
        raise
    result.generated += 1


class _Deleted(Exception):
    """The file was deleted while the run worked on it."""


def _deleted(row: ChatFile) -> bool:
    return not ChatFile.select().where(ChatFile.id == row.id).exists()


def _missing_variants(storage: ObjectStore, row: ChatFile) -> set[str]:
    stored = {variant.variant: variant for variant in row.variants}
    return {
        name for name in variants.NAMES
        if name not in stored
        or not stored[name].original and not _exists(storage, storage.variant_key(row.organization_id, row.id, name))
    }


def _exists(storage: ObjectStore, key: str) -> bool:
    try:
        storage.head(key)
    except FileNotFoundError:
        return False
    return True


def _spooled_original(storage: ObjectStore, row: ChatFile) -> IO[bytes]:
    """The original's bytes in a temporary file, flushed: what the decode sandbox is handed, as an upload's."""
    stored = storage.open(storage.original_key(row.organization_id, row.id))
    spooled = tempfile.TemporaryFile(prefix="chatfiles-variants-")
    try:
        for chunk in stored:
            spooled.write(chunk)
        spooled.flush()
    except BaseException:
        spooled.close()
        raise
    finally:
        stored.close()
    return spooled


def _describe(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "The original is missing from storage."
    return str(error)

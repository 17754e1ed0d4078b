"""Saving and deleting an attachment: the order of its objects and its rows, and undoing half a save.

A save writes the objects first and the rows last, in one transaction, and
deletes the objects again if anything fails: a crash in between leaves
objects without a row, which gc-storage removes, never a row without its
bytes. A delete goes the other way, row first: every instance answers 404 at
once, and the objects it fails to delete are gc-storage's too.
"""

from __future__ import annotations

import logging
import uuid

from flask import current_app
from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded

from attachments import objects, rows, usage
from attachments.decode import Verified
from models import ChatFile, db, release_connection
from storage import ObjectStore, StorageError, get_storage, object_metadata
from web.bodies import SpooledBody
from web.errors import ApiError

log = logging.getLogger(__name__)


def save(body: SpooledBody, verified: Verified, name: str | None, owner_id: uuid.UUID,
         organization_id: uuid.UUID) -> uuid.UUID:
    """Count the file in its organization's usage (400 past the quota), write the original and its variants, then
    the rows; undo the objects and the count if anything fails. The new file's id.

    ``verified`` is decode.verify's. Width and height are as displayed (EXIF
    orientation applied), in the row and in the object metadata alike; a
    file without pixels has neither, and no variants.

    Under a quota the file is counted before anything is stored, by the statement that checks the quota, and
    given back if the save fails. Without one nothing can be refused, so it is counted in the rows' own
    transaction: exact even when the process dies in between, and no write comes before the objects.
    """
    stored_bytes = usage.bytes_to_store(body.size, verified.made)
    quota = current_app.config["ORG_STORAGE_QUOTA"]
    if quota is None:
        return _store(body, verified, name, owner_id, organization_id, count_with_rows=stored_bytes)
    usage.reserve_or_refuse(organization_id, stored_bytes, quota)
    release_connection()  # storing can be slow, and needs no connection
    try:
        return _store(body, verified, name, owner_id, organization_id, count_with_rows=0)
    except BaseException:
        usage.release_quietly(organization_id, stored_bytes)
        raise


def _store(body: SpooledBody, verified: Verified, name: str | None, owner_id: uuid.UUID,
           organization_id: uuid.UUID, *, count_with_rows: int) -> uuid.UUID:
    """The objects, then the rows (with ``count_with_rows`` bytes and the file counted in the same transaction
    when not 0); the objects undone when either fails."""
    file_id = uuid.uuid4()
    sha256 = body.sha256
    storage = get_storage()
    key = storage.original_key(organization_id, file_id)
    metadata = object_metadata(owner_id, organization_id, sha256, verified.width, verified.height, name)
    written: list[str] = []
    try:
        storage.put(key, body.rewound(), verified.content_type, metadata)
        written.append(key)
        objects.store_variants(storage, organization_id, file_id, verified.made, written)
    except StorageError:
        log.exception("storing %s or its variants failed", key)
        _undo(storage, written)
        raise ApiError(500, "Failed to save chat file.", "The file store is unavailable; try again.",
                       code="storage_error") from None
    try:
        with db.atomic():
            rows.insert_file(file_id, owner_id, organization_id, name, verified.content_type, body.size, sha256,
                             verified.width, verified.height, verified.animated)
            rows.record_variants(file_id, verified.made)
            if count_with_rows:
                usage.add(organization_id, count_with_rows, files=1)
    except (PeeweeException, MaxConnectionsExceeded):
        log.exception("recording %s failed; deleting its objects", key)
        _undo(storage, written)
        raise ApiError(500, "Failed to save chat file.", "The database is unavailable; try again.",
                       code="storage_error") from None
    return file_id


def _undo(storage: ObjectStore, written: list[str]) -> None:
    for key in written:
        objects.delete_quietly(storage, key)


def delete(row: ChatFile, owner_id: uuid.UUID) -> bool:
    """Delete the owner's file ``row``: its row (its stored bytes given back to its organization's usage in the
    same transaction), then its objects. False when a concurrent delete got there first."""
    with rows.file_locked(row.id):
        stored_bytes = usage.stored_bytes(row.id)
        if not rows.delete_owned(row.id, owner_id):
            return False
        usage.release(row.organization_id, stored_bytes)
    release_connection()  # the objects' deletes need no connection
    objects.delete_all(get_storage(), row)
    return True

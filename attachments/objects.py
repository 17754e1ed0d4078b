"""An attachment's objects in the store: its variants put, its bytes opened for a download, all of it deleted.

Which key an object has is the store's to say (storage.ObjectStore.original_key, variant_key).
"""

from __future__ import annotations

import logging
import uuid
from typing import Iterable

import filetypes
from attachments import rows
from imaging import variants
from models import ChatFile
from storage import ByteRange, ObjectStore, StorageError, StoredObject, get_storage, variant_metadata
from web.errors import ApiError

log = logging.getLogger(__name__)


def store_variants(storage: ObjectStore, organization_id: uuid.UUID, file_id: uuid.UUID, made: Iterable[variants.Made],
                   written: list[str] | None = None) -> list[str]:
    """Put each made variant that is not the original; return the keys written, also appended to ``written``
    as they go (so a caller can undo them when a later put raises StorageError)."""
    written = [] if written is None else written
    for variant in made:
        if variant.data is None:  # variant.original: the file's own bytes serve as it, nothing to put
            continue
        key = storage.variant_key(organization_id, file_id, variant.name)
        metadata = variant_metadata(file_id, variant.name, variant.sha256, variant.width, variant.height)
        storage.put(key, variant.data, variant.content_type, metadata)
        written.append(key)
    return written


def open_original(row: ChatFile, byte_range: ByteRange | None = None) -> StoredObject:
    storage = get_storage()
    return _open(storage, storage.original_key(row.organization_id, row.id), row.id, byte_range)


def open_variant(row: ChatFile, variant: str, byte_range: ByteRange | None = None) -> StoredObject:
    storage = get_storage()
    return _open(storage, storage.variant_key(row.organization_id, row.id, variant), row.id, byte_range)


def _open(storage: ObjectStore, key: str, file_id: uuid.UUID, byte_range: ByteRange | None) -> StoredObject:
    """The StoredObject under ``key`` (only ``byte_range`` of it, if given); 404 if its file was deleted
    meanwhile, 500 if its bytes are lost."""
    try:
        return storage.open(key, byte_range)
    except FileNotFoundError:
        if not rows.exists(file_id):  # its row went first: a delete raced this download
            raise ApiError(404, "File not found.") from None
        log.error("a row points to %s, which is missing", key)
        raise ApiError(500, "Failed to read chat file.", "The file's bytes are missing from storage.",
                       code="storage_error") from None
    except StorageError:
        log.exception("opening %s failed", key)
        raise ApiError(500, "Failed to read chat file.", "The file store is unavailable; try again.",
                       code="storage_error") from None


def delete_all(storage: ObjectStore, row: ChatFile) -> None:
    """The original and every variant, stored or not (deleting an absent key is no error; a file without pixels
    never had any); what fails is logged and left to gc-storage."""
    for key in keys_of(storage, row.organization_id, row.id, with_variants=filetypes.has_pixels(row.content_type)):
        delete_quietly(storage, key)


def keys_of(storage: ObjectStore, organization_id: uuid.UUID, file_id: uuid.UUID, *,
            with_variants: bool = True) -> list[str]:
    """Every key a file's objects may have: its original's, then each variant's (stored or not)."""
    return ([storage.original_key(organization_id, file_id)]
            + [storage.variant_key(organization_id, file_id, name) for name in variants.NAMES if with_variants])


def delete_quietly(storage: ObjectStore, key: str) -> None:
    try:
        storage.delete(key)
    except StorageError:
        log.exception("could not delete orphan %s; gc-storage will", key)

"""Object storage for file bytes: one interface, an S3 and a local backend.

The object layout is a public interface read by other tools (CONTRACT.md,
"Storage layout"): ``{S3_PREFIX}{organization_id}/{file_id}``, written once,
never changed, with the stored type as Content-Type and the metadata below.
Backends raise only ``FileNotFoundError`` or :class:`StorageError`.
"""

import abc
import datetime
import urllib.parse
from dataclasses import dataclass, field

from flask import current_app

CHUNK_SIZE = 256 * 1024


class StorageError(Exception):
    """The object store failed or could not be reached."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    last_modified: datetime.datetime
    metadata: dict = field(default_factory=dict)


class StoredObject:
    """An open object: iterate it for its bytes in chunks; close it when done."""

    def __init__(self, info, chunks, close):
        self.info = info
        self._chunks = chunks
        self._close = close

    def __iter__(self):
        return self._chunks

    def close(self):
        self._close()


class ObjectStore(abc.ABC):
    @abc.abstractmethod
    def put(self, key, data, content_type, metadata):
        """Store ``data`` (bytes, or a binary file object read from where it stands) under ``key``, whole or not at all."""

    @abc.abstractmethod
    def open(self, key):
        """Return a StoredObject to stream ``key``; FileNotFoundError if absent."""

    @abc.abstractmethod
    def head(self, key):
        """Return the ObjectInfo of ``key``; FileNotFoundError if absent."""

    @abc.abstractmethod
    def delete(self, key):
        """Remove ``key``; removing an absent key is not an error."""

    @abc.abstractmethod
    def iter_objects(self, prefix=""):
        """Yield (key, last_modified as aware UTC datetime) for every object under ``prefix``."""

    @abc.abstractmethod
    def check(self):
        """Raise StorageError unless the store is reachable and usable."""


def object_key(prefix, organization_id, file_id):
    return f"{prefix}{organization_id}/{file_id}"


def object_metadata(owner_id, organization_id, sha256, width, height, filename):
    """User metadata as the storage layout defines it (all values ASCII)."""
    return {
        "owner-id": str(owner_id),
        "organization-id": str(organization_id),
        "sha256": sha256,
        "width": str(width),
        "height": str(height),
        "filename": urllib.parse.quote(filename or "", safe=""),
    }


def from_config(config):
    if config.get("S3_BUCKET"):
        from storage.s3 import S3Store

        return S3Store(
            bucket=config["S3_BUCKET"],
            endpoint_url=config.get("S3_ENDPOINT_URL"),
            region=config["S3_REGION"],
        )
    from storage.local import LocalStore

    return LocalStore(config["LOCAL_STORAGE_ROOT"])


def init_app(app):
    app.extensions["storage"] = from_config(app.config)


def get_storage():
    return current_app.extensions["storage"]

"""What every store is: the ObjectStore interface, its errors and values, and the bucket layout.

A module of its own so the backends (local.py, s3.py) import it rather than
the package, which imports them.
"""

from __future__ import annotations

import abc
import datetime
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import config

CHUNK_SIZE = 256 * 1024


class StorageError(Exception):
    """The object store failed or could not be reached."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    last_modified: datetime.datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``first`` to ``last`` of an object, both included (HTTP's convention), within the object."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class StoredObject:
    """An open object: iterate it for its bytes in chunks (only the range asked for, if one was); close it when
    done. ``info.size`` is the whole object's size either way."""

    def __init__(self, info: ObjectInfo, chunks: Iterator[bytes], close: Callable[[], object]) -> None:
        self.info = info
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._close()


class ObjectStore(abc.ABC):
    def __init__(self, originals_prefix: str = config.DEFAULTS["S3_PREFIX"],
                 variants_prefix: str = config.DEFAULTS["VARIANTS_PREFIX"]) -> None:
        self.originals_prefix = originals_prefix
        self.variants_prefix = variants_prefix

    # -- the layout ---------------------------------------------------------------

    def original_key(self, organization_id: uuid.UUID, file_id: uuid.UUID) -> str:
        """Where a file's original lives."""
        return object_key(self.originals_prefix, organization_id, file_id)

    def variant_key(self, organization_id: uuid.UUID, file_id: uuid.UUID, variant: str) -> str:
        """Where a file's thumbnail or preview lives: apart from the originals, under the variants' prefix."""
        return variant_key(self.variants_prefix, organization_id, file_id, variant)

    def original_file_id(self, key: str) -> uuid.UUID | None:
        """The file id of an original's key, or None for any other key (another tool's, or a variant's)."""
        segments = _segments(key, self.originals_prefix, 2)
        return None if segments is None else uuid.UUID(segments[1])

    def variant_of(self, key: str) -> tuple[uuid.UUID, str] | None:
        """(file id, variant name) of a variant's key, or None for any other key; which names are variants is
        the caller's to judge."""
        segments = _segments(key, self.variants_prefix, 3)
        return None if segments is None else (uuid.UUID(segments[1]), segments[2])

    # -- the objects --------------------------------------------------------------

    @abc.abstractmethod
    def put(self, key: str, data: bytes | BinaryIO, content_type: str, metadata: dict[str, str]) -> None:
        """Store ``data`` (bytes, or a binary file object read from where it stands) under ``key``, whole or not
        at all."""

    @abc.abstractmethod
    def open(self, key: str, byte_range: ByteRange | None = None) -> StoredObject:
        """Return a StoredObject to stream ``key``, whole or only ``byte_range`` of it (which the caller keeps
        within the object: the store reads no byte outside it); FileNotFoundError if absent."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Return the ObjectInfo of ``key``; FileNotFoundError if absent."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""

    @abc.abstractmethod
    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, datetime.datetime]]:
        """Yield (key, last_modified as aware UTC datetime) for every object under ``prefix``."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageError unless the store is reachable and usable."""

    def iter_leftovers(self, prefix: str = "") -> Iterator[tuple[str, datetime.datetime]]:
        """Yield (name, mtime) for each file an interrupted put or delete left behind under ``prefix``.

        Nothing by default: a store whose put is atomic leaves no debris (S3).
        One that writes an object as several files (local.py) says which are
        left over, for gc-storage to remove with remove_leftover().
        """
        yield from ()

    def remove_leftover(self, name: str) -> None:
        """Remove a file iter_leftovers() yielded, unless it has become part of an object since."""
        raise StorageError(f"{name!r} is not a leftover: this store leaves none.")


# The layout itself, applied by the store's methods with its own prefixes. Tests and tools that know a prefix
# spell keys with these; the service asks its store.
def object_key(prefix: str, organization_id: uuid.UUID, file_id: uuid.UUID) -> str:
    return f"{prefix}{organization_id}/{file_id}"


def variant_key(prefix: str, organization_id: uuid.UUID, file_id: uuid.UUID, variant: str) -> str:
    return f"{prefix}{organization_id}/{file_id}/{variant}"


def _segments(key: str, prefix: str, count: int) -> list[str] | None:
    """The ``count`` segments after ``prefix`` of a key in the layout (``{organization_id}/{file_id}``, then the
    variant's name), both ids canonical UUIDs; None for any other key."""
    if not key.startswith(prefix):
        return None
    segments = key[len(prefix):].split("/")
    if len(segments) != count or not all(_is_canonical_uuid(segment) for segment in segments[:2]):
        return None
    return segments


def _is_canonical_uuid(text: str) -> bool:
    # Only the form the service writes: anything else was put there by another tool.
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def object_metadata(owner_id: uuid.UUID, organization_id: uuid.UUID, sha256: str, width: int | None,
                    height: int | None, filename: str | None) -> dict[str, str]:
    """User metadata as the storage layout defines it (all values ASCII); ``width``/``height`` only for a
    file with pixels (None: a text or PDF file, whose object has neither)."""
    metadata = {"owner-id": str(owner_id), "organization-id": str(organization_id), "sha256": sha256}
    if width is not None and height is not None:
        metadata |= {"width": str(width), "height": str(height)}
    return metadata | {"filename": urllib.parse.quote(filename or "", safe="")}


def variant_metadata(file_id: uuid.UUID, variant: str, sha256: str, width: int, height: int) -> dict[str, str]:
    return {"file-id": str(file_id), "variant": variant, "sha256": sha256, "width": str(width), "height": str(height)}

"""A directory as an object store: the embedded default for one machine.

Each object is two files: the bytes under the key's path and a JSON sidecar
with its type and metadata. Both are written to a temporary file, fsynced and
renamed into place, so a reader sees a whole object or none; the bytes are
renamed last, so their presence is what makes an object exist.

A delete removes the directories it leaves empty, up to the root: each with
rmdir, which fails on one that is not empty, so a put that has a file in a
directory keeps it; a put whose directory vanished before its first file was
in it makes it again.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from storage.interface import CHUNK_SIZE, ByteRange, ObjectInfo, ObjectStore, StorageError, StoredObject

META_SUFFIX = ".meta.json"
TEMP_PREFIX = ".tmp-"
# A put makes its directory again if a delete's cleanup removed it this many times in a row.
DIRECTORY_ATTEMPTS = 10


class LocalStore(ObjectStore):
    def __init__(self, root: str, **layout: str) -> None:
        super().__init__(**layout)
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        path = os.path.abspath(os.path.join(self.root, key))
        if not path.startswith(self.root + os.sep) or key.endswith(META_SUFFIX):
            raise StorageError(f"Key {key!r} is outside the store.")
        return path

    def put(self, key: str, data: bytes | BinaryIO, content_type: str, metadata: dict[str, str]) -> None:
        path = self._path(key)
        sidecar = json.dumps({"content_type": content_type, "metadata": metadata}).encode()
        try:
            _write_atomically(path + META_SUFFIX, sidecar)
            _write_atomically(path, data)
        except OSError as error:
            raise StorageError(f"Could not write {key}: {error}") from error

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            stat = os.stat(path)
            with open(path + META_SUFFIX, "rb") as meta_file:
                sidecar = json.load(meta_file)
        except FileNotFoundError:
            raise FileNotFoundError(key) from None
        except (OSError, ValueError) as error:
            raise StorageError(f"Could not read {key}: {error}") from error
        return ObjectInfo(key, stat.st_size, sidecar["content_type"], _mtime(stat), sidecar["metadata"])

    def open(self, key: str, byte_range: ByteRange | None = None) -> StoredObject:
        info = self.head(key)
        try:
            handle = open(self._path(key), "rb")
        except FileNotFoundError:
            raise FileNotFoundError(key) from None
        except OSError as error:
            raise StorageError(f"Could not open {key}: {error}") from error
        if byte_range is None:
            return StoredObject(info, iter(lambda: handle.read(CHUNK_SIZE), b""), handle.close)
        handle.seek(byte_range.first)
        return StoredObject(info, _read_at_most(handle, byte_range.length), handle.close)

    def delete(self, key: str) -> None:
        path = self._path(key)
        for name in (path, path + META_SUFFIX):
            _remove_if_present(name, key)
        self._remove_empty_directories(os.path.dirname(path))

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, datetime.datetime]]:
        for key, path, name, _siblings in self._walk(prefix):
            if not (name.endswith(META_SUFFIX) or name.startswith(TEMP_PREFIX)):
                yield from _with_mtime(key, path)

    def iter_leftovers(self, prefix: str = "") -> Iterator[tuple[str, datetime.datetime]]:
        """Yield (name, mtime) for each file an interrupted put or delete left behind.

        Only this backend writes an object as several files, so only it has any
        (ObjectStore's default yields none). A temporary file is a write cut
        short; a sidecar without its bytes is a put stopped before the bytes'
        rename, or a delete stopped after removing them.
        """
        for relative, path, name, siblings in self._walk(prefix):
            if _is_leftover(name, siblings):
                yield from _with_mtime(relative, path)

    def remove_leftover(self, name: str) -> None:
        """Remove a file iter_leftovers() yielded, unless it has become part of an object since."""
        path = os.path.abspath(os.path.join(self.root, name))
        if not path.startswith(self.root + os.sep):
            raise StorageError(f"{name!r} is outside the store.")
        base = os.path.basename(path)
        if not (base.startswith(TEMP_PREFIX) or base.endswith(META_SUFFIX)):
            raise StorageError(f"{name!r} is an object, not a leftover file.")
        if base.endswith(META_SUFFIX) and os.path.exists(path[: -len(META_SUFFIX)]):
            return  # its bytes arrived since: a whole object now
        _remove_if_present(path, name)
        self._remove_empty_directories(os.path.dirname(path))

    def _remove_empty_directories(self, directory: str) -> None:
        """Remove ``directory``, then its parents, while they are empty; never the root."""
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)  # only if empty: a put's file in it keeps it
            except FileNotFoundError:
                pass  # another delete's cleanup got there first: its parent may be empty now
            except OSError:
                return  # not empty (or not ours to remove): nor are its parents
            directory = os.path.dirname(directory)

    def _walk(self, prefix: str) -> Iterator[tuple[str, str, str, set[str]]]:
        """(key, path, file name, names in its directory) for every file under ``prefix``."""
        for directory, _dirs, files in os.walk(self.root):
            siblings = set(files)
            for name in files:
                path = os.path.join(directory, name)
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key, path, name, siblings

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable.")


def _is_leftover(name: str, names_in_directory: set[str]) -> bool:
    if name.startswith(TEMP_PREFIX):
        return True
    return name.endswith(META_SUFFIX) and name[: -len(META_SUFFIX)] not in names_in_directory


def _read_at_most(handle: BinaryIO, length: int) -> Iterator[bytes]:
    """The next ``length`` bytes of ``handle`` in chunks (fewer if the file ends first)."""
    while length > 0:
        chunk = handle.read(min(CHUNK_SIZE, length))
        if not chunk:
            return
        length -= len(chunk)
        yield chunk


def _remove_if_present(path: str, what: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise StorageError(f"Could not remove {what}: {error}") from error


def _with_mtime(key: str, path: str) -> Iterator[tuple[str, datetime.datetime]]:
    try:
        yield key, _mtime(os.stat(path))
    except FileNotFoundError:
        pass  # deleted while we walked


def _mtime(stat: os.stat_result) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc)


def _write_atomically(path: str, data: bytes | BinaryIO) -> None:
    fd, temp_path = _temp_file_in(os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as temp_file:
            if hasattr(data, "read"):
                shutil.copyfileobj(data, temp_file)
            else:
                temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.remove(temp_path)
        except FileNotFoundError:
            pass
        raise


def _temp_file_in(directory: str) -> tuple[int, str]:
    """mkstemp in ``directory``, made first, and again if a delete's cleanup removed it before the file was in it.

    Once the temporary file is in it, rmdir cannot remove the directory; nothing
    of ``data`` is read before, so trying again is safe for a stream. makedirs
    raises FileNotFoundError when a parent went before its mkdir, and
    FileExistsError when the directory was made by another put and removed
    again between its mkdir and its check.
    """
    for attempt in range(DIRECTORY_ATTEMPTS):
        try:
            os.makedirs(directory, exist_ok=True)
            return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        except (FileNotFoundError, FileExistsError):
            if attempt == DIRECTORY_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")  # for mypy, which cannot tell

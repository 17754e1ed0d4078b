"""Chat file attachments: upload an image, download it again."""

import contextlib
import logging
import threading
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request
from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded

import images
import uploads
from auth import login_required
from errors import ApiError, error_response
from filenames import inline_content_disposition, name_from_content_disposition
from models import ChatFile, Membership, PreparedSelect, release_connection
from storage import StorageError, get_storage, object_key, object_metadata

bp = Blueprint("files", __name__)
log = logging.getLogger(__name__)

CACHE_FOREVER = "private, max-age=31536000, immutable"
# How long a decode waits for room in the worker's upload budget before a 503.
BUDGET_WAIT_SECONDS = 30
# Decoding an image may take up to MAX_DECODE_MEMORY (estimated before it
# starts); a worker has dozens of threads, so only two decode at once (more
# would not go faster on the machine's two cores; raise with the core count).
DECODE_SLOTS = threading.BoundedSemaphore(2)


@bp.post("/api/v2/chats/files")
@login_required
def upload():
    organization_id = _organization_param()
    if not Membership.select().where(
        (Membership.user == g.user) & (Membership.organization == organization_id)
    ).exists():
        raise ApiError(403, "You are not a member of this organization.")
    _check_declared_type()
    release_connection()  # reading the body and storing it can be slow

    # The body is spooled to disk as it arrives: a slow client holds no memory budget.
    with uploads.spooled_body(current_app.config["MAX_FILE_SIZE"]) as body:
        if not body.size:
            raise ApiError(400, "The file is empty.", "Send the image's bytes as the request body.")
        info = _verify(body)
        name = name_from_content_disposition(request.headers.get("Content-Disposition"))
        file_id = _store(body, info, name, organization_id)
    return jsonify(id=str(file_id)), 201


@bp.route("/api/v2/chats/files/<file_id>", methods=["GET", "HEAD"])
@login_required
def download(file_id):
    row = _readable_file(file_id)
    headers = {
        "Content-Type": row.content_type,
        "Content-Disposition": inline_content_disposition(row.name),
        "Cache-Control": CACHE_FOREVER,
        "ETag": f'"{row.sha256}"',
        "X-Content-Type-Options": "nosniff",
    }
    release_connection()
    if request.if_none_match.contains_weak(row.sha256):
        return Response(status=304, headers=headers)
    headers["Content-Length"] = str(row.size)
    if request.method == "HEAD":
        return Response(status=200, headers=headers)
    stored = _open_object(row)
    return Response(_stream(stored), status=200, headers=headers, direct_passthrough=True)


class UploadBudget:
    """Bytes of upload bodies one worker maps into memory at once.

    The body arrives into a temporary file, holding none of this; an upload
    reserves its size only to decode (the decoder reads the file's pages)
    and gives it back when done. One that does not fit waits for room. A
    single upload always fits, whatever its size.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self._used = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size, timeout):
        with self._room:
            if not self._room.wait_for(lambda: self._used == 0 or self._used + size <= self.capacity, timeout):
                raise _busy()
            self._used += size
        try:
            yield
        finally:
            with self._room:
                self._used -= size
                self._room.notify_all()


@bp.record_once
def _create_upload_budget(state):
    state.app.extensions["upload_budget"] = UploadBudget(state.app.config["UPLOAD_MEMORY_BUDGET"])


@bp.errorhandler(PeeweeException)
@bp.errorhandler(MaxConnectionsExceeded)  # no pooled connection came free in time
def database_unavailable(error):
    """The token and membership checks need the database too: their failure is this route's 500."""
    log.error("database failure during %s: %s", request.endpoint, error)
    message = "Failed to save chat file." if request.endpoint == "files.upload" else "Failed to read chat file."
    return error_response(500, message, "The database is unavailable; try again.")


def _organization_param():
    value = request.args.get("organization", "")
    if not value:
        raise ApiError(400, "Missing organization query parameter.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(400, "Invalid organization ID.", f"{value!r} is not a UUID.") from None


def _check_declared_type():
    declared = request.mimetype  # lower-cased, parameters stripped
    if declared not in images.ALLOWED_TYPES:
        raise ApiError(400, "Unsupported file type.", "Allowed types: " + ", ".join(images.ALLOWED_TYPES) + ".")


def _verify(body):
    """Decode the spooled body in one of the worker's decode slots, its bytes counted in the memory budget."""
    config = current_app.config
    try:
        with (
            _decode_slot(config["DECODE_WAIT_TIMEOUT"]),
            current_app.extensions["upload_budget"].reserve(body.size, BUDGET_WAIT_SECONDS),
            body.mapped() as data,
        ):
            return images.verify_image(data, config["MAX_IMAGE_PIXELS"], config["MAX_DECODE_MEMORY"])
    except images.UnsupportedType as error:
        raise ApiError(400, "Unsupported file type.", str(error)) from None
    except images.InvalidImage as error:
        raise ApiError(400, "Invalid image file.", str(error)) from None


@contextlib.contextmanager
def _decode_slot(timeout):
    if not DECODE_SLOTS.acquire(timeout=timeout):
        raise _busy()
    try:
        yield
    finally:
        DECODE_SLOTS.release()


def _busy():
    return ApiError(503, "Too many uploads in progress.", "Try again in a moment.",
                    headers={"Retry-After": "1", "Connection": "close"})


def _store(body, info, name, organization_id):
    """Write the object, then its row; undo the object if the row fails."""
    file_id = uuid.uuid4()
    sha256 = body.sha256
    key = object_key(current_app.config["S3_PREFIX"], organization_id, file_id)
    storage = get_storage()
    metadata = object_metadata(g.user.id, organization_id, sha256, info.width, info.height, name)
    try:
        storage.put(key, body.rewound(), info.content_type, metadata)
    except StorageError:
        log.exception("storing %s failed", key)
        raise ApiError(500, "Failed to save chat file.", "The file store is unavailable; try again.") from None
    try:
        ChatFile.create(
            id=file_id,
            owner=g.user.id,
            organization=organization_id,
            name=name,
            content_type=info.content_type,
            size=body.size,
            sha256=sha256,
            width=info.width,
            height=info.height,
        )
    except (PeeweeException, MaxConnectionsExceeded):
        log.exception("recording %s failed; deleting its object", key)
        _delete_quietly(storage, key)
        raise ApiError(500, "Failed to save chat file.", "The database is unavailable; try again.") from None
    return file_id


def _delete_quietly(storage, key):
    try:
        storage.delete(key)
    except StorageError:
        log.exception("could not delete orphan %s; gc-storage will", key)


# The download's one query, its SQL built once (models.PreparedSelect): composing it was most of a 304's CPU.
_OWN_FILE = PreparedSelect(lambda file_id, owner_id: ChatFile.select().where((ChatFile.id == file_id)
                                                                             & (ChatFile.owner == owner_id)),
                           (ChatFile.id, ChatFile.owner), (uuid.UUID(int=1), uuid.UUID(int=2)))


def _readable_file(file_id):
    try:
        file_uuid = uuid.UUID(file_id)
    except ValueError:
        raise ApiError(400, "Invalid file ID.", f"{file_id!r} is not a UUID.") from None
    row = _OWN_FILE.first(file_uuid, g.user.id)
    if row is None:
        raise ApiError(404, "File not found.")
    return row


def _open_object(row):
    key = object_key(current_app.config["S3_PREFIX"], row.organization_id, row.id)
    try:
        return get_storage().open(key)
    except FileNotFoundError:
        log.error("row %s has no object at %s", row.id, key)
        raise ApiError(500, "Failed to read chat file.", "The file's bytes are missing from storage.") from None
    except StorageError:
        log.exception("opening %s failed", key)
        raise ApiError(500, "Failed to read chat file.", "The file store is unavailable; try again.") from None


def _stream(stored):
    try:
        yield from stored
    finally:
        stored.close()

"""Chat file attachments: upload an image, download it, its thumbnail, preview and info; delete it."""

import contextlib
import datetime
import logging
import threading
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request
from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded

from imaging import images, variants
from models import (
    ChatFile,
    ChatFileVariant,
    Membership,
    PreparedQuery,
    PreparedSelect,
    db,
    release_connection,
    rfc3339,
    utcnow,
)
from ops import observability
from sandbox import PoolBusy
from sandbox import tasks as sandboxed
from storage import StorageError, get_storage, object_metadata, variant_metadata
from web import bodies
from web.auth import login_required
from web.errors import ApiError, error_response
from web.filenames import inline_content_disposition, name_from_content_disposition

bp = Blueprint("files", __name__)
log = logging.getLogger(__name__)

CACHE_FOREVER = "private, max-age=31536000, immutable"
# How long a decode waits for room in the worker's upload budget before a 503.
BUDGET_WAIT_SECONDS = 30


@bp.post("/api/v2/chats/files")
@login_required
def upload():
    organization_id = _organization_param()
    if not _MEMBER.exists(g.user.id, organization_id):
        raise ApiError(403, "You are not a member of this organization.")
    _check_declared_type()
    release_connection()  # reading the body and storing it can be slow

    # The body is spooled to disk as it arrives: a slow client holds no memory budget.
    with bodies.spooled_body(current_app.config["MAX_FILE_SIZE"]) as body:
        if not body.size:
            raise ApiError(400, "The file is empty.", "Send the image's bytes as the request body.")
        info, still, made = _verify(body)
        name = name_from_content_disposition(request.headers.get("Content-Disposition"))
        file_id = _store(body, info, still, made, name, organization_id)
    return jsonify(id=str(file_id)), 201


@bp.route("/api/v2/chats/files/<file_id>", methods=["GET", "HEAD"])
@login_required
def download(file_id):
    row = _readable_file(file_id, _FILE_TO_SEND)
    return _send(row.id, row.content_type, row.name, row.sha256, row.size, lambda: _original_key(row))


def _download_variant(file_id, variant):
    row = _readable_file(file_id, _FILE_TO_SEND)
    stored = _VARIANT_TO_SEND.first(row.id, variant)
    if stored is None:
        raise ApiError(404, f"The file has no {variant} yet.",
                       "Files uploaded before variants existed get them from the generate-variants command.")
    if stored.original:
        return _send(row.id, row.content_type, row.name, row.sha256, row.size, lambda: _original_key(row))
    return _send(row.id, stored.content_type, variants.renamed(row.name, stored.content_type), stored.sha256, stored.size,
                 lambda: get_storage().variant_key(row.organization_id, row.id, variant))


# One route per variant (variants.VARIANTS): /thumbnail, /preview.
for _spec in variants.VARIANTS:
    bp.add_url_rule(
        f"/api/v2/chats/files/<file_id>/{_spec.name}",
        endpoint=f"download_{_spec.name}",
        view_func=login_required(lambda file_id, _variant=_spec.name: _download_variant(file_id, _variant)),
        methods=["GET", "HEAD"],
    )


@bp.get("/api/v2/chats/files/<file_id>/info")
@login_required
def file_info(file_id):
    row = _readable_file(file_id)
    stored = {variant.variant: variant for variant in row.variants}
    return jsonify(
        id=str(row.id),
        organization_id=str(row.organization_id),
        name=row.name,
        content_type=row.content_type,
        size=row.size,
        sha256=row.sha256,
        width=row.width,
        height=row.height,
        animated=row.animated,
        created_at=rfc3339(row.created_at),
        **{name: _variant_json(stored.get(name)) for name in variants.NAMES},
    )


def _variant_json(stored):
    if stored is None:
        return None  # not made yet: generate-variants makes it
    return {"width": stored.width, "height": stored.height, "content_type": stored.content_type}


@bp.delete("/api/v2/chats/files/<file_id>")
@login_required
def delete_file(file_id):
    """The row goes first (every instance answers 404 at once), then the objects; gc-storage removes what fails."""
    row = _readable_file(file_id)
    if not ChatFile.delete().where((ChatFile.id == row.id) & (ChatFile.owner == g.user.id)).execute():
        raise ApiError(404, "File not found.")  # a concurrent delete got there first
    release_connection()
    storage = get_storage()
    for key in _all_keys(row):
        _delete_quietly(storage, key)
    return Response(status=204)


def _original_key(row):
    return get_storage().original_key(row.organization_id, row.id)


def _all_keys(row):
    """The original's key and every variant's, stored or not (deleting an absent key is no error)."""
    storage = get_storage()
    return [_original_key(row)] + [storage.variant_key(row.organization_id, row.id, name) for name in variants.NAMES]


def _send(file_id, content_type, name, sha256, size, key_of):
    """200 with the object's bytes streamed from storage, 304 for a matching If-None-Match, headers only for HEAD.

    ``key_of()`` names the object: only a 200 with a body needs it.
    """
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": inline_content_disposition(name),
        "Cache-Control": CACHE_FOREVER,
        "ETag": f'"{sha256}"',
        "X-Content-Type-Options": "nosniff",
    }
    release_connection()
    if request.if_none_match.contains_weak(sha256):
        return Response(status=304, headers=headers)
    headers["Content-Length"] = str(size)
    if request.method == "HEAD":
        return Response(status=200, headers=headers)
    stored = _open_object(key_of(), file_id)
    return Response(_stream(stored), status=200, headers=headers, direct_passthrough=True)


class UploadBudget:
    """Bytes of upload bodies one worker's sandboxes decode at once.

    The body arrives into a temporary file, holding none of this; an upload
    reserves its size only to decode (its decode sandbox maps the file) and
    gives it back when done. One that does not fit waits for room. A single
    upload always fits, whatever its size.
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
    message = {"files.upload": "Failed to save chat file.", "files.delete_file": "Failed to delete chat file."}.get(
        request.endpoint, "Failed to read chat file.")
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
    """Decode the spooled body in a sandbox process (sandbox/tasks.py), its bytes counted in the memory budget.

    The worker's decode sandboxes are its decode slots: an upload waits up to
    DECODE_WAIT_TIMEOUT for one, then gets 503.
    """
    config = current_app.config
    try:
        with (
            current_app.extensions["upload_budget"].reserve(body.size, BUDGET_WAIT_SECONDS),
            observability.image_work(),
        ):
            return sandboxed.verify_and_make(body.fileno(), config["MAX_IMAGE_PIXELS"], config["MAX_DECODE_MEMORY"],
                                             body.sha256, max_file_size=config["MAX_FILE_SIZE"],
                                             wait=config["DECODE_WAIT_TIMEOUT"])
    except PoolBusy:
        raise _busy() from None
    except images.UnsupportedType as error:
        raise ApiError(400, "Unsupported file type.", str(error)) from None
    except images.InvalidImage as error:
        raise ApiError(400, "Invalid image file.", str(error)) from None


def _busy():
    return ApiError(503, "Too many uploads in progress.", "Try again in a moment.",
                    headers={"Retry-After": "1", "Connection": "close"})


def _store(body, info, still, made, name, organization_id):
    """Write the original and its variants, then the rows; undo the objects if anything fails.

    Width and height are as displayed (EXIF orientation applied), in the row
    and in the object metadata alike.
    """
    file_id = uuid.uuid4()
    sha256 = body.sha256
    storage = get_storage()
    key = storage.original_key(organization_id, file_id)
    metadata = object_metadata(g.user.id, organization_id, sha256, still.width, still.height, name)
    written = []
    try:
        storage.put(key, body.rewound(), info.content_type, metadata)
        written.append(key)
        store_variants(storage, organization_id, file_id, made, written)
    except StorageError:
        log.exception("storing %s or its variants failed", key)
        for done in written:
            _delete_quietly(storage, done)
        raise ApiError(500, "Failed to save chat file.", "The file store is unavailable; try again.") from None
    try:
        with db.atomic():
            _INSERT_FILE.execute(file_id, g.user.id, organization_id, name, info.content_type, body.size, sha256,
                                 still.width, still.height, utcnow(), info.animated).close()
            record_variants(file_id, made)
    except (PeeweeException, MaxConnectionsExceeded):
        log.exception("recording %s failed; deleting its objects", key)
        for done in written:
            _delete_quietly(storage, done)
        raise ApiError(500, "Failed to save chat file.", "The database is unavailable; try again.") from None
    return file_id


def store_variants(storage, organization_id, file_id, made, written=None):
    """Put each made variant that is not the original; return the keys written, also appended to ``written``
    as they go (so a caller can undo them when a later put raises StorageError)."""
    written = [] if written is None else written
    for variant in made:
        if variant.original:
            continue
        key = storage.variant_key(organization_id, file_id, variant.name)
        metadata = variant_metadata(file_id, variant.name, variant.sha256, variant.width, variant.height)
        storage.put(key, variant.data, variant.content_type, metadata)
        written.append(key)
    return written


def record_variants(file_id, made):
    """Insert or replace the variant rows of a file."""
    for variant in made:
        _UPSERT_VARIANT.execute(file_id, variant.name, variant.original, variant.content_type, variant.width,
                                variant.height, variant.size, variant.sha256).close()


def _delete_quietly(storage, key):
    try:
        storage.delete(key)
    except StorageError:
        log.exception("could not delete orphan %s; gc-storage will", key)


# The hot paths' queries, their SQL built once per database (models.PreparedQuery): composing
# them was most of a 304's CPU, and a fifth of a small upload's.
def _own_file_query(*columns):
    """One owner's file by id, prepared: the given columns of its row (all of them when none)."""
    return PreparedSelect(
        lambda file_id, owner_id: ChatFile.select(*columns).where((ChatFile.id == file_id)
                                                                  & (ChatFile.owner == owner_id)),
        (ChatFile.id, ChatFile.owner), (uuid.UUID(int=1), uuid.UUID(int=2)))


_OWN_FILE = _own_file_query()
# What sending the bytes needs, and no more: no dates to parse.
_FILE_TO_SEND = _own_file_query(ChatFile.id, ChatFile.organization, ChatFile.name, ChatFile.content_type,
                                ChatFile.size, ChatFile.sha256)
# A variant's row as sending it needs it.
_VARIANT_TO_SEND = PreparedSelect(
    lambda file_id, variant: ChatFileVariant.select(ChatFileVariant.original, ChatFileVariant.content_type,
                                                    ChatFileVariant.size, ChatFileVariant.sha256)
    .where((ChatFileVariant.file == file_id) & (ChatFileVariant.variant == variant)),
    (ChatFileVariant.file, ChatFileVariant.variant), (uuid.UUID(int=1), "thumbnail"))
_MEMBER = PreparedSelect(
    lambda user_id, organization_id: Membership.select(Membership.organization)
    .where((Membership.user == user_id) & (Membership.organization == organization_id)),
    (Membership.user, Membership.organization), (uuid.UUID(int=1), uuid.UUID(int=2)))
_FILE_COLUMNS = (ChatFile.id, ChatFile.owner, ChatFile.organization, ChatFile.name, ChatFile.content_type,
                 ChatFile.size, ChatFile.sha256, ChatFile.width, ChatFile.height, ChatFile.created_at,
                 ChatFile.animated)
_INSERT_FILE = PreparedQuery(
    lambda *values: ChatFile.insert(dict(zip(_FILE_COLUMNS, values))), _FILE_COLUMNS,
    (uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3), "name", "image/png", 4, "0" * 64, 5, 6,
     datetime.datetime(2000, 1, 1), True))
_VARIANT_COLUMNS = (ChatFileVariant.file, ChatFileVariant.variant, ChatFileVariant.original,
                    ChatFileVariant.content_type, ChatFileVariant.width, ChatFileVariant.height,
                    ChatFileVariant.size, ChatFileVariant.sha256)
_UPSERT_VARIANT = PreparedQuery(
    lambda *values: ChatFileVariant.insert(dict(zip(_VARIANT_COLUMNS, values))).on_conflict(
        conflict_target=[ChatFileVariant.file, ChatFileVariant.variant], preserve=_VARIANT_COLUMNS[2:]),
    _VARIANT_COLUMNS, (uuid.UUID(int=1), "thumbnail", True, "image/webp", 2, 3, 4, "0" * 64))


def _readable_file(file_id, query=_OWN_FILE):
    try:
        file_uuid = uuid.UUID(file_id)
    except ValueError:
        raise ApiError(400, "Invalid file ID.", f"{file_id!r} is not a UUID.") from None
    row = query.first(file_uuid, g.user.id)
    if row is None:
        raise ApiError(404, "File not found.")
    return row


def _open_object(key, file_id):
    try:
        return get_storage().open(key)
    except FileNotFoundError:
        if _deleted_meanwhile(file_id):  # its row went first: a delete raced this download
            raise ApiError(404, "File not found.") from None
        log.error("a row points to %s, which is missing", key)
        raise ApiError(500, "Failed to read chat file.", "The file's bytes are missing from storage.") from None
    except StorageError:
        log.exception("opening %s failed", key)
        raise ApiError(500, "Failed to read chat file.", "The file store is unavailable; try again.") from None


def _deleted_meanwhile(file_id):
    with db.connection_context():
        return not ChatFile.select(ChatFile.id).where(ChatFile.id == file_id).exists()


def _stream(stored):
    try:
        yield from stored
    finally:
        stored.close()

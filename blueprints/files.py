"""Chat file attachments over HTTP: upload an image, a text or a PDF, list a user's files, download one, its
thumbnail, preview and info; delete it.

The routes parse the request and shape the response; what happens to an
attachment in between (its decode, its objects and rows) is attachments/'s.
"""

from __future__ import annotations

import logging
import uuid
from typing import Callable, Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request
from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded

import filetypes
from attachments import decode, listing, objects, rows, store, usage
from imaging import variants
from models import ChatFile, ChatFileVariant, PreparedSelect, release_connection, rfc3339
from storage import ByteRange, StoredObject
from web import bodies, ranges
from web.auth import login_required
from web.errors import ApiError, error_response
from web.filenames import content_disposition, name_from_content_disposition
from web.ids import parse_uuid

bp = Blueprint("files", __name__)
log = logging.getLogger(__name__)

CACHE_FOREVER = "private, max-age=31536000, immutable"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@bp.post("/api/v2/chats/files")
@login_required
def upload() -> tuple[Response, int]:
    organization_id = _organization_param()
    rows.require_member(g.user.id, organization_id)
    declared = _declared_type()
    _refuse_past_quota_early(organization_id)
    release_connection()  # reading the body and storing it can be slow

    # The body is spooled to disk as it arrives: a slow client holds no memory budget.
    with bodies.spooled_body(current_app.config["MAX_FILE_SIZE"]) as body:
        if not body.size:
            raise ApiError(400, "The file is empty.", "Send the file's bytes as the request body.", code="empty")
        name = name_from_content_disposition(request.headers.get("Content-Disposition"))
        verified = decode.verify(body, declared, name)
        file_id = store.save(body, verified, name, g.user.id, organization_id)
    return jsonify(id=str(file_id)), 201


@bp.get("/api/v2/chats/files")
@login_required
def list_files() -> Response:
    """The caller's files in the organization, newest first, a page at a time (attachments/listing.py)."""
    organization_id = _organization_param()
    rows.require_member(g.user.id, organization_id)
    limit = _limit_param()
    after = _after_param()
    page = listing.page(g.user.id, organization_id, after, limit)
    return jsonify(
        files=[{"id": str(file.id), "name": file.name, "mime_type": file.content_type, "size_bytes": file.size,
                "created_at": rfc3339(file.created_at), "chat_ids": [str(chat) for chat in page.chat_ids[file.id]]}
               for file in page.files],
        next=None if page.next is None else listing.encode_cursor(page.next),
        total_bytes=usage.stored_bytes_of_owner(g.user.id, organization_id),
    )


@bp.route("/api/v2/chats/files/<file_id>", methods=["GET", "HEAD"])
@login_required
def download(file_id: str) -> Response:
    row = _readable_file(file_id, rows.FILE_TO_SEND)
    return _send(row.content_type, row.name, row.sha256, row.size,
                 lambda byte_range: objects.open_original(row, byte_range))


def _download_variant(file_id: str, variant: str) -> Response:
    row = _readable_file(file_id, rows.FILE_TO_SEND)
    stored = rows.VARIANT_TO_SEND.first(row.id, variant)
    if stored is None and not filetypes.has_pixels(row.content_type):
        raise ApiError(404, f"The file has no {variant}.", "Only images have thumbnails and previews.",
                       headers=_policy(_type_headers(row.content_type, row.name)))
    if stored is None:
        raise ApiError(404, f"The file has no {variant} yet.",
                       "Files uploaded before variants existed get them from the generate-variants command.")
    if stored.original:
        return _send(row.content_type, row.name, row.sha256, row.size,
                     lambda byte_range: objects.open_original(row, byte_range))
    return _send(stored.content_type, variants.renamed(row.name, stored.content_type), stored.sha256, stored.size,
                 lambda byte_range: objects.open_variant(row, variant, byte_range))


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
def file_info(file_id: str) -> Response:
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


def _variant_json(stored: ChatFileVariant | None) -> dict[str, int | str] | None:
    if stored is None:
        return None  # not made yet: generate-variants makes it
    return {"width": stored.width, "height": stored.height, "content_type": stored.content_type}


@bp.delete("/api/v2/chats/files/<file_id>")
@login_required
def delete_file(file_id: str) -> Response:
    """The row goes first (every instance answers 404 at once), then the objects; gc-storage removes what fails."""
    row = _readable_file(file_id)
    if not store.delete(row, g.user.id):
        raise ApiError(404, "File not found.")  # a concurrent delete got there first
    return Response(status=204)


def _send(content_type: str, name: str | None, sha256: str, size: int,
          open_object: Callable[[ByteRange | None], StoredObject]) -> Response:
    """200 with the object's bytes streamed from storage (206 with one range of them), 304 for a matching
    If-None-Match, headers only for HEAD.

    ``open_object(byte_range)`` opens the bytes: only a 200 or 206 with a body needs them.
    """
    headers = {
        **_type_headers(content_type, name),
        "Cache-Control": CACHE_FOREVER,
        "ETag": f'"{sha256}"',
        "X-Content-Type-Options": "nosniff",
    }
    release_connection()
    if request.if_none_match.contains_weak(sha256):  # before Range (RFC 9110 §13.2.2): a 304 wins over a 206
        return Response(status=304, headers=headers)
    byte_range, status = _range_to_send(sha256, size, headers)
    if request.method == "HEAD":
        return Response(status=status, headers=headers)
    return Response(_stream(open_object(byte_range)), status=status, headers=headers, direct_passthrough=True)


def _range_to_send(sha256: str, size: int, headers: dict[str, str]) -> tuple[ByteRange | None, int]:
    """The range the request asks for (None: the whole file) and the status to send, with its length and range
    headers added to ``headers``; 416 for a range past the end."""
    try:
        byte_range = ranges.requested_range(request.method, request.headers.get("Range"),
                                            request.headers.get("If-Range"), f'"{sha256}"', size)
    except ApiError as unsatisfiable:  # a 416 about this file is under its sandbox policy too
        unsatisfiable.headers.update(_policy(headers))
        raise
    status, range_headers = ranges.range_headers(byte_range, size)
    headers.update(range_headers)
    return byte_range, status


def _type_headers(content_type: str, name: str | None) -> dict[str, str]:
    """What the stored type says about serving it (filetypes.serving): Content-Type (text with its charset),
    Content-Disposition (a PDF only ever as an attachment), and the sandbox policy for what is not an image."""
    serving = filetypes.serving(content_type)
    headers = {"Content-Type": serving.content_type,
               "Content-Disposition": content_disposition(serving.disposition, name)}
    if serving.sandboxed:
        headers["Content-Security-Policy"] = filetypes.SANDBOX_POLICY
    return headers


def _policy(headers: dict[str, str]) -> dict[str, str]:
    """The sandbox policy of ``headers`` (a non-image file's), for an error answered about that file."""
    return {name: value for name, value in headers.items() if name == "Content-Security-Policy"}


@bp.errorhandler(PeeweeException)
@bp.errorhandler(MaxConnectionsExceeded)  # no pooled connection came free in time
def database_unavailable(error: Exception) -> Response:
    """The token and membership checks need the database too: their failure is this route's 500."""
    log.error("database failure during %s: %s", request.endpoint, error)
    # endpoint is None only before a route matched, never in this blueprint's handler: "" finds no message.
    message = {"files.upload": "Failed to save chat file.", "files.delete_file": "Failed to delete chat file."}.get(
        request.endpoint or "", "Failed to read chat file.")
    return error_response(500, message, "The database is unavailable; try again.", code="storage_error")


def _organization_param() -> uuid.UUID:
    value = request.args.get("organization", "")
    if not value:
        raise ApiError(400, "Missing organization query parameter.")
    return parse_uuid(value, "Invalid organization ID.")


def _limit_param() -> int:
    value = request.args.get("limit", str(DEFAULT_PAGE_SIZE))
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_PAGE_SIZE):
        detail = f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, got {value!r}."
        raise ApiError(400, "Invalid limit.", detail, validations=[{"field": "limit", "detail": detail}])
    return int(value)


def _after_param() -> listing.Position | None:
    value = request.args.get("after")
    if value is None:
        return None
    try:
        return listing.decode_cursor(value)
    except ValueError:
        detail = "after must be the next cursor of a page this service returned."
        raise ApiError(400, "Invalid cursor.", detail, validations=[{"field": "after", "detail": detail}]) from None


def _refuse_past_quota_early(organization_id: uuid.UUID) -> None:
    """Before the body is read: a file whose declared size alone takes the organization past its quota is refused
    at once (a size over MAX_FILE_SIZE is left to the body's own 413, which comes first)."""
    declared = request.content_length
    if declared is not None and declared <= current_app.config["MAX_FILE_SIZE"]:
        usage.refuse_early(organization_id, declared, current_app.config["ORG_STORAGE_QUOTA"])


def _declared_type() -> str:
    """The upload's declared type, one of filetypes.ALLOWED_TYPES (400 for anything else)."""
    declared = request.mimetype  # lower-cased, parameters stripped
    if declared not in filetypes.ALLOWED_TYPES:
        raise ApiError(400, "Unsupported file type.", "Allowed types: " + ", ".join(filetypes.ALLOWED_TYPES) + ".",
                       code="unsupported_type")
    return declared


def _readable_file(file_id: str, query: PreparedSelect[ChatFile] = rows.OWN_FILE) -> ChatFile:
    """The caller's file by the id in the URL: 400 for one that is not a UUID, 404 for one not theirs."""
    row = query.first(parse_uuid(file_id, "Invalid file ID."), g.user.id)
    if row is None:
        raise ApiError(404, "File not found.")
    return row


def _stream(stored: StoredObject) -> Iterator[bytes]:
    try:
        yield from stored
    finally:
        stored.close()

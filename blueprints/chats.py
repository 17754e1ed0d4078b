"""Chats: create, list, read, change (title, archived), archive and unarchive; link and unlink their files."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from chats import links
from chats.access import owned_chat, parse_chat_id
from gitwatch import archives
from gitwatch.workspaces import WorkspaceError, normalize, resolve_for_user
from models import Chat, db, rfc3339, utcnow
from web import bodies
from web.auth import login_required
from web.errors import ApiError

bp = Blueprint("chats", __name__)

MAX_TITLE_LENGTH = 1000
ARCHIVED_FILTERS = {"true": True, "false": False}
UNSTORABLE_TEXT = "Text must not contain NUL characters or unpaired surrogates."


@bp.post("/api/v2/chats")
@login_required
def create_chat() -> tuple[Response, int]:
    body = _json_object()
    title = _valid_title(body.get("title", ""))
    workspace = body.get("workspace")
    if workspace is not None:
        workspace = _valid_workspace(workspace)
    chat = Chat.create(owner=g.user.id, title=title, workspace=workspace)
    return jsonify(chat_json(chat, [])), 201


@bp.get("/api/v2/chats")
@login_required
def list_chats() -> Response:
    query = Chat.select().where(Chat.owner == g.user.id)
    archived = request.args.get("archived")
    if archived is not None:
        if archived not in ARCHIVED_FILTERS:
            raise ApiError(400, "Invalid archived filter.", "Use archived=true or archived=false.")
        query = query.where(Chat.archived == ARCHIVED_FILTERS[archived])
    chats = list(query.order_by(Chat.created_at.desc(), Chat.id.desc()))
    # One query for every listed chat's files: the listing's own filter as a subquery.
    files = links.files_of_chats(query.select(Chat.id)) if chats else {}
    return jsonify([chat_json(chat, files.get(chat.id, [])) for chat in chats])


@bp.get("/api/v2/chats/<chat_id>")
@login_required
def get_chat(chat_id: str) -> Response:
    chat = owned_chat(chat_id)
    return jsonify(chat_json(chat, links.files_of_chat(chat.id)))


@bp.patch("/api/v2/chats/<chat_id>")
@login_required
def change_chat(chat_id: str) -> tuple[str, int]:
    """Upstream Coder's way to archive (and rename): ``archived`` set to the value it has is no error here."""
    chat_uuid = owned_chat(chat_id).id
    body = _json_object()
    if "archived" not in body and "title" not in body:
        raise _invalid("body", "Send archived, title, or both.")
    archived = body.get("archived")
    if "archived" in body and not isinstance(archived, bool):
        raise _invalid("archived", "archived must be true or false.")
    title = _valid_title(body["title"]) if "title" in body else None
    with db.atomic():
        if archived is not None:
            _change_archived(chat_uuid, archived)
        if title is not None:
            Chat.update(title=title, updated_at=utcnow()).where(Chat.id == chat_uuid).execute()
    return "", 204


@bp.post("/api/v2/chats/<chat_id>/files")
@login_required
def link_files(chat_id: str) -> tuple[str, int]:
    chat_uuid = parse_chat_id(chat_id)
    file_ids = links.parse_file_ids(_json_object())
    links.link(chat_uuid, g.user.id, file_ids, current_app.config["MAX_FILES_PER_CHAT"])
    return "", 204


@bp.delete("/api/v2/chats/<chat_id>/files/<file_id>")
@login_required
def unlink_file(chat_id: str, file_id: str) -> tuple[str, int]:
    chat = owned_chat(chat_id)
    if not links.unlink(chat.id, links.parse_file_id(file_id)):
        raise ApiError(404, "File is not linked to this chat.")
    return "", 204


@bp.post("/api/v2/chats/<chat_id>/archive")
@login_required
def archive(chat_id: str) -> tuple[str, int]:
    _set_archived(chat_id, True, "Chat is already archived.")
    return "", 204


@bp.post("/api/v2/chats/<chat_id>/unarchive")
@login_required
def unarchive(chat_id: str) -> tuple[str, int]:
    _set_archived(chat_id, False, "Chat is not archived.")
    return "", 204


def _set_archived(chat_id: str, archived: bool, conflict_message: str) -> None:
    """Flip the flag in one conditional UPDATE, so of concurrent calls exactly one wins; an archive is
    announced in the same transaction, so every instance's sockets of the chat hear of it at commit."""
    chat_uuid = parse_chat_id(chat_id)
    with db.atomic():
        changed = _change_archived(chat_uuid, archived)
    if not changed:
        owned_chat(chat_id)  # 404 when it is not the caller's
        raise ApiError(400, conflict_message)


def _change_archived(chat_uuid: uuid.UUID, archived: bool) -> bool:
    """Flip the flag of the caller's chat, in the caller's transaction; False when it already had that value."""
    changed = (
        Chat.update(archived=archived, updated_at=utcnow())
        .where((Chat.id == chat_uuid) & (Chat.owner == g.user.id) & (Chat.archived == (not archived)))
        .execute()
    )
    if changed and archived:
        archives.announce(chat_uuid)
    return bool(changed)


def chat_json(chat: Chat, files: list[links.LinkedFile]) -> dict[str, Any]:
    return {
        "id": str(chat.id),
        "owner_id": str(chat.owner_id),
        "title": chat.title,
        "archived": chat.archived,
        "workspace": chat.workspace,
        "created_at": rfc3339(chat.created_at),
        "updated_at": rfc3339(chat.updated_at),
        "files": [file.json() for file in files],
    }


def _json_object() -> dict[str, Any]:
    body = bodies.json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid request body.", "Send a JSON object with Content-Type: application/json.")
    return body


def _valid_title(title: object) -> str:
    if not isinstance(title, str) or len(title) > MAX_TITLE_LENGTH:
        raise _invalid("title", f"The title must be a string of at most {MAX_TITLE_LENGTH} characters.")
    if not _storable(title):
        raise _invalid("title", UNSTORABLE_TEXT)
    return title


def _valid_workspace(path: object) -> str:
    try:
        normal = normalize(path)
        # Relative to the caller's own directory: no spelling reaches another user's.
        resolve_for_user(current_app.config["WORKSPACES_ROOT"], g.user.id, normal)
        return normal
    except WorkspaceError as error:
        raise _invalid("workspace", str(error)) from None


def _storable(text: str) -> bool:
    """False for text a database or a file system refuses: NUL, or lone surrogates (JSON can escape them)."""
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(field: str, detail: str) -> ApiError:
    return ApiError(400, f"Invalid {field}.", detail, validations=[{"field": field, "detail": detail}])

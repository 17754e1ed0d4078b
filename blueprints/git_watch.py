"""``GET /api/v2/chats/{chat}/git/watch``: a chat workspace's git changes over a WebSocket.

Every check that can fail happens here, while the request is ordinary HTTP,
so failures are plain JSON responses. Then the connection is handed to the
worker's hub (gitwatch/hub.py), which holds it without a thread, and this
request's thread goes back to serving uploads and downloads at once.

An archive (through any instance: the database is the only shared state)
reaches the socket as an event of the process's one archive listener
(gitwatch/archives.py), never by a query per socket. The workspace is
confined to the owner's directory and resolved again before every scan.
"""

from __future__ import annotations

import base64
import binascii
import functools
import uuid
from typing import TYPE_CHECKING, NoReturn

from flask import Blueprint, Flask, Response, current_app, request
from wsproto.utilities import generate_accept_token

from chats.access import owned_chat
from gitwatch.archives import ArchiveEvents
from gitwatch.hub import HUB, Hub, SocketHandle, WatchRequest
from gitwatch.limits import WatchSlot, acquire_slot
from gitwatch.workspaces import WorkspaceError, resolve, user_dir
from models import Chat, db, release_connection
from ops import observability, shutdown
from web import origins
from web.auth import authenticate
from web.errors import ApiError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

bp = Blueprint("git_watch", __name__)

WATCH_PATH = "/api/v2/chats/<chat_id>/git/watch"
ARCHIVED_CLOSE_REASON = "Chat was archived."
ARCHIVED_CLOSE_CODE = 1000
SERVER_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def watch(chat_id: str) -> Response:
    origins.refuse_cross_origin()  # the app's hook checks too; the upgrade must never skip it
    authenticate()
    chat = owned_chat(chat_id)
    owner_dir, workspace_dir = _confined_workspace(chat)
    key = _websocket_key()  # after the chat: an unknown or foreign one is 404 however it is asked for
    release_connection()  # the socket may stay open for hours; it needs no connection
    slot = acquire_slot(str(chat.owner_id), current_app.config["WATCH_MAX_PER_USER"])
    if slot is None:
        raise ApiError(429, "Too many open watches.",
                       f"At most {current_app.config['WATCH_MAX_PER_USER']} watch sockets per user; close one first.")
    try:
        return _hand_over(chat, key, owner_dir, workspace_dir, slot)
    except BaseException:
        slot.release()
        raise


def _websocket_key() -> str:
    """The client's ``Sec-WebSocket-Key``, once the request proved to be a well-formed RFC 6455 upgrade."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(400, "Expected a WebSocket upgrade.", "Connect with a WebSocket client to watch git changes.")
    if "upgrade" not in {token.strip().lower() for token in request.headers.get("Connection", "").split(",")}:
        raise _bad_handshake('The "Connection" header must include "Upgrade".')
    if request.headers.get("Sec-WebSocket-Version") != "13":
        raise _bad_handshake('"Sec-WebSocket-Version" must be 13.')
    key = request.headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise _bad_handshake('"Sec-WebSocket-Key" must be 16 bytes in base64.') from None
    return key


def _bad_handshake(detail: str) -> ApiError:
    return ApiError(400, "Invalid WebSocket handshake.", detail)


def _confined_workspace(chat: Chat) -> tuple[str, str]:
    if not chat.workspace:
        raise ApiError(400, "Chat has no workspace to watch.")
    try:
        owner_dir = user_dir(current_app.config["WORKSPACES_ROOT"], chat.owner_id)
        return owner_dir, resolve(owner_dir, chat.workspace)
    except WorkspaceError as error:  # a symlink changed after the chat was made
        raise ApiError(400, "Chat has no workspace to watch.", str(error)) from None


def _hand_over(chat: Chat, key: str, owner_dir: str, workspace_dir: str, slot: WatchSlot) -> HandedOver:
    """Give the connection to the hub; the server closes its own copy without writing anything."""
    connection = next((request.environ[name] for name in SERVER_SOCKET_KEYS if name in request.environ), None)
    if connection is None:
        raise ApiError(400, "Expected a WebSocket upgrade.", "This server cannot hand over connections.")
    workspace = chat.workspace
    assert workspace is not None  # _confined_workspace refused a chat without one
    hub: Hub = current_app.extensions["watch_hub"]
    events: ArchiveEvents = current_app.extensions["archive_events"]
    observed = observability.watch_socket_opened(request.environ)
    archive = _ArchiveClose()
    subscription = events.subscribe(chat.id, archive.heard)
    on_closed = (slot.release, functools.partial(events.unsubscribe, subscription),
                 functools.partial(observability.watch_socket_closed, observed))
    try:
        # Asked before the upgrade is answered (an archive from before the subscription sends no event), so a
        # client that has its first message finds no query of this socket's still to come.
        if _is_archived(chat.id):
            archive.heard()
        handle = hub.adopt(connection, WatchRequest(
            owner=str(chat.owner_id), workspace=workspace, workspace_dir=workspace_dir, owner_dir=owner_dir,
            resolve=functools.partial(resolve, owner_dir, workspace),
            ping_interval=current_app.config["WATCH_PING_INTERVAL"],
            handshake=_switching_protocols(key, observed), on_closed=on_closed,
        ))
    except BaseException:  # no socket to close later: undo what its close would have (the caller frees the slot)
        events.unsubscribe(subscription)
        observability.watch_socket_not_opened(observed)
        raise
    archive.handed_over(handle)
    return HandedOver()


class _ArchiveClose:
    """Closes the socket when its chat is archived, whether that is heard before or after the handover.

    ``heard`` runs on the archive thread, ``handed_over`` on the request's: each writes its own attribute
    first and reads the other's after, so whichever runs second sees both and closes (closing twice is
    harmless)."""

    def __init__(self) -> None:
        self.archived = False
        self.handle: SocketHandle | None = None

    def heard(self) -> None:
        self.archived = True
        if self.handle is not None:
            self.handle.close(ARCHIVED_CLOSE_CODE, ARCHIVED_CLOSE_REASON)

    def handed_over(self, handle: SocketHandle) -> None:
        self.handle = handle
        if self.archived:
            handle.close(ARCHIVED_CLOSE_CODE, ARCHIVED_CLOSE_REASON)


def _switching_protocols(key: str, observed: observability.ObservedRequest) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {generate_accept_token(key.encode('ascii')).decode('ascii')}\r\n"
        f"{observability.REQUEST_ID_HEADER}: {observed.request_id}\r\n\r\n"
    ).encode("latin-1")


def _is_archived(chat_id: uuid.UUID) -> bool:
    with db.connection_context():
        return Chat.select(Chat.archived).where(Chat.id == chat_id).scalar() is not False


class HandedOver(Response):
    """The route's answer once the hub holds the connection: the server has nothing more to write.

    Both servers end such a request quietly: gunicorn on StopIteration,
    werkzeug's development server on ConnectionError (a dropped client).
    """

    def __init__(self) -> None:
        super().__init__(status=101)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> NoReturn:
        if "gunicorn.socket" in environ:
            raise StopIteration()
        raise ConnectionError("handed over to the watch hub")


# Werkzeug's router tells upgrades from plain requests: one rule each, one view for both.
bp.add_url_rule(WATCH_PATH, view_func=watch, websocket=True)
bp.add_url_rule(WATCH_PATH, endpoint="not_upgraded", view_func=watch)


def init_app(app: Flask) -> None:
    app.extensions["watch_hub"] = HUB
    shutdown.register_socket(HUB)  # SIGTERM closes every socket it holds with 1001
    app.extensions["archive_events"] = ArchiveEvents(app.config["DATABASE_URL"])
    app.register_blueprint(bp)

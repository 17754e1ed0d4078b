"""``GET /api/v2/chats/{chat}/git/watch``: a chat workspace's git changes over a WebSocket.

Every check that can fail happens before the upgrade, so failures are plain
JSON responses. After it the route only moves JSON between the socket and
gitwatch.WatchSession. An archive (through any instance: the database is the
only shared state) reaches the socket as an event of the process's one
archive listener (gitwatch/archives.py), never by a query per socket. The
workspace is confined to the owner's directory and resolved again before
every scan (by the session).
"""

import contextlib
import functools
import json
import threading

from flask import Blueprint, current_app, g, request
from flask_sock import Sock
from wsproto.utilities import RemoteProtocolError

import gitwatch
import observability
import origins
from gitwatch.archives import ArchiveEvents
from gitwatch.limits import acquire_slot
from auth import authenticate
from blueprints.chats import owned_chat
from errors import ApiError, error_response
from models import Chat, db, release_connection
from workspaces import WorkspaceError, resolve, user_dir

bp = Blueprint("git_watch", __name__)
sock = Sock()

WATCH_PATH = "/api/v2/chats/<chat_id>/git/watch"
RECEIVE_TIMEOUT = 0.25  # how long a turn of the loop waits for a client frame
ARCHIVED_CLOSE_REASON = "Chat was archived."


@bp.before_request
def check_before_upgrade():
    origins.refuse_cross_origin()  # the app's hook checks too; the upgrade must never skip it
    authenticate()
    chat = owned_chat(request.view_args["chat_id"])
    if not chat.workspace:
        raise ApiError(400, "Chat has no workspace to watch.")
    root = current_app.config["WORKSPACES_ROOT"]
    try:
        g.owner_dir = user_dir(root, chat.owner_id)
        g.workspace_dir = resolve(g.owner_dir, chat.workspace)
    except WorkspaceError as error:  # a symlink changed after the chat was made
        raise ApiError(400, "Chat has no workspace to watch.", str(error)) from None
    g.chat_id = chat.id
    g.workspace = chat.workspace
    release_connection()  # a socket may stay open for hours
    g.watch_slot = acquire_slot(str(chat.owner_id), current_app.config["WATCH_MAX_PER_USER"])
    if g.watch_slot is None:
        raise ApiError(429, "Too many open watches.",
                       f"At most {current_app.config['WATCH_MAX_PER_USER']} watch sockets per user; close one first.")


@bp.teardown_request
def release_watch_slot(exc):
    slot = g.pop("watch_slot", None)
    if slot is not None:
        slot.release()


@bp.get(WATCH_PATH, endpoint="not_upgraded")
def not_upgraded(chat_id):
    raise ApiError(400, "Expected a WebSocket upgrade.", "Connect with a WebSocket client to watch git changes.")


class _CloseRequest:
    """What shutdown and archive events hold instead of the socket: they only ask, from their own
    threads, and the loop's thread does the closing (the socket is not thread-safe)."""

    def __init__(self):
        self.code = None
        self.reason = None

    def close(self, reason=None, message=None):
        self.code, self.reason = reason, message


@bp.errorhandler(RemoteProtocolError)
def bad_handshake(error):
    # Raised while flask-sock answers the upgrade: the client's handshake is broken, not the server.
    return error_response(400, "Invalid WebSocket handshake.", str(error))


@sock.route(WATCH_PATH, bp=bp)
def watch(ws, chat_id):
    close_request = _CloseRequest()
    # Resolved again before every scan: a swap to a symlink pointing out is noticed.
    resolve_now = functools.partial(resolve, g.owner_dir, g.workspace)
    session = gitwatch.WatchSession(g.workspace_dir, boundary=g.owner_dir, resolve=resolve_now)
    with session, observability.watch_socket(close_request), _closed_on_archive(g.chat_id, close_request):
        ws.send(json.dumps(session.initial_message()))
        while ws.connected:
            if close_request.code is not None:
                ws.close(reason=close_request.code, message=close_request.reason)
                return
            refresh = _handle_client_frame(ws, ws.receive(timeout=RECEIVE_TIMEOUT))
            message = session.poll(refresh=refresh)
            if message is not None:
                ws.send(json.dumps(message))


def _handle_client_frame(ws, text):
    """True when the client asked for a refresh; a bad frame is answered, not fatal."""
    if text is None:
        return False
    kind, problem = gitwatch.parse_client_message(text)
    if kind == "error":
        ws.send(json.dumps(gitwatch.error_message(problem)))
        return False
    return True


@contextlib.contextmanager
def _closed_on_archive(chat_id, close_request):
    """The socket asks to close when its chat is archived: on the archive event, or at once when the chat
    was archived before the subscription (then no event will come: one query, at connect time only)."""
    events = current_app.extensions["archive_events"]
    subscription = events.subscribe(chat_id, lambda: close_request.close(1000, ARCHIVED_CLOSE_REASON))
    try:
        if _is_archived(chat_id):
            close_request.close(1000, ARCHIVED_CLOSE_REASON)
        yield
    finally:
        events.unsubscribe(subscription)


def _is_archived(chat_id):
    with db.connection_context():
        return Chat.select(Chat.archived).where(Chat.id == chat_id).scalar() is not False


def init_app(app):
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {
            # simple-websocket pings idle clients and drops those that stop answering.
            "ping_interval": app.config["WATCH_PING_INTERVAL"],
            "max_message_size": 64 * 1024,
            # Its reader thread outlives a close until the next ping; a daemon
            # thread does not hold a stopping worker back for that long.
            "thread_class": functools.partial(threading.Thread, daemon=True),
        },
    )
    sock.init_app(app)
    app.extensions["archive_events"] = ArchiveEvents(app.config["DATABASE_URL"])
    app.register_blueprint(bp)

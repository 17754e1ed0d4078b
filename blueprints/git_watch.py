"""``GET /api/v2/chats/{chat}/git/watch``: a chat workspace's git changes over a WebSocket.

Every check that can fail happens before the upgrade, so failures are plain
JSON responses. After it the route only moves JSON between the socket and
gitwatch.WatchSession; the database is asked every few seconds whether the
chat was archived (by any instance: it is the only shared state), and the
connection it used is given back at once.
"""

import functools
import json
import threading
import time

from flask import Blueprint, current_app, g, request
from flask_sock import Sock
from wsproto.utilities import RemoteProtocolError

import gitwatch
import observability
import origins
from auth import authenticate
from blueprints.chats import owned_chat
from errors import ApiError, error_response
from models import Chat, db, release_connection
from workspaces import WorkspaceError, resolve

bp = Blueprint("git_watch", __name__)
sock = Sock()

WATCH_PATH = "/api/v2/chats/<chat_id>/git/watch"
RECEIVE_TIMEOUT = 0.25  # how long a turn of the loop waits for a client frame
ARCHIVE_CHECK_INTERVAL = 2.0
ARCHIVED_CLOSE_REASON = "Chat was archived."


@bp.before_request
def check_before_upgrade():
    origins.refuse_cross_origin()  # the app's hook checks too; the upgrade must never skip it
    authenticate()
    chat = owned_chat(request.view_args["chat_id"])
    if not chat.workspace:
        raise ApiError(400, "Chat has no workspace to watch.")
    try:
        g.workspace_dir = resolve(current_app.config["WORKSPACES_ROOT"], chat.workspace)
    except WorkspaceError as error:  # a symlink changed after the chat was made
        raise ApiError(400, "Chat has no workspace to watch.", str(error)) from None
    g.chat_id = chat.id
    release_connection()  # a socket may stay open for hours


@bp.get(WATCH_PATH, endpoint="not_upgraded")
def not_upgraded(chat_id):
    raise ApiError(400, "Expected a WebSocket upgrade.", "Connect with a WebSocket client to watch git changes.")


class _CloseRequest:
    """What shutdown registers instead of the socket: it only asks, from its own
    thread, and the loop's thread does the closing (the socket is not thread-safe)."""

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
    with gitwatch.WatchSession(g.workspace_dir) as session, observability.watch_socket(close_request):
        ws.send(json.dumps(session.initial_message()))
        next_archive_check = time.monotonic() + ARCHIVE_CHECK_INTERVAL
        while ws.connected:
            if close_request.code is not None:
                ws.close(reason=close_request.code, message=close_request.reason)
                return
            refresh = _handle_client_frame(ws, ws.receive(timeout=RECEIVE_TIMEOUT))
            message = session.poll(refresh=refresh)
            if message is not None:
                ws.send(json.dumps(message))
            if time.monotonic() >= next_archive_check:
                if _is_archived(g.chat_id):
                    ws.close(reason=1000, message=ARCHIVED_CLOSE_REASON)
                    return
                next_archive_check = time.monotonic() + ARCHIVE_CHECK_INTERVAL


def _handle_client_frame(ws, text):
    """True when the client asked for a refresh; a bad frame is answered, not fatal."""
    if text is None:
        return False
    kind, problem = gitwatch.parse_client_message(text)
    if kind == "error":
        ws.send(json.dumps(gitwatch.error_message(problem)))
        return False
    return True


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
    app.register_blueprint(bp)

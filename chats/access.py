"""Which chat a request may touch: the caller's own, by the id in its URL.

Two routes need it, the chats routes and the git watch (blueprints/chats.py,
blueprints/git_watch.py), and a blueprint never imports another: a chat
lookup that answers as the contract does, 400 for a bad id and 404 for an
unknown or foreign chat, over the models beneath it.
"""

from __future__ import annotations

import uuid

from flask import g

from models import Chat
from web.errors import ApiError
from web.ids import parse_uuid


def parse_chat_id(chat_id: str) -> uuid.UUID:
    return parse_uuid(chat_id, "Invalid chat ID.")


def owned_chat(chat_id: str) -> Chat:
    """The caller's chat, or 400 for a bad id and 404 for an unknown or foreign one."""
    chat = Chat.get_or_none((Chat.id == parse_chat_id(chat_id)) & (Chat.owner == g.user.id))
    if chat is None:
        raise ApiError(404, "Chat not found.")
    return chat

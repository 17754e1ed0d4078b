"""Archive events for this process's watch sockets: one source for all of them, never a query per socket.

A socket subscribes to its chat; when the chat is archived — through any
instance: the database is the only shared state — its callback runs once.

- PostgreSQL: archiving sends ``NOTIFY chatfiles_archived, '<chat id>'`` in
  its own transaction (``announce``), so the event exists exactly when the
  archive does. The process listens on one connection of its own, in one
  thread asleep in ``select()`` until a notification comes (no timer). After a
  lost connection it listens again, then asks once which of its chats were
  archived meanwhile (one query for all of them).
- SQLite (one host, no NOTIFY): one thread looks every ``POLL_SECONDS``
  whether anything was committed since its last look (``PRAGMA
  data_version``), and only then asks which of the chats with sockets here
  are archived: one query per process however many sockets are open.

The thread runs while the process has a subscribed socket, and ends (closing
its connection) with the last one. One listener per process, fanned out in
memory: the shape of Zulip's real-time tier.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sqlite3
import threading
import time
import uuid
from typing import Callable

import psycopg2
import psycopg2.extensions
from peewee import SQL, PostgresqlDatabase

from models import Chat, db

log = logging.getLogger(__name__)

CHANNEL = "chatfiles_archived"
POLL_SECONDS = 0.5  # SQLite: how often the one query runs while any socket is open
RECONNECT_SECONDS = 1.0  # PostgreSQL: the wait before listening again after a lost connection

Token = tuple[uuid.UUID, int]


def announce(chat_id: uuid.UUID) -> None:
    """Inside the transaction that archives ``chat_id``: every listening process hears of it at commit."""
    if isinstance(db.obj, PostgresqlDatabase):
        db.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, str(chat_id)))


class ArchiveEvents:
    """This process's chats with open sockets, and the one thread that learns when they are archived."""

    def __init__(self, database_url: str):
        self._listens = database_url.startswith("postgres")
        self._database_url = "postgresql://" + database_url.split("://", 1)[1] if self._listens else database_url
        self._lock = threading.Lock()
        self._subscribers: dict[uuid.UUID, dict[int, Callable[[], None]]] = {}
        self._next_token = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        if self._listens:  # the last socket went: the listener may stop
            self._wake_read, self._wake_write = os.pipe()
            os.set_blocking(self._wake_write, False)

    def subscribe(self, chat_id: uuid.UUID, on_archived: Callable[[], None]) -> Token:
        """Call ``on_archived()`` once, from the events thread, when ``chat_id`` is archived."""
        with self._lock:
            self._next_token += 1
            self._subscribers.setdefault(chat_id, {})[self._next_token] = on_archived
            self._ensure_running()
            return chat_id, self._next_token

    def unsubscribe(self, token: Token) -> None:
        chat_id, number = token
        with self._lock:
            callbacks = self._subscribers.get(chat_id, {})
            callbacks.pop(number, None)
            if not callbacks:
                self._subscribers.pop(chat_id, None)
            if not self._subscribers and self._listens:
                with contextlib.suppress(BlockingIOError):  # full: it has been woken already
                    os.write(self._wake_write, b"!")

    def watched(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._subscribers)

    def _ensure_running(self) -> None:
        """Under the lock: start the thread unless it runs (it only ends under the lock, with nothing to watch)."""
        if self._pid != os.getpid():  # forked: the parent's thread is not here
            self._thread, self._pid = None, os.getpid()
        if self._thread is None:
            target = self._listen_while_watched if self._listens else self._poll_while_watched
            self._thread = threading.Thread(target=target, name="archive-events", daemon=True)
            self._thread.start()

    def _nothing_to_watch(self) -> bool:
        """True (and the thread is done) when no socket is subscribed; a new subscription starts another."""
        with self._lock:
            if self._subscribers:
                return False
            self._thread = None
            return True

    def _archived(self, chat_ids: list[uuid.UUID]) -> None:
        """Run the callbacks of the chats that were archived, and forget them."""
        for chat_id in chat_ids:
            with self._lock:
                callbacks = list(self._subscribers.pop(chat_id, {}).values())
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # one socket's trouble must not stop the others' events
                    log.exception("closing a watch socket of archived chat %s failed", chat_id)

    def _archived_among_watched(self) -> list[uuid.UUID]:
        """One query for every chat with a socket here, however many: the ids travel as one parameter."""
        watched = self.watched()
        if not watched:
            return []
        with db.connection_context():
            query = Chat.select(Chat.id).where(Chat.id.in_(_one_parameter(watched)) & Chat.archived)
            return [row.id for row in query]

    # --- SQLite: one query per process, while any socket is open --------------------

    def _poll_while_watched(self) -> None:
        """Every tick, SQLite's ``data_version`` (a pragma answered from memory) says whether anything was
        committed since the last look; only then the one query runs. An idle service asks nothing more."""
        seen = None
        # data_version compares against this connection's own last look: one of the thread's own, kept open.
        with contextlib.closing(sqlite3.connect(self._database_url.split(":///", 1)[-1])) as versions:
            while not self._nothing_to_watch():
                time.sleep(POLL_SECONDS)
                try:
                    version = versions.execute("PRAGMA data_version").fetchone()[0]
                    if version != seen:
                        seen = version
                        self._archived(self._archived_among_watched())
                except Exception:
                    log.exception("asking which watched chats are archived failed; asking again")

    # --- PostgreSQL: LISTEN, woken by the server ------------------------------------

    def _listen_while_watched(self) -> None:
        while not self._nothing_to_watch():
            try:
                self._listen()
            except Exception:
                log.exception("listening for archive events failed; listening again")
                time.sleep(RECONNECT_SECONDS)

    def _listen(self) -> None:
        """Until no socket is left to watch, or the connection fails (raises)."""
        connection = psycopg2.connect(self._database_url, connect_timeout=5)
        try:
            connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            self._archived(self._archived_among_watched())  # what happened while nobody listened
            while self.watched():
                readable, _, _ = select.select([connection.fileno(), self._wake_read], [], [])
                if self._wake_read in readable:
                    os.read(self._wake_read, 4096)
                connection.poll()
                payloads = [notification.payload for notification in connection.notifies]
                connection.notifies.clear()
                self._archived([chat_id for chat_id in map(_chat_id, payloads) if chat_id is not None])
        finally:
            connection.close()


def _one_parameter(chat_ids: list[uuid.UUID]) -> SQL:
    """A subquery yielding ``chat_ids`` from a single bound parameter (no limit on how many, one query plan)."""
    if isinstance(db.obj, PostgresqlDatabase):
        return SQL("(SELECT unnest(%s::uuid[]))", [[str(chat_id) for chat_id in chat_ids]])
    return SQL("(SELECT value FROM json_each(?))", [json.dumps([chat_id.hex for chat_id in chat_ids])])


def _chat_id(payload: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(payload)
    except ValueError:
        return None

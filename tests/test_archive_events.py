"""gitwatch/archives.py: one thread for every socket of the process (on SQLite woken by nothing but its poll),
and one query however many chats it watches."""

import threading
import time
import uuid

import pytest

import models
from gitwatch.archives import POLL_SECONDS, ArchiveEvents
from models import Chat
from tests.conftest import _create_user

WAIT = 10  # a hang guard, not a timing claim


@pytest.fixture
def client(sqlite_app):
    return sqlite_app.test_client()


@pytest.fixture
def auth(sqlite_app):
    return {"Coder-Session-Token": _create_user(sqlite_app, "alice", "acme")["token"]}


def make_chat(client, auth):
    response = client.post("/api/v2/chats", json={"title": "t"}, headers=auth)
    assert response.status_code == 201
    return uuid.UUID(response.json["id"])


def wait_for(condition):
    deadline = time.monotonic() + WAIT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_every_socket_of_an_archived_chat_hears_once_and_no_other(sqlite_app, client, auth):
    archived, kept = make_chat(client, auth), make_chat(client, auth)
    events = ArchiveEvents(sqlite_app.config["DATABASE_URL"])
    heard = []
    for name in ("first", "second"):
        events.subscribe(archived, lambda name=name: heard.append(name))
    other = events.subscribe(kept, lambda: heard.append("kept"))

    assert client.post(f"/api/v2/chats/{archived}/archive", headers=auth).status_code == 204

    assert wait_for(lambda: len(heard) == 2)
    time.sleep(3 * POLL_SECONDS)
    assert sorted(heard) == ["first", "second"]
    assert events.watched() == [kept]
    events.unsubscribe(other)


def test_the_thread_ends_with_the_last_socket_and_starts_with_the_next(sqlite_app, client, auth):
    chat = make_chat(client, auth)
    events = ArchiveEvents(sqlite_app.config["DATABASE_URL"])
    before = {thread.ident for thread in threading.enumerate() if thread.name == "archive-events"}
    token = events.subscribe(chat, lambda: None)
    events.unsubscribe(token)
    assert wait_for(lambda: not [thread for thread in threading.enumerate()
                                 if thread.name == "archive-events" and thread.ident not in before])

    heard = threading.Event()
    events.subscribe(chat, heard.set)
    Chat.update(archived=True).where(Chat.id == chat).execute()
    assert heard.wait(WAIT)


def test_on_sqlite_an_idle_database_is_not_asked_again(sqlite_app, client, auth, monkeypatch):
    """Nothing committed: the poller's ticks ask nothing (its pragma says so); a commit anywhere: one look."""
    watched, other = make_chat(client, auth), make_chat(client, auth)
    events = ArchiveEvents(sqlite_app.config["DATABASE_URL"])
    looks = []
    real_look = events._archived_among_watched
    monkeypatch.setattr(events, "_archived_among_watched", lambda: looks.append(1) or real_look())
    heard = threading.Event()
    token = events.subscribe(watched, heard.set)
    try:
        assert wait_for(lambda: looks)  # the first tick looks once
        time.sleep(4 * POLL_SECONDS)
        assert len(looks) == 1
        assert client.post(f"/api/v2/chats/{other}/archive", headers=auth).status_code == 204
        assert wait_for(lambda: len(looks) == 2)
        assert not heard.is_set()  # another chat's archive: looked, nothing for this one
    finally:
        events.unsubscribe(token)


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
def test_which_watched_chats_are_archived_is_one_query_however_many(app, monkeypatch):
    """1,500 watched chats (past SQLite's 999 bound parameters), a third archived: one query finds them."""
    owner = _create_user(app, "bob", "globex")["user_id"]
    chats = [Chat.create(owner=owner, title=str(number), archived=number % 3 == 0) for number in range(1500)]
    events = ArchiveEvents(app.config["DATABASE_URL"])
    monkeypatch.setattr(events, "watched", lambda: [chat.id for chat in chats])
    queries = []
    real_execute = type(models.db.obj).execute_sql
    monkeypatch.setattr(type(models.db.obj), "execute_sql",
                        lambda self, sql, *args, **kwargs: queries.append(sql) or real_execute(self, sql, *args, **kwargs))

    archived = events._archived_among_watched()

    assert sorted(archived) == sorted(chat.id for chat in chats if chat.archived)
    assert len(queries) == 1

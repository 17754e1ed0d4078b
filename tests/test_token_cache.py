"""The per-process token cache: fewer queries, and a deleted key still refused within TOKEN_CACHE_SECONDS."""

import datetime
import sqlite3
import time

import pytest
import requests

import models
from harness.live import GunicornServer
from tests.test_files import assert_error
from web import auth

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)

ROUTE = "/api/v2/chats/files/00000000-0000-0000-0000-000000000000"  # 404 once authenticated
TTL = 5


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(app):
    clock = FakeClock()
    app.extensions["token_cache"] = auth.TokenCache(TTL, clock=clock)
    return clock


def delete_key(app, token):
    with app.app_context(), models.db.connection_context():
        models.ApiKey.delete().where(models.ApiKey.id == token.split("-", 1)[0]).execute()


def get(client, token):
    return client.get(ROUTE, headers={"Coder-Session-Token": token})


def test_a_deleted_key_is_refused_once_the_cache_ttl_has_passed(app, client, user, clock):
    assert get(client, user["token"]).status_code == 404
    delete_key(app, user["token"])
    clock.now += TTL + 0.1
    assert_error(get(client, user["token"]), 401)


def test_a_deleted_user_is_refused_once_the_cache_ttl_has_passed(app, client, user, clock):
    assert get(client, user["token"]).status_code == 404
    with app.app_context(), models.db.connection_context():
        models.User.delete().where(models.User.id == user["user_id"]).execute()
    clock.now += TTL + 0.1
    assert_error(get(client, user["token"]), 401)


def test_a_cached_key_still_needs_its_secret(app, client, user, clock):
    key_id = user["token"].split("-", 1)[0]
    assert get(client, user["token"]).status_code == 404
    assert_error(get(client, f"{key_id}-not-the-secret"), 401)


def test_a_cached_key_still_expires(app, client, user, clock, monkeypatch):
    assert get(client, user["token"]).status_code == 404
    later = models.utcnow() + datetime.timedelta(days=2)  # the fixture's tokens live one day
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    assert_error(get(client, user["token"]), 401)


def test_a_cached_key_makes_no_query(app, client, user, clock, monkeypatch):
    assert get(client, user["token"]).status_code == 404
    monkeypatch.setattr(auth.ApiKey, "select", lambda *args: pytest.fail("the key was looked up again"))
    assert get(client, user["token"]).status_code == 404


def test_unknown_keys_are_not_cached(app, client, user, clock):
    cache = app.extensions["token_cache"]
    assert_error(get(client, "0123456789-whatever"), 401)
    assert cache.get("0123456789") is None


def test_a_full_cache_starts_again_empty(app, client, user, clock):
    cache = app.extensions["token_cache"] = auth.TokenCache(TTL, clock=clock, max_entries=2)
    cache.put("a" * 10, "h", models.utcnow(), None)
    cache.put("b" * 10, "h", models.utcnow(), None)
    assert get(client, user["token"]).status_code == 404
    assert cache.get("a" * 10) is None
    assert cache.get(user["token"].split("-", 1)[0]) is not None


def test_ttl_zero_turns_the_cache_off(app, client, user, clock):
    app.extensions["token_cache"] = auth.TokenCache(0, clock=clock)
    assert get(client, user["token"]).status_code == 404
    delete_key(app, user["token"])
    assert_error(get(client, user["token"]), 401)


def test_every_worker_refuses_a_deleted_key_after_the_ttl(tmp_path, storage_config):
    """Live: several workers have the key cached; after TTL + a margin none of them accepts it."""
    database = tmp_path / "db.sqlite"
    server = GunicornServer({"DATABASE_URL": f"sqlite:///{database}", "LOCAL_STORAGE_ROOT": str(tmp_path / "objects"),
                             "WORKSPACES_ROOT": str(tmp_path / "workspaces"), "TOKEN_CACHE_SECONDS": 1,
                             "WEB_CONCURRENCY": 3, "WEB_THREADS": 4}, work_dir=str(tmp_path))
    server.start()
    try:
        token = server.flask("create-user", "alice", "--org", "acme")["token"]
        headers = {"Coder-Session-Token": token, "Connection": "close"}  # a new connection each: spread over workers
        assert {requests.get(server.url + ROUTE, headers=headers, timeout=10).status_code for _ in range(12)} == {404}
        with sqlite3.connect(database) as connection:
            connection.execute("DELETE FROM apikey WHERE id = ?", (token.split("-", 1)[0],))
        time.sleep(1 + 1)  # the TTL and a margin: what the README promises, not a timing measurement
        statuses = {requests.get(server.url + ROUTE, headers=headers, timeout=10).status_code for _ in range(12)}
        assert statuses == {401}
    finally:
        server.stop()

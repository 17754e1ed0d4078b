"""Session tokens: where they are read from, and every way one is refused."""

import datetime

import pytest

import models
from tests.test_files import assert_error
from web import auth

# Tokens live in the database, so both databases; storage plays no part.
pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)

HEALTHY_ROUTE = "/api/v2/chats/files/00000000-0000-0000-0000-000000000000"


def test_token_in_header_is_accepted(client, user):
    assert client.get(HEALTHY_ROUTE, headers={"Coder-Session-Token": user["token"]}).status_code == 404


def test_token_in_cookie_is_accepted(client, user):
    client.set_cookie("coder_session_token", user["token"])
    assert client.get(HEALTHY_ROUTE).status_code == 404


def test_token_in_query_parameter_is_accepted(client, user):
    assert client.get(HEALTHY_ROUTE, query_string={"coder_session_token": user["token"]}).status_code == 404


def test_header_wins_over_cookie(client, user):
    client.set_cookie("coder_session_token", "garbage")
    assert client.get(HEALTHY_ROUTE, headers={"Coder-Session-Token": user["token"]}).status_code == 404


@pytest.mark.parametrize(
    "token",
    ["", "no-dash-at-all-but-long", "nodash", "short-secret", "0123456789-", "0123456789-wrongsecret"],
)
def test_malformed_or_unknown_token_is_401(client, user, token):
    assert_error(client.get(HEALTHY_ROUTE, headers={"Coder-Session-Token": token}), 401)


def test_wrong_secret_for_a_real_id_is_401(client, user):
    key_id = user["token"].split("-", 1)[0]
    assert_error(client.get(HEALTHY_ROUTE, headers={"Coder-Session-Token": f"{key_id}-not-the-secret"}), 401)


def test_expired_token_is_401(app, client, user):
    key_id = user["token"].split("-", 1)[0]
    with app.app_context(), models.db.connection_context():
        models.ApiKey.update(expires_at=models.utcnow() - datetime.timedelta(seconds=1)).where(
            models.ApiKey.id == key_id
        ).execute()
    assert_error(client.get(HEALTHY_ROUTE, headers={"Coder-Session-Token": user["token"]}), 401)


def test_only_a_hash_of_the_secret_is_stored(app, user):
    key_id, secret = user["token"].split("-", 1)
    with app.app_context(), models.db.connection_context():
        key = models.ApiKey.get_by_id(key_id)
    assert key.secret_hash == auth.hash_secret(secret)
    assert secret not in key.secret_hash

"""JSON request bodies are bounded: 64 KiB, parsed without recursion errors, never a 500.

Chunked and malformed-chunked bodies are in test_bodies_live.py (they need gunicorn's reader).
"""

import pytest

from tests.single_backend import database_url, storage_config  # noqa: F401 (fixtures)
from tests.test_files import assert_error


def post_chat(client, auth, data):
    return client.post("/api/v2/chats", data=data, headers={**auth, "Content-Type": "application/json"})


def test_body_over_64_kib_is_413(client, auth):
    body = b'{"title": "' + b"x" * (64 * 1024) + b'"}'
    assert_error(post_chat(client, auth, body), 413, "Request body too large.")


def test_body_of_64_kib_is_read(client, auth):
    body = b'{"title": "x"}'.ljust(64 * 1024, b" ")
    assert post_chat(client, auth, body).status_code == 201


def test_the_issues_200000_brackets_are_413_before_parsing(client, auth):
    assert_error(post_chat(client, auth, b"[" * 200_000), 413, "Request body too large.")


# Under the size limit, deep enough for the parser's recursion limit.
@pytest.mark.parametrize("body", [b"[" * 60_000, b'{"a":' * 12_000, b'{"title": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"],
                         ids=["60k-brackets", "12k-objects", "deep-but-closed"])
def test_deeply_nested_json_is_400(client, auth, body):
    assert_error(post_chat(client, auth, body), 400, "Invalid request body.")


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b'{"title": "x"} trailing', b"", b"NaN"])
def test_malformed_json_is_400(client, auth, body):
    response = post_chat(client, auth, body)
    assert_error(response, 400)


def test_a_json_array_is_400_not_a_chat(client, auth):
    assert_error(post_chat(client, auth, b"[]"), 400, "Invalid request body.")

"""Hostile input: random bodies, headers, ids and query strings never get a 5xx.

Property-based tests drive the upload, the download and the chat endpoints
with whatever hypothesis makes up. Whatever a client sends, the answer is
below 500, every error is JSON, and no exception reaches the catch-all
handler (it would log "unhandled exception" at ERROR).

One app and one user per test function serve every example: hypothesis
calls the test body many times with the same function-scoped fixtures.
Runs are derandomized, so CI sees the same examples every time.
"""

import contextlib
import json
import logging
import os
import sqlite3
import urllib.parse

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import cli
import models
from harness.imaging import make_animated_gif, make_image
from imaging import images

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ALLOWED_TYPES = list(images.ALLOWED_TYPES)
UPLOAD_LIMIT = 4096  # small, so random bodies reach the 413 path too
MEMBER = "<the caller's organization>"  # replaced by the real id in the test body


# --- strategies -------------------------------------------------------------

# What a WSGI server can hand the app in a header: latin-1 text without line breaks.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n"), max_size=300
)

# Text with lone surrogates in it: valid in JSON ("\ud800"), not encodable as UTF-8.
surrogate = st.integers(0xD800, 0xDFFF).map(chr)
any_text = st.lists(st.one_of(st.characters(), surrogate), max_size=40).map("".join)

real_images = st.sampled_from(
    [make_image(content_type, 8, 6) for content_type in ALLOWED_TYPES]
    + [make_animated_gif(frames=2, width=8, height=8)]
)
SIGNATURES = [
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF\xff\xff\xff\xffWEBP", b"RIFF\0\0\0\0WEBPVP8 ",
    b"<svg xmlns='http://www.w3.org/2000/svg'>", b"%PDF-1.7\n", b"PK\x03\x04", b"<html>", b"\xef\xbb\xbf[", b"{\"",
]


@st.composite
def spliced_images(draw):
    """A real image with a few bytes overwritten, inserted or cut at a random place."""
    data = bytearray(draw(real_images))
    at = draw(st.integers(0, len(data)))
    patch = draw(st.binary(max_size=8))
    how = draw(st.sampled_from(["overwrite", "insert", "cut"]))
    if how == "overwrite":
        data[at : at + len(patch)] = patch
    elif how == "insert":
        data[at:at] = patch
    else:
        del data[at : at + len(patch) + 1]
    return bytes(data)


bodies = st.one_of(
    st.binary(max_size=UPLOAD_LIMIT + 200),
    st.tuples(st.sampled_from(SIGNATURES), st.binary(max_size=600)).map(b"".join),
    real_images,
    spliced_images(),
    st.integers(UPLOAD_LIMIT - 2, UPLOAD_LIMIT + 2).map(lambda size: b"\x89PNG\r\n\x1a\n".ljust(size, b"\0")),
)

# The text and PDF types too (filetypes): random bytes declared as them are refused or stored, never a 5xx.
DOCUMENT_TYPES = ["text/plain", "text/markdown", "text/csv", "application/json", "application/pdf"]
content_types = st.one_of(
    st.sampled_from(ALLOWED_TYPES + DOCUMENT_TYPES
                    + ["IMAGE/PNG; charset=binary", "image/svg+xml", "text/html", "multipart/form-data"]),
    st.sampled_from(ALLOWED_TYPES).map(lambda allowed: allowed + ";" + "a=" * 50),
    header_text,
)

file_names = st.text(max_size=300)
dispositions = st.one_of(
    st.none(),
    header_text,
    # A server decodes header bytes as latin-1: UTF-8 names arrive as mojibake.
    file_names.map(lambda name: 'attachment; filename="%s"' % name.encode().decode("latin-1")).filter(
        lambda header: "\r" not in header and "\n" not in header
    ),
    file_names.map(lambda name: "attachment; filename*=UTF-8''" + urllib.parse.quote(name, safe="")),
    st.tuples(st.sampled_from(["UTF-8", "utf-8", "ISO-8859-1", "bogus", ""]), st.binary(max_size=40)).map(
        lambda parts: f"attachment; filename*={parts[0]}''" + urllib.parse.quote_from_bytes(parts[1], safe="")
    ),
)

uuid_spellings = st.uuids().flatmap(
    lambda value: st.sampled_from([str(value), str(value).upper(), value.hex, "{%s}" % value, "urn:uuid:%s" % value])
)


def half_the_time(value, otherwise):
    # st.one_of flattens nested one_ofs and picks a branch uniformly; this does not.
    return st.booleans().flatmap(lambda pick: st.just(value) if pick else otherwise)


# Half the time the caller's own, so the checks after the organization's are reached.
organizations = half_the_time(
    MEMBER, st.one_of(st.none(), st.just(""), uuid_spellings, header_text, st.text(max_size=60))
)

query_keys = st.one_of(st.sampled_from(["organization", "archived", "coder_session_token", "x"]), st.text(max_size=10))
extra_params = st.lists(st.tuples(query_keys, st.text(max_size=40)), max_size=4)

content_lengths = st.one_of(
    st.none(),
    st.integers(-5, UPLOAD_LIMIT * 2).map(str),
    st.sampled_from(["", "abc", "1e3", " 12", "99999999999999999999"]),
)

# A path segment: quoted whatever it is, so a "/" or "?" stays inside it.
path_ids = st.one_of(uuid_spellings, st.text(max_size=60).map(lambda text: urllib.parse.quote(text, safe="")))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
path_parts = st.sampled_from(["a", "b", "..", ".", "", "/", "\\", "\0", " ", "~", "é", "%2e%2e", "\ud800"])
workspace_paths = st.one_of(
    any_text,
    st.lists(path_parts, max_size=8).map("/".join),
    st.integers(1, 3).map(lambda n: "a/" * (2000 * n)),  # about PATH_MAX, and beyond
)
chat_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "title": st.one_of(json_values, st.text(min_size=990, max_size=1010)),
            "workspace": st.one_of(json_values, workspace_paths),
        },
    ),
)


# --- verify_image on its own -------------------------------------------------


@settings(FUZZ, max_examples=300)
@given(data=st.one_of(bodies, st.tuples(real_images, st.binary(min_size=1, max_size=64)).map(b"".join)))
def test_verify_image_raises_nothing_but_its_two_errors(data):
    try:
        info = images.verify_image(data, max_pixels=1_000_000)
    except (images.UnsupportedType, images.InvalidImage):
        return
    assert info.content_type in ALLOWED_TYPES and info.width * info.height > 0


# --- the app under attack ---------------------------------------------------


class Target:
    """One app, one user and its client; checks every answer it gets."""

    def __init__(self, app, caplog):
        self.app = app
        self.client = app.test_client()
        self.caplog = caplog
        with app.app_context(), models.db.connection_context():
            self.user = cli.create_user("mallory", "evil-corp", lifetime_days=1)
        self.auth = {"Coder-Session-Token": self.user["token"]}

    def request(self, method, path, **kwargs):
        self.caplog.clear()
        response = self.client.open(path, method=method, **kwargs)
        if currently_in_test_context():  # what was reached, for --hypothesis-show-statistics
            event(f"{method} {response.status_code} {error_message(response)}")
        assert_handled(response, self.caplog)
        return response


def error_message(response):
    body = response.json if response.is_json and response.data else None
    return body.get("message", "") if isinstance(body, dict) else ""


def assert_handled(response, caplog):
    status = response.status_code
    assert status < 500, f"{status}: {response.get_data(as_text=True)}"
    if status >= 400:
        assert response.mimetype == "application/json", response.get_data(as_text=True)
        if response.data:  # HEAD answers carry headers only
            assert isinstance(response.json.get("message"), str)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


@pytest.fixture
def target(sqlite_app, caplog, monkeypatch):
    sqlite_app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: the handlers answer
    sqlite_app.config["MAX_FILE_SIZE"] = UPLOAD_LIMIT
    with without_disk_syncs(sqlite_app, monkeypatch):
        yield Target(sqlite_app, caplog)


@contextlib.contextmanager
def without_disk_syncs(app, monkeypatch):
    """Spare hundreds of requests a disk sync each; these tests look at answers, not durability.

    The local object store fsyncs every object it writes. And each request
    closes its SQLite connection: when the last one closes, SQLite
    checkpoints the WAL and syncs the file, so one more connection is held
    open for the test.
    """
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    keeper = sqlite3.connect(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    try:
        keeper.execute("PRAGMA schema_version").fetchall()
        yield
    finally:
        keeper.close()


def upload_query(organization, target, extra):
    if organization == MEMBER:
        organization = target.user["organization_id"]
    params = [] if organization is None else [("organization", organization)]
    return urllib.parse.urlencode(params + extra)


# --- upload and download ----------------------------------------------------


@FUZZ
@given(
    body=bodies,
    content_type=content_types,
    disposition=dispositions,
    organization=organizations,
    extra=extra_params,
    content_length=content_lengths,
)
def test_upload_of_anything_is_never_a_server_error(
    target, body, content_type, disposition, organization, extra, content_length
):
    headers = {**target.auth, "Content-Type": content_type}
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    if content_length is not None:
        headers["Content-Length"] = content_length
    query = upload_query(organization, target, extra)
    response = target.request("POST", "/api/v2/chats/files", query_string=query, data=body, headers=headers)
    if response.status_code == 201:
        assert_downloads_as(target, response.json["id"], body)


def assert_downloads_as(target, file_id, body):
    download = target.request("GET", f"/api/v2/chats/files/{file_id}", headers=target.auth)
    assert download.status_code == 200
    assert download.data == body
    disposition = download.headers["Content-Disposition"]
    assert disposition.isascii() and disposition.isprintable()
    assert disposition == "inline" or disposition.startswith('inline; filename="')


@FUZZ
@given(body=real_images, content_type=st.sampled_from(ALLOWED_TYPES), disposition=dispositions, extra=extra_params)
def test_valid_image_with_any_name_and_params_is_stored_and_given_back(target, body, content_type, disposition, extra):
    headers = {**target.auth, "Content-Type": content_type}
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    response = target.request(
        "POST", "/api/v2/chats/files", query_string=upload_query(MEMBER, target, extra), data=body, headers=headers
    )
    assert response.status_code == 201, response.json
    assert_downloads_as(target, response.json["id"], body)


def token_headers(target, token):
    return target.auth if token is None else {"Coder-Session-Token": token}


@pytest.fixture
def stored_file(target):
    data = make_image("image/png", 8, 8)
    response = target.request(
        "POST", "/api/v2/chats/files", query_string=upload_query(MEMBER, target, []), data=data,
        headers={**target.auth, "Content-Type": "image/png"},
    )
    target.stored_id = response.json["id"]


@pytest.mark.usefixtures("stored_file")
@FUZZ
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    file_id=half_the_time(None, path_ids),
    token=st.one_of(st.none(), header_text),
    if_none_match=st.one_of(st.none(), header_text),
    extra=extra_params,
)
def test_download_of_any_id_is_never_a_server_error(target, method, file_id, token, if_none_match, extra):
    if file_id is None:  # the real file, to reach the code past the id check
        file_id = target.stored_id
    headers = token_headers(target, token)
    if if_none_match is not None:
        headers = {**headers, "If-None-Match": if_none_match}
    query = urllib.parse.urlencode(extra)
    target.request(method, f"/api/v2/chats/files/{file_id}", query_string=query, headers=headers)


# --- chats ------------------------------------------------------------------


@FUZZ
@given(
    body=st.one_of(chat_bodies.map(json.dumps).map(str.encode), st.binary(max_size=200)),
    content_type=st.one_of(st.just("application/json"), header_text),
)
def test_creating_a_chat_from_any_body_is_never_a_server_error(target, body, content_type):
    response = target.request("POST", "/api/v2/chats", data=body, headers={**target.auth, "Content-Type": content_type})
    if response.status_code == 201:
        chat = response.json
        assert chat["title"] == json.loads(body).get("title", "")
        assert target.request("GET", f"/api/v2/chats/{chat['id']}", headers=target.auth).json == chat


@pytest.fixture
def own_chat(target):
    response = target.request("POST", "/api/v2/chats", json={"title": "mine"}, headers=target.auth)
    target.chat_id = response.json["id"]


@pytest.mark.usefixtures("own_chat")
@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "POST", "POST", "DELETE"]),
    chat_id=half_the_time(None, path_ids),
    action=st.sampled_from(["", "/archive", "/unarchive", "/git/watch", "/archive/"]),
    token=st.one_of(st.none(), header_text),
    extra=extra_params,
)
def test_chat_ids_and_actions_are_never_a_server_error(target, method, chat_id, action, token, extra):
    if chat_id is None:
        chat_id = target.chat_id
    target.request(
        method, f"/api/v2/chats/{chat_id}{action}", query_string=urllib.parse.urlencode(extra),
        headers=token_headers(target, token),
    )


@FUZZ
@given(
    archived=st.one_of(st.sampled_from(["true", "false", "TRUE", "1", ""]), st.text(max_size=20)),
    extra=extra_params,
)
def test_listing_chats_with_any_filter_is_never_a_server_error(target, archived, extra):
    query = urllib.parse.urlencode([("archived", archived), *extra])
    response = target.request("GET", "/api/v2/chats", query_string=query, headers=target.auth)
    assert response.status_code in (200, 400)


# --- text a database refuses, on every database --------------------------------
# SQLite stores a NUL; PostgreSQL refuses it with an error that is not a
# PeeweeException. Neither can encode a lone surrogate, which JSON can escape.


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
@pytest.mark.parametrize(
    "body, field",
    [
        ({"title": "a\0b"}, "title"),
        ({"title": "\ud800"}, "title"),
        ({"title": "ok", "workspace": "proj/\udc80"}, "workspace"),
        ({"title": "ok", "workspace": "proj\0"}, "workspace"),
    ],
    ids=["nul-title", "surrogate-title", "surrogate-workspace", "nul-workspace"],
)
def test_chat_text_no_database_can_store_is_400(app, client, auth, body, field):
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.post("/api/v2/chats", data=json.dumps(body), headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["validations"][0]["field"] == field


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
@pytest.mark.parametrize("where", ["header", "query"])
def test_token_with_nul_is_401(app, client, where):
    app.config["PROPAGATE_EXCEPTIONS"] = False
    token = "abcdef012\0-secret"
    if where == "header":
        response = client.get("/api/v2/chats", headers={"Coder-Session-Token": token})
    else:
        response = client.get("/api/v2/chats", query_string={"coder_session_token": token})
    assert response.status_code == 401, response.get_data(as_text=True)

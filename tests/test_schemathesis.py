"""Schemathesis against the live service: generated requests, checked against the OpenAPI document.

The service runs under gunicorn (SQLite, local storage). The schema is read
from docs/openapi.json, which tests/test_openapi.py proves is what the service
serves at /api/v2/openapi.json (schemathesis' lazy, fixture-loaded schemas do
not work with pytest 9.2). Every operation but the WebSocket is exercised with
a valid token, with none, and with generated wrong ones. The run is bounded
and seeded: the same requests every time.
"""

import uuid

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from blueprints.openapi import DOCUMENT_PATH
from harness.imaging import make_image
from harness.live import GunicornServer, sqlite_settings

SEED = 20260306
MAX_EXAMPLES = 25
CONFORMANCE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def load_schema(**generation):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                       **generation},
    })
    schema = schemathesis.openapi.from_path(DOCUMENT_PATH, config=config)
    # The WebSocket needs a WebSocket client: tests/test_git_watch.py has one. The upstream aliases
    # (web/aliases.py) are the same views, listed as copies: fuzzing them again would prove nothing new.
    return schema.exclude(operation_id_regex="^watchChatGit").exclude(path_regex="^/api/experimental/|/stream/git$")


# With a token the test sends, schemathesis must not generate tokens of its own.
SCHEMA_WITH_TOKEN = load_schema(**{"with-security-parameters": False})
# Without one, it generates wrong tokens in the header, cookie and query.
SCHEMA_WITHOUT_TOKEN = load_schema()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("schemathesis")
    server = GunicornServer(sqlite_settings(work_dir, WEB_CONCURRENCY=1, WEB_THREADS=4), work_dir=str(work_dir))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def account(live):
    return live.flask("create-user", "alice", "--org", "acme")


def is_uuid(value):
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@SCHEMA_WITH_TOKEN.parametrize()
def test_generated_requests_with_a_token(case, live, account):
    # A generated organization id is never the caller's: use theirs, so uploads get past 403.
    if case.query and is_uuid(case.query.get("organization")):
        case.query["organization"] = account["organization_id"]
    case.call_and_validate(base_url=live.url, headers={"Coder-Session-Token": account["token"]},
                           checks=[*CONFORMANCE_CHECKS, ignored_auth])


@SCHEMA_WITHOUT_TOKEN.parametrize()
def test_generated_requests_without_a_valid_token(case, live):
    response = case.call_and_validate(base_url=live.url, checks=CONFORMANCE_CHECKS)
    # Routing answers before auth: 405 for the methods schemathesis tries that a route lacks,
    # 404 for a generated path parameter holding a "/", which matches no route.
    if case.operation.path.startswith("/api/v2/chats") and case.method.upper() == case.operation.method.upper():
        assert response.status_code in (401, 404), response.text


def call(live, operation, **case):
    """Send one hand-built case and hold its response to the same checks."""
    return operation.Case(**case).call_and_validate(base_url=live.url, checks=CONFORMANCE_CHECKS)


def test_upload_and_download_conform(live, account):
    """Generated file ids are never real ones: a real upload reaches 200 and 304 of GET and HEAD (and 403)."""
    token = {"Coder-Session-Token": account["token"]}
    upload = SCHEMA_WITH_TOKEN["/api/v2/chats/files"]["POST"]
    foreign = call(live, upload, query={"organization": str(uuid.uuid4())}, headers=token,
                   body=make_image("image/png"), media_type="image/png")
    assert foreign.status_code == 403  # the generated requests above always use the caller's organization
    created = call(
        live,
        upload,
        query={"organization": account["organization_id"]},
        headers={**token, "Content-Disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.png"},
        body=make_image("image/png"),
        media_type="image/png",
    )
    assert created.status_code == 201
    file = {"file": created.json()["id"]}

    download = SCHEMA_WITH_TOKEN["/api/v2/chats/files/{file}"]
    etag = call(live, download["GET"], path_parameters=file, headers=token).headers["etag"][0]
    for method, if_none_match, status in (("GET", None, 200), ("HEAD", None, 200), ("GET", etag, 304),
                                          ("HEAD", etag, 304), ("GET", '"stale"', 200)):
        headers = {**token, **({"If-None-Match": if_none_match} if if_none_match else {})}
        response = call(live, download[method], path_parameters=file, headers=headers)
        assert response.status_code == status, (method, if_none_match)
    for range_value, status in (("bytes=0-9", 206), ("bytes=-0", 416), ("bytes=0-1,3-4", 200)):
        response = call(live, download["GET"], path_parameters=file, headers={**token, "Range": range_value})
        assert response.status_code == status, range_value


def test_variants_info_and_delete_conform(live, account):
    """A real file reaches 200 and 304 of its thumbnail and preview, 200 of its info, then 204 and the 404s."""
    token = {"Coder-Session-Token": account["token"]}
    created = call(live, SCHEMA_WITH_TOKEN["/api/v2/chats/files"]["POST"],
                   query={"organization": account["organization_id"]}, headers=token,
                   body=make_image("image/jpeg", 1400, 700), media_type="image/jpeg")
    assert created.status_code == 201
    file = {"file": created.json()["id"]}
    for variant in ("thumbnail", "preview"):
        operations = SCHEMA_WITH_TOKEN[f"/api/v2/chats/files/{{file}}/{variant}"]
        etag = call(live, operations["GET"], path_parameters=file, headers=token).headers["etag"][0]
        for method in ("GET", "HEAD"):
            response = call(live, operations[method], path_parameters=file, headers={**token, "If-None-Match": etag})
            assert response.status_code == 304, (variant, method)
    info = SCHEMA_WITH_TOKEN["/api/v2/chats/files/{file}/info"]["GET"]
    assert call(live, info, path_parameters=file, headers=token).json()["preview"]["width"] == 1280
    delete = SCHEMA_WITH_TOKEN["/api/v2/chats/files/{file}"]["DELETE"]
    assert call(live, delete, path_parameters=file, headers=token).status_code == 204
    assert call(live, delete, path_parameters=file, headers=token).status_code == 404
    assert call(live, info, path_parameters=file, headers=token).status_code == 404


def test_chat_lifecycle_conforms(live, account):
    """Generated chat ids are never the caller's; a real chat reaches 200, 204 and the 400 conflicts."""
    token = {"Coder-Session-Token": account["token"]}
    chats = SCHEMA_WITH_TOKEN["/api/v2/chats"]
    created = call(live, chats["POST"], body={"title": "t", "workspace": "alice/project"}, headers=token,
                   media_type="application/json")
    assert created.status_code == 201
    chat = {"chat": created.json()["id"]}
    steps = [
        ("/api/v2/chats/{chat}", "GET", 200),
        ("/api/v2/chats/{chat}/archive", "POST", 204),
        ("/api/v2/chats/{chat}/archive", "POST", 400),
        ("/api/v2/chats/{chat}/unarchive", "POST", 204),
        ("/api/v2/chats/{chat}/unarchive", "POST", 400),
    ]
    for path, method, status in steps:
        response = call(live, SCHEMA_WITH_TOKEN[path][method], path_parameters=chat, headers=token)
        assert response.status_code == status, (method, path)
    listed = call(live, chats["GET"], query={"archived": "false"}, headers=token)
    assert chat["chat"] in [item["id"] for item in listed.json()]
    patch = SCHEMA_WITH_TOKEN["/api/v2/chats/{chat}"]["PATCH"]
    for body in ({"archived": True}, {"archived": True}, {"archived": False, "title": "renamed"}):
        assert call(live, patch, path_parameters=chat, headers=token, body=body,
                    media_type="application/json").status_code == 204, body


def test_chat_file_links_conform(live, account):
    """A real file linked to a real chat: 204, the chat's JSON with its files, the 404s, the cap's 400 shape."""
    token = {"Coder-Session-Token": account["token"]}
    chat = {"chat": call(live, SCHEMA_WITH_TOKEN["/api/v2/chats"]["POST"], body={"title": "t"}, headers=token,
                         media_type="application/json").json()["id"]}
    created = call(live, SCHEMA_WITH_TOKEN["/api/v2/chats/files"]["POST"],
                   query={"organization": account["organization_id"]}, headers=token,
                   body=make_image("image/png"), media_type="image/png")
    link = SCHEMA_WITH_TOKEN["/api/v2/chats/{chat}/files"]["POST"]
    unlink = SCHEMA_WITH_TOKEN["/api/v2/chats/{chat}/files/{file}"]["DELETE"]
    file_ids = {"file_ids": [created.json()["id"]]}
    assert call(live, link, path_parameters=chat, headers=token, body=file_ids,
                media_type="application/json").status_code == 204
    got = call(live, SCHEMA_WITH_TOKEN["/api/v2/chats/{chat}"]["GET"], path_parameters=chat, headers=token)
    assert [file["id"] for file in got.json()["files"]] == file_ids["file_ids"]
    assert call(live, link, path_parameters=chat, headers=token, body={"file_ids": [str(uuid.uuid4())]},
                media_type="application/json").status_code == 404
    both = {**chat, "file": file_ids["file_ids"][0]}
    assert call(live, unlink, path_parameters=both, headers=token).status_code == 204
    assert call(live, unlink, path_parameters=both, headers=token).status_code == 404

"""The OpenAPI document: valid OpenAPI 3, served as is, and naming exactly the routes the app has."""

import json
import re

import pytest
from openapi_spec_validator import validate

from blueprints.openapi import DOCUMENT_PATH
from web import aliases

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Flask answers these for every rule by itself; the document names HEAD only
# where the contract promises it (file download).
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def document():
    with open(DOCUMENT_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def operations(document):
    """(path, method, operation) for every operation in the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def resolve(document, node):
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = document["components"][kind][name]
    return node


def without_parameter_names(path):
    """``/chats/<chat_id>`` and ``/chats/{chat}`` both become ``/chats/{}``."""
    return re.sub(r"<[^>]*>|\{[^}]*\}", "{}", path)


def test_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_document_is_served_without_a_token(sqlite_app, document):
    response = sqlite_app.test_client().get("/api/v2/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == document


def test_document_and_url_map_name_the_same_routes(sqlite_app, document):
    served = {
        (method, without_parameter_names(rule.rule))
        for rule in sqlite_app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - AUTOMATIC_METHODS
    }
    documented = {
        (method.upper(), without_parameter_names(path))
        for path, method, _ in operations(document)
        if method.upper() not in AUTOMATIC_METHODS
    }
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_head_is_documented_for_file_downloads_only(document):
    heads = {path for path, method, _ in operations(document) if method == "head"}
    downloads = ["/api/v2/chats/files/{file}", "/api/v2/chats/files/{file}/thumbnail",
                 "/api/v2/chats/files/{file}/preview"]
    assert heads == {spelling for path in downloads for spelling in [path, *aliases.alias_paths(path)]}


def test_every_upstream_alias_is_listed_as_a_copy_of_its_path(document):
    """The URL-map test above sees that each alias is listed; this, that it says what its /api/v2 path says."""
    assert document == aliases.documented(document), "run scripts/openapi-aliases"
    listed = {path for path in document["paths"] if "x-alias-of" in document["paths"][path]}
    assert {"/api/experimental/chats", "/api/experimental/chats/{chat}/stream/git",
            "/api/v2/chats/{chat}/stream/git"} <= listed


def test_path_parameters_are_declared(document):
    for path, _method, operation in operations(document):
        declared = {resolve(document, param)["name"] for param in operation.get("parameters", [])
                    if resolve(document, param)["in"] == "path"}
        assert declared == set(re.findall(r"\{([^}]*)\}", path)), path


def test_every_api_operation_needs_a_token_except_the_document(document):
    schemes = document["components"]["securitySchemes"]
    assert {(scheme["in"], scheme["name"]) for scheme in schemes.values()} == {
        ("header", "Coder-Session-Token"),
        ("cookie", "coder_session_token"),
        ("query", "coder_session_token"),
    }
    for path, method, operation in operations(document):
        public = not path.startswith(("/api/v2/", "/api/experimental/")) or path == "/api/v2/openapi.json"
        security = operation.get("security", document["security"])
        assert (security == []) == public, (method, path)
        if not public:
            assert "401" in operation["responses"], (method, path)


def test_every_error_response_is_the_response_schema(document):
    error_schema = {"$ref": "#/components/schemas/Response"}
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = resolve(document, response).get("content", {})
            assert list(content) == ["application/json"], (method, path, status)
            assert content["application/json"]["schema"] == error_schema, (method, path, status)


def test_operation_ids_are_unique(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))

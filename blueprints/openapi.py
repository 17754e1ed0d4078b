"""The OpenAPI 3 document at /api/v2/openapi.json; no token needed.

The document is a reviewed static file, docs/openapi.json, not generated from
the routes: it is the contract, and tests/test_openapi.py checks that it and
the URL map name the same routes, so neither can drift from the other.
"""

from __future__ import annotations

import functools
import os

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)

DOCUMENT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "openapi.json")


@functools.cache
def document_bytes() -> bytes:
    with open(DOCUMENT_PATH, "rb") as handle:
        return handle.read()


@bp.get("/api/v2/openapi.json")
def openapi_document() -> Response:
    return Response(document_bytes(), mimetype="application/json")

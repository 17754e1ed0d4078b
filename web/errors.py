"""One error shape for every failure: ``{"message", "detail", "validations"}``.

Views raise :class:`ApiError`; the handlers registered here turn it, every
``HTTPException`` and anything unexpected into JSON, so no request ever gets
an HTML page or a traceback.

Every error also has a code: a stable name for its kind, for the service's
own use and never in the body. An ApiError names one where the status alone
does not tell apart what metrics count apart (``unsupported_type``,
``busy``, ...); any other error's is its status's (``bad_request``,
``not_found``). error_response() leaves it in ``g.error_code``, where the
request's after-request hook (ops/observability.py) reads it.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, g, jsonify
from peewee import InterfaceError, OperationalError
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: str | None = None,
                 validations: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None, *,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = validations
        self.headers = headers or {}
        self.code = code or status_code(status)


def status_code(status: int) -> str:
    """The code of an error that names none: its status's reason phrase as a slug (404: ``not_found``)."""
    return re.sub(r"[^a-z0-9]+", "_", HTTP_STATUS_CODES.get(status, "error").lower()).strip("_")


def error_response(status: int, message: str, detail: str | None = None,
                   validations: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None, *,
                   code: str | None = None) -> Response:
    body: dict[str, object] = {"message": message}
    if detail:
        body["detail"] = detail
    if validations:
        body["validations"] = validations
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    response.headers["X-Content-Type-Options"] = "nosniff"  # every response keeps it, errors too
    g.error_code = code or status_code(status)
    return response


def handle_api_error(error: ApiError) -> Response:
    return error_response(error.status, error.message, error.detail, error.validations, error.headers,
                          code=error.code)


def handle_http_exception(error: HTTPException) -> Response:
    # Werkzeug's own descriptions are prose written for HTML pages; the name
    # is the summary, the description the detail.
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:  # only it has them: a bare 405 has none
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return error_response(error.code or 500, f"{error.name}.", error.description, headers=headers)


def handle_database_unavailable(error: Exception) -> Response:
    # Connection-level failures only: a server that is down, restarting or out
    # of connections. Errors in our own queries stay 500s with a traceback.
    log.error("database unavailable: %s", error)
    return error_response(503, "The database is unavailable.", "Try again shortly.", headers={"Retry-After": "5"})


def handle_unexpected(error: Exception) -> Response:
    log.exception("unhandled exception")
    return error_response(500, "Internal server error.")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    for database_error in (OperationalError, InterfaceError, MaxConnectionsExceeded):
        app.register_error_handler(database_error, handle_database_unavailable)
    app.register_error_handler(Exception, handle_unexpected)

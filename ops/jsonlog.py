"""Log records as JSON lines, each carrying the id of the request it belongs to.

Standard library (and click) only, so gunicorn's master can use the same
format for its own log through ``logconfig_dict`` without importing the app.

The request id lives in a context variable that observability's middleware
sets for the duration of a request; any record logged meanwhile in that
thread (a warning, an exception from web/errors.py) gets it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

import click

REQUEST_LOG_LINE = '"%s" %s %s'  # werkzeug's dev-server request line: it carries the query string
# One encoder for every line (json.dumps with an argument builds a new one each call); a value
# that is not JSON (an exception's argument, a UUID) is written as its str().
_ENCODER = json.JSONEncoder(default=str)

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request this thread is serving, or None."""
    return _request_id.get()


def set_request_id(request_id: str | None) -> None:
    _request_id.set(request_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id, extra ``fields``, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id:
            line["request_id"] = request_id
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted (and scrubbed) by ScrubSecrets
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(line)


class JsonLineHandler(logging.Handler):
    """Writes each record as one line on stdout.

    The stream is looked up at every record, not bound once, so pytest's
    and click's captured streams work. While an admin command runs in this
    thread, lines go to stderr instead: ``--json`` output on stdout must stay
    parseable.
    """

    def __init__(self, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if click.get_current_context(silent=True) else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure(level: str | int) -> None:
    """Make the root logger write JSON lines at ``level`` (a name like "INFO"); safe to call again."""
    # The line carries none of the caller's file and line, thread or process: don't look them up for
    # every record (the logging documentation's "Optimization"; every request writes one).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in [handler for handler in root.handlers if isinstance(handler, JsonLineHandler)]:
        root.removeHandler(handler)
    root.addHandler(JsonLineHandler())
    root.setLevel(parse_level(level))
    werkzeug = logging.getLogger("werkzeug")
    if not any(isinstance(existing, _DropRequestLines) for existing in werkzeug.filters):
        werkzeug.addFilter(_DropRequestLines())


def parse_level(level: object) -> int:
    """The numeric level for a name like "info", or ValueError."""
    number = logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        raise ValueError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}.")
    return number


class _DropRequestLines(logging.Filter):
    """The dev server's own request lines repeat ours, with the query string (maybe a token) in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return REQUEST_LOG_LINE not in str(record.msg)


# What a malformed request's text may carry that must not reach a log: the
# query string (it may hold the token), cookie and token headers, tokens.
_SECRETS = (
    (re.compile(r"\?[^\s'\"]+"), "?[redacted]"),
    (re.compile(r"(cookie|authorization|coder[-_]session[-_]token)\b[^'\"\r\n]*", re.IGNORECASE), r"\1 [redacted]"),
    (re.compile(r"[0-9a-f]{10}-[A-Za-z0-9_-]{16,}"), "[redacted token]"),
)


def scrub(text: str) -> str:
    """``text`` without query strings, cookie and token header values, or anything shaped like a token."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class ScrubSecrets(logging.Filter):
    """For gunicorn's own log: its warnings about bad requests quote the request line or header.

    The message (and a traceback, formatted here) is scrubbed before any
    handler sees it, so the args are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: keep the format only
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = None
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


# The last whole second formatted: most lines share it with the line before.
_second: tuple[int | None, str] = (None, "")


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-12-01T23:01:02.345Z."""
    global _second
    seconds = int(created)
    cached, text = _second  # one tuple: another thread may replace it, never half of it
    if cached != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{int((created - seconds) * 1000):03d}Z"

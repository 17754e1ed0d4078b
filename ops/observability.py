"""Operability: one JSON log line per request, and Prometheus metrics at ``/metrics``.

A WSGI middleware (inside ProxyFix, so ``REMOTE_ADDR`` is the client's)
gives every request an id, from a sane ``X-Request-ID`` or a new one, echoes
it in the response, times the request and counts the body bytes read and
actually sent. The line is written when the server closes the response
iterable, after the last byte of a streamed download; a WebSocket's line
when the socket closes. A Flask ``after_request`` hook adds what only Flask
knows: the URL rule (not the raw path, so ids never become label values),
the endpoint, the authenticated user, and upload outcomes.

Never logged: bodies, tokens, cookies, query strings.

Metrics (names prefixed ``chatfiles_``): requests and their latency by
method, route and status; bytes of accepted uploads; bytes of downloads
sent; upload rejections by reason; the CPU time of uploads' image work;
open watch sockets. Under gunicorn the
workers are separate processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set
(gunicorn.conf.py always sets it) prometheus_client keeps values in files
there and ``/metrics`` adds up every worker's; otherwise the process's own
registry is served. ``/metrics`` needs no token: keep it off the public
listener and let only the scraper reach it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol, cast

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

import config
from ops import jsonlog

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Request
    from werkzeug.local import LocalProxy

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
ENVIRON_KEY = "chatfiles.observed_request"
UNMATCHED_ROUTE = "<unmatched>"  # 404s and 405s: the raw path would let anyone mint label values
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LOGGED_PATH = 512

# prometheus_client picks its storage when first imported, from the same variable.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

LABELS = ("method", "route", "status")
REQUESTS = Counter("chatfiles_http_requests", "HTTP requests answered.", LABELS)
REQUEST_DURATION = Histogram(
    "chatfiles_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response (a WebSocket: until it closes).",
    LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADED_BYTES = Counter("chatfiles_upload_bytes", "Bytes of accepted uploads.")
SERVED_BYTES = Counter("chatfiles_download_bytes", "Bytes of chat files sent by downloads.")
UPLOAD_REJECTIONS = Counter("chatfiles_upload_rejections", "Uploads refused, by reason.", ("reason",))
# Thread CPU of each upload's image work (verifying decode, thumbnail, preview): what an
# upload costs is mostly this, and bench/overhead.py subtracts it per request.
IMAGE_WORK_SECONDS = Counter("chatfiles_upload_image_cpu_seconds",
                             "CPU seconds uploads spent decoding images and making their variants.")
WATCH_SOCKETS = Gauge("chatfiles_watch_sockets_open", "Git-watch WebSockets open now.", multiprocess_mode="livesum")

# Why an upload was refused: its error's code (web/errors.py) where the code is
# one of these, else its status where that is enough (werkzeug's own errors
# have no finer code). Anything new falls back to bad_request or
# internal_error rather than minting a label.
REJECTION_BY_STATUS = {401: "unauthenticated", 403: "not_member", 408: "timed_out", 413: "too_large"}
REJECTION_BY_CODE = (
    "cross_origin",  # a 403 that is not about membership
    "unsupported_type",
    "empty",
    "invalid_image",
    "invalid_text",
    "invalid_json",
    "invalid_pdf",
    "storage_error",  # the object store or the database
    "busy",  # the worker's upload memory budget stayed full
    "quota_exceeded",  # ORG_STORAGE_QUOTA
)
REJECTION_REASONS = ("bad_request", "internal_error", *REJECTION_BY_STATUS.values(), *REJECTION_BY_CODE)
for _reason in REJECTION_REASONS:
    UPLOAD_REJECTIONS.labels(_reason)  # present at 0 from the start, so rate() sees the first one

UPLOAD_ENDPOINT = "files.upload"
DOWNLOAD_ENDPOINT = "files.download"

access_log = logging.getLogger("request")


def init_app(app: Flask) -> None:
    """Logging, the request middleware, the hook and ``/metrics``. Call before wrapping in ProxyFix."""
    try:
        jsonlog.configure(app.config["LOG_LEVEL"])
    except ValueError as error:
        raise config.ConfigError(str(error)) from None
    # Flask's documented way to add WSGI middleware, though its class types wsgi_app as a method.
    app.wsgi_app = RequestObserver(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_note_response)
    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics)


def current_request_id() -> str | None:
    return jsonlog.current_request_id()


def watch_socket_opened(environ: WSGIEnvironment) -> ObservedRequest:
    """A watch request handed its connection to the hub: counted as open; its record waits for the close."""
    observed: ObservedRequest = environ[ENVIRON_KEY]
    observed.handed_over = True
    WATCH_SOCKETS.inc()
    return observed


def watch_socket_not_opened(observed: ObservedRequest) -> None:
    """The handover failed before the hub held the socket: the request ends (and is logged) as an ordinary one."""
    WATCH_SOCKETS.dec()
    observed.handed_over = False


def watch_socket_closed(observed: ObservedRequest) -> None:
    """The socket ended (on the hub's loop): one request line, with the socket's whole life as its duration."""
    WATCH_SOCKETS.dec()
    observed.finish()


@contextlib.contextmanager
def image_work() -> Iterator[None]:
    """Around an upload's decode and variants: its thread's CPU time is added to IMAGE_WORK_SECONDS."""
    started = time.thread_time()
    try:
        yield
    finally:
        IMAGE_WORK_SECONDS.inc(time.thread_time() - started)


def metrics() -> Response:
    return Response(generate_latest(_scrape_registry()), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _scrape_registry() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()  # fresh per scrape: it reads every worker's files
    multiprocess.MultiProcessCollector(registry)
    return registry


# --- the request's record -----------------------------------------------------


class ObservedRequest:
    """What the log line and the metrics need, gathered over a request's life."""

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        self.method: str = environ.get("REQUEST_METHOD", "")
        self.path = _raw_path(environ)
        self.remote_addr: str | None = environ.get("REMOTE_ADDR")
        self.started = time.perf_counter()
        self.status: int | None = None
        self.route: str | None = None
        self.endpoint: str | None = None
        self.user_id: str | None = None
        self.handed_over = False  # a WebSocket now held by the hub, which finishes the record at its close
        self.bytes_in = 0
        self.bytes_out = 0
        self.aborted = False
        self.finished = False

    def finish(self) -> None:
        """Log the line and record the metrics, once."""
        if self.finished:
            return
        self.finished = True
        duration = time.perf_counter() - self.started
        status = 101 if self.handed_over else (self.status or 500)
        requests, durations = _request_series((_method_label(self.method), self.route or UNMATCHED_ROUTE, str(status)))
        requests.inc()
        durations.observe(duration)
        if self.endpoint == DOWNLOAD_ENDPOINT and self.bytes_out:  # a 304 or HEAD sends none
            SERVED_BYTES.inc(self.bytes_out)
        fields: dict[str, object] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": status,
            "duration_ms": round(duration * 1000, 1),
            "user_id": self.user_id,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "remote_addr": self.remote_addr,
        }
        if self.aborted:
            fields["aborted"] = True  # the body was cut short: client gone, or the body failed
        access_log.info("%s %s %s", self.method, self.route or self.path, status, extra={"fields": fields})


# (method, route, status) -> its counter and histogram: labels() checks and locks on every call, and
# the set is small (methods x URL rules x statuses).
_request_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def _request_series(labels: tuple[str, str, str]) -> tuple[Counter, Histogram]:
    series = _request_children.get(labels)
    if series is None:
        series = _request_children.setdefault(labels, (REQUESTS.labels(*labels), REQUEST_DURATION.labels(*labels)))
    return series


def request_id_from(header: str | None) -> str:
    """The client's id when it is short and plain, else a new one (it goes into logs and a header)."""
    if header and REQUEST_ID_PATTERN.fullmatch(header):
        return header
    return secrets.token_hex(16)


def _raw_path(environ: WSGIEnvironment) -> str:
    # WSGI carries the path as latin-1 decoded bytes; the query string is elsewhere and stays there.
    path: str = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return path[:MAX_LOGGED_PATH]


def _method_label(method: str) -> str:
    return method if method in METHODS else "other"


# --- WSGI ---------------------------------------------------------------------


class RequestObserver:
    """WSGI middleware: request id, timing, byte counts; logs when the response is closed."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> ObservedBody:
        observed = ObservedRequest(environ)
        environ[ENVIRON_KEY] = observed
        if "wsgi.input" in environ:
            environ["wsgi.input"] = CountingInput(environ["wsgi.input"], observed)
        jsonlog.set_request_id(observed.request_id)

        def observed_start_response(status: str, headers: list[tuple[str, str]],
                                    exc_info: OptExcInfo | None = None) -> Callable[[bytes], object]:
            observed.status = int(status.split(" ", 1)[0])
            headers = [(name, value) for name, value in headers if name.lower() != "x-request-id"]
            headers.append((REQUEST_ID_HEADER, observed.request_id))
            write = start_response(status, headers, exc_info)

            def counting_write(data: bytes) -> object:
                observed.bytes_out += len(data)
                return write(data)

            return counting_write

        try:
            body = self.app(environ, observed_start_response)
        except BaseException:
            # A watch socket's StopIteration/ConnectionError: the hub finishes its record when it closes.
            # Anything else is the server's 500.
            if observed.handed_over:
                jsonlog.set_request_id(None)
            else:
                _finish(observed)
            raise
        return ObservedBody(body, observed)


class ObservedBody:
    """The response iterable, counting bytes as the server takes them; finishes the record on close.

    A chunk counts once the server asks for the next one (or the end), that
    is once it has been written: a download cut off by the client counts
    what was sent, not what was produced.
    """

    def __init__(self, body: Iterable[bytes], observed: ObservedRequest) -> None:
        self._body = body
        self._iterator: Iterator[bytes] | None = None
        self._observed = observed
        self._pending = 0
        self._complete = False

    def __iter__(self) -> ObservedBody:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._body)
        self._observed.bytes_out += self._pending
        self._pending = 0
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._complete = True
            raise
        self._pending = len(chunk)
        return chunk

    def close(self) -> None:
        try:
            if hasattr(self._body, "close"):
                self._body.close()
        finally:
            self._observed.aborted = not self._complete
            _finish(self._observed)


def _finish(observed: ObservedRequest) -> None:
    try:
        observed.finish()
    finally:
        jsonlog.set_request_id(None)


class _Input(Protocol):
    """The server's ``wsgi.input`` (PEP 3333's methods): gunicorn's and werkzeug's read also take None, for "all
    of it", and BodyInput (web/bodies.py), reading through CountingInput, passes it on."""

    def read(self, size: int | None = ..., /) -> bytes: ...

    def readline(self, size: int | None = ..., /) -> bytes: ...

    def readlines(self, hint: int = ..., /) -> list[bytes]: ...

    def __iter__(self) -> Iterator[bytes]: ...


class CountingInput:
    """``wsgi.input`` counting the bytes read. Only PEP 3333's methods: no readinto (gunicorn has none)."""

    def __init__(self, stream: _Input, observed: ObservedRequest) -> None:
        self._stream = stream
        self._observed = observed

    def _count(self, data: bytes) -> bytes:
        self._observed.bytes_in += len(data)
        return data

    def read(self, *args: int | None) -> bytes:
        return self._count(self._stream.read(*args))

    def readline(self, *args: int | None) -> bytes:
        return self._count(self._stream.readline(*args))

    def readlines(self, *args: int) -> list[bytes]:
        lines = self._stream.readlines(*args)
        self._observed.bytes_in += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield self._count(line)

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


# --- Flask --------------------------------------------------------------------


def _note_response(response: Response) -> Response:
    # One context lookup, not one per attribute. Flask types the proxy as the Request it stands for.
    current = cast("LocalProxy[Request]", request)._get_current_object()
    observed: ObservedRequest | None = current.environ.get(ENVIRON_KEY)
    if observed is None:
        return response
    rule = current.url_rule
    observed.route = rule.rule if rule is not None else None
    observed.endpoint = current.endpoint
    user = g.get("user")
    observed.user_id = str(user.id) if user is not None else None
    if observed.endpoint == UPLOAD_ENDPOINT:
        _count_upload(response, observed)
    return response


def _count_upload(response: Response, observed: ObservedRequest) -> None:
    if response.status_code == 201:
        UPLOADED_BYTES.inc(observed.bytes_in)
    elif response.status_code >= 400:
        UPLOAD_REJECTIONS.labels(upload_rejection_reason(response.status_code, g.get("error_code"))).inc()


def upload_rejection_reason(status: int, code: str | None = None) -> str:
    """The label of an upload refused with ``status``, its error's ``code`` (web/errors.py) if it has one."""
    if code in REJECTION_BY_CODE:
        return code
    if status in REJECTION_BY_STATUS:
        return REJECTION_BY_STATUS[status]
    return "internal_error" if status >= 500 else "bad_request"

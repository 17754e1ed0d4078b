"""The request body on the wire: read bounded, spooled to disk, drained after an early answer.

Every body is read through :class:`BodyInput`, which :class:`BodyMiddleware`
puts in ``wsgi.input``. It is the one place for what a client can do wrong
while sending:

- ``Expect: 100-continue``: "100 Continue" goes out when the application
  first reads the body (gunicorn.conf.py stops gunicorn from sending it up
  front), so a request refused before reading gets its answer unsent.
- A body with no byte for ``BODY_READ_TIMEOUT`` seconds ends with 408; a
  malformed chunked body, or one the client cut short, with 400.

An answer given before the body was read (401, 403, 413 ...) is sent first;
then, as Go's net/http and nginx's ``lingering_close`` do, the rest of the
body is read and discarded (up to ``DRAIN_FACTOR`` x ``MAX_FILE_SIZE``), and
past that the socket is half-closed and read for a moment before gunicorn
closes it. Closing a socket the client is still writing into makes the
kernel send a reset, and the client (or nginx) never reads the answer.
An answer after which the connection will close (a body that will not come
or cannot all be drained) says ``Connection: close``; the middleware alone
decides it, when the response starts (gunicorn.conf.py makes gunicorn
honour it).

Upload bodies are spooled to a temporary file as they arrive, hashed on the
way (:func:`spooled_body`): a body on the wire costs no memory. JSON bodies
are small and read into memory under a limit (:func:`json_body`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import tempfile
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Protocol

from flask import Flask, request
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.http.unreader import SocketUnreader

from web.errors import ApiError

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# The body is read this much at a time, and gunicorn reads ahead no more than this (init_app): its reader
# copies all it holds ahead on every read the app makes, so with its default 1 MiB read-ahead each 64 KiB
# read copied up to a mebibyte (an 8 MB upload: 20-30 ms of CPU). Larger steps cost memory while many
# uploads spool at once.
READ_CHUNK = 128 * 1024
LINGER_RECV = 64 * 1024  # what a lingering close reads at a time: only to be thrown away
JSON_BODY_LIMIT = 64 * 1024
# An early answer's unread body is drained up to this many times the upload limit.
DRAIN_FACTOR = 4
DRAIN_SECONDS = 30  # however fast a drain goes, it ends; nginx's lingering_time
LINGER_SECONDS = 2  # after the half-close: nginx's lingering_timeout is 5 s
ENVIRON_KEY = "chatfiles.body"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def init_app(app: Flask) -> None:
    """Wrap the app so every body is read through BodyInput. Call before observability wraps it."""
    # Flask's documented way to add WSGI middleware, though its class types wsgi_app as a method.
    app.wsgi_app = BodyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        stall_timeout=app.config["BODY_READ_TIMEOUT"],
        drain_limit=DRAIN_FACTOR * app.config["MAX_FILE_SIZE"],
    )
    # gunicorn's read-ahead is a class setting, the same for every request of the process.
    SocketUnreader.max_body_chunk = min(SocketUnreader.max_body_chunk, READ_CHUNK)


# --- errors -------------------------------------------------------------------


# Whether the connection ends after an error is BodyMiddleware's to say (BodyInput.closes_after_response):
# a 413 whose body is then drained whole keeps it alive.


def too_large(limit: int) -> ApiError:
    return ApiError(413, "File too large.", f"Maximum file size is {limit} bytes.")


def _timed_out(seconds: float) -> ApiError:
    return ApiError(408, "Request body timed out.", f"No byte of the body arrived for {seconds} seconds.")


def _incomplete(detail: str) -> ApiError:
    return ApiError(400, "Incomplete request body.", detail)


def _malformed(error: Exception) -> ApiError:
    return ApiError(400, "Malformed request body.", f"The chunked body could not be read: {error}.")


# --- reading ------------------------------------------------------------------


class _Stream(Protocol):
    """The server's ``wsgi.input``: gunicorn's (and werkzeug's) also take None, for "all of it"."""

    def read(self, size: int | None = ..., /) -> bytes: ...

    def readline(self, size: int | None = ..., /) -> bytes: ...


class BodyInput:
    """``wsgi.input`` with the 100-continue, the stall timeout and the body's errors as ApiErrors."""

    def __init__(self, environ: WSGIEnvironment, stall_timeout: float) -> None:
        self._stream: _Stream = environ["wsgi.input"]
        # None outside gunicorn (tests' client, dev server).
        self._socket: socket.socket | None = environ.get("gunicorn.socket")
        self._continue_owed = (
            self._socket is not None
            and environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
            and environ.get("HTTP_EXPECT", "").lower() == "100-continue"
        )
        self._stall_timeout = stall_timeout
        self._remaining = _declared_length(environ)  # None: until the server's stream ends (chunked)
        # gunicorn ends a stream without Content-Length at once unless it is chunked (Transfer-Encoding).
        self._length_unknown = self._remaining is None and bool(environ.get("HTTP_TRANSFER_ENCODING"))
        self.bytes_read = 0
        self.at_end = self._remaining == 0
        self.failed = False

    @property
    def continue_owed(self) -> bool:
        """The client waits for "100 Continue" before sending its body, and has not had it."""
        return self._continue_owed

    def read(self, size: int | None = -1) -> bytes:
        return self._read(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._read(self._stream.readline, size)

    def _read(self, method: Callable[[int | None], bytes], size: int | None) -> bytes:
        if self.failed or self.at_end:
            return b""
        if self._remaining is not None:
            # Never past the declared end: a dev server's input is the raw socket.
            size = self._remaining if size is None or size < 0 else min(size, self._remaining)
        if self._continue_owed:
            self._continue_owed = False
            assert self._socket is not None  # owed only on gunicorn's socket
            self._socket.sendall(CONTINUE)
        try:
            with self._socket_timeout(self._stall_timeout):
                data = method(size)
        except TimeoutError:
            self.failed = True
            raise _timed_out(self._stall_timeout) from None
        except (NoMoreData, ConnectionError):
            self.failed = True
            raise _incomplete("The connection closed before the body was complete.") from None
        except ParseException as error:
            self.failed = True
            raise _malformed(error) from None
        self.bytes_read += len(data)
        if self._remaining is not None:
            self._remaining -= len(data)
        if (not data and size != 0) or self._remaining == 0:
            self.at_end = True
        return data

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(READ_CHUNK), b"")

    def closes_after_response(self, drain_limit: int) -> bool:
        """Whether the connection will end after the answer: what is left of the body cannot all be drained.

        Decided when the answer starts, from what is known then: a body the
        client will not send (it waits for "100 Continue"), one whose reading
        failed (where the next request would start is unknown), one longer
        than ``drain`` reads, or a chunked one not read to its end (its
        length is unknown). A drain that stalls or runs out of time later
        still closes; that cannot be told in advance.
        """
        if self._socket is None:
            return False  # not gunicorn: nothing here closes the connection
        if self.failed:
            return True
        if self.at_end:
            return False
        if self._continue_owed:
            return True
        if self._remaining is None:
            return self._length_unknown
        return self.bytes_read + self._remaining > drain_limit

    def drain(self, limit: int, seconds: float) -> bool:
        """Read and discard the rest of the body; True when it all came."""
        if self._continue_owed:
            return self.at_end  # the client waits for a 100 Continue that will not come: nothing to read
        deadline = time.monotonic() + seconds
        try:
            while not self.at_end and not self.failed and self.bytes_read < limit:
                if time.monotonic() > deadline:
                    return False
                self.read(min(READ_CHUNK, limit - self.bytes_read))
        except (ApiError, OSError):
            return False
        return self.at_end

    def linger(self, seconds: float) -> None:
        """Half-close, then read what the client still sends for a moment, so closing does not reset.

        The half-close is what ends the connection with the answer (gunicorn
        closes it next if the answer said ``Connection: close``, else when it
        reads the end of the stream). A client still waiting for
        "100 Continue" sends nothing more: no lingering for it.
        """
        if self._socket is None:
            return
        if self._continue_owed:
            seconds = 0
        try:
            self._socket.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            while (remaining := deadline - time.monotonic()) > 0:
                self._socket.settimeout(remaining)
                if not self._socket.recv(LINGER_RECV):
                    break
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._socket.settimeout(None)

    @contextlib.contextmanager
    def _socket_timeout(self, seconds: float) -> Iterator[None]:
        if self._socket is None:
            yield
            return
        previous = self._socket.gettimeout()
        self._socket.settimeout(seconds)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self._socket.settimeout(previous)


def _declared_length(environ: WSGIEnvironment) -> int | None:
    """The body's length: Content-Length, None for a server-terminated (chunked) stream, else 0 (PEP 3333)."""
    declared = environ.get("CONTENT_LENGTH")
    try:
        if declared:  # most requests have none: no exception to raise and catch for them
            return max(0, int(declared))
    except ValueError:
        pass
    return None if environ.get("wsgi.input_terminated") else 0


class BodyMiddleware:
    """WSGI middleware: every body through BodyInput; an unread rest drained once the answer is sent.

    It owns the response's ``Connection: close``: set when the connection
    will end after the answer (BodyInput.closes_after_response), removed
    when an application set it on an answer after which it will not.
    """

    def __init__(self, app: WSGIApplication, stall_timeout: float, drain_limit: int) -> None:
        self.app = app
        self.stall_timeout = stall_timeout
        self.drain_limit = drain_limit

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = BodyInput(environ, self.stall_timeout)
        environ["wsgi.input"] = environ[ENVIRON_KEY] = body

        def start_response_saying_close(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            headers = [(name, value) for name, value in headers if not _is_connection_close(name, value)]
            if body.closes_after_response(self.drain_limit):
                headers.append(("Connection", "close"))
            return start_response(status, headers, exc_info)

        return _DrainAfterResponse(self.app(environ, start_response_saying_close), body, self.drain_limit)


def _is_connection_close(name: str, value: str) -> bool:
    return name.lower() == "connection" and value.strip(" \t").lower() == "close"


class _DrainAfterResponse:
    """The response iterable; the server closes it after the last byte went out, and then it drains."""

    def __init__(self, response: Iterable[bytes], body: BodyInput, drain_limit: int) -> None:
        self._response = response
        self._body = body
        self._drain_limit = drain_limit

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._response)

    def close(self) -> None:
        try:
            if hasattr(self._response, "close"):
                self._response.close()
        finally:
            if not self._body.drain(self._drain_limit, DRAIN_SECONDS):
                self._body.linger(LINGER_SECONDS)


def _body_input() -> BodyInput:
    return request.environ[ENVIRON_KEY]


# --- upload bodies: spooled -----------------------------------------------------


class SpooledBody:
    """A request body in an anonymous temporary file: its size and SHA-256, and its descriptor for a sandbox."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="chatfiles-upload-")
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def fileno(self) -> int:
        """The file's descriptor, everything written flushed to it: what a sandbox process is handed."""
        self.file.flush()
        return self.file.fileno()

    def rewound(self) -> BinaryIO:
        """The file, at its start: for a store that copies it."""
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def spooled_body(limit: int) -> Iterator[SpooledBody]:
    """The upload's body in a SpooledBody; 413 over ``limit`` bytes (declared or counted), 408, 400."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    body = SpooledBody()
    try:
        for chunk in _chunks(limit if declared is None else declared):
            body.write(chunk)
        if declared is not None and body.size < declared:
            raise _incomplete(f"Expected {declared} bytes, got {body.size}.")
        if body.size > limit:
            raise too_large(limit)
        yield body
    finally:
        body.close()


def _chunks(most: int) -> Iterator[bytes]:
    """The body in chunks, never asking for more than ``most + 1`` bytes (the one that proves it is over)."""
    stream, total = _body_input(), 0
    while total <= most:
        chunk = stream.read(min(READ_CHUNK, most + 1 - total))
        if not chunk:
            return
        total += len(chunk)
        yield chunk


# --- JSON bodies: small, in memory ----------------------------------------------


def json_body(limit: int = JSON_BODY_LIMIT) -> Any:
    """The request's JSON document (any JSON value); 413 over ``limit`` bytes, 400 if it is not JSON."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _json_too_large(limit)
    data = b"".join(_chunks(limit if declared is None else declared))
    if len(data) > limit:
        raise _json_too_large(limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than the parser's stack
        raise ApiError(400, "Invalid request body.", f"The body is not valid JSON: {_short(error)}") from None


def _json_too_large(limit: int) -> ApiError:
    return ApiError(413, "Request body too large.", f"JSON request bodies are at most {limit} bytes.")


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if text.endswith(".") else text + "."

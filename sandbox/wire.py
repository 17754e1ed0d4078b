"""Frames between a serving process and its sandbox processes.

A frame is a JSON header and a list of byte strings (blobs), and may carry
file descriptors (an upload's spooled file goes to the sandbox that way, never
its bytes). Nothing is unpickled: a sandbox that a hostile file took over can
lie in its answer, but the answer cannot run code in the serving process.

    4 bytes   header length (big-endian)
    header    JSON, with "blobs": [length, ...]
    blobs     their bytes, one after another
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, Sequence

# Nothing the sandbox sends is larger: a scan's message holds at most 8 MiB of diff text.
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_FDS = 4
_LENGTH = struct.Struct(">I")


class WireError(Exception):
    """The other side closed, or sent what is not a frame."""


def send_frame(
    sock: socket.socket, header: dict[str, Any], blobs: Sequence[bytes] = (), fds: Sequence[int] = ()
) -> None:
    payload = json.dumps({**header, "blobs": [len(blob) for blob in blobs]}).encode()
    head = _LENGTH.pack(len(payload)) + payload
    if fds:
        sent = socket.send_fds(sock, [head], list(fds))
        head = head[sent:]
    sock.sendall(head)
    for blob in blobs:
        sock.sendall(blob)


def recv_frame(
    sock: socket.socket, *, with_fds: bool = False, deadline: float | None = None
) -> tuple[dict[str, Any], list[bytes], list[int]]:
    """(header, blobs, fds); raises WireError on end of stream or a malformed frame,
    TimeoutError when the whole frame has not come by ``deadline`` (time.monotonic())."""
    fds: list[int] = []
    if with_fds:
        first, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, MAX_FDS)
        if not first:
            raise WireError("the other side closed")
        first += _recv_exactly(sock, _LENGTH.size - len(first), deadline)
    else:
        first = _recv_exactly(sock, _LENGTH.size, deadline)
    (length,) = _LENGTH.unpack(first)
    if length > MAX_FRAME_BYTES:
        raise WireError(f"a header of {length} bytes")
    try:
        header = json.loads(_recv_exactly(sock, length, deadline))
        sizes = header.pop("blobs")
        if not all(isinstance(size, int) and size >= 0 for size in sizes) or sum(sizes) > MAX_FRAME_BYTES:
            raise WireError(f"blobs of sizes {sizes!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise WireError(f"a malformed header: {error}") from None
    return header, [_recv_exactly(sock, size, deadline) for size in sizes], fds


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None = None) -> bytes:
    parts: list[bytes] = []
    missing = size
    while missing:
        if deadline is not None:
            sock.settimeout(max(0.0, deadline - time.monotonic()) or 1e-6)
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            raise WireError("the other side closed")
        parts.append(chunk)
        missing -= len(chunk)
    return b"".join(parts)

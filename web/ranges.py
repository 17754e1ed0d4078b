"""Range requests (RFC 9110 §14): which bytes of a download to send, and the headers that say so.

One range only. What the RFC lets a server ignore is ignored, and the whole
file goes out as a 200: several ranges (a multipart answer is rarely used and
costly), a malformed header, an invalid range (``5-2``), a unit other than
``bytes``, a ``HEAD`` (range handling is defined for ``GET`` only, §14.2), and
an ``If-Range`` that does not name the current representation. Only a range
that starts past the end, or the empty suffix ``-0``, is ``416``.

``If-None-Match`` is the caller's to check first: a matching ETag is ``304``
even with a range (§13.2.2).
"""

from __future__ import annotations

import re

from storage import ByteRange
from web.errors import ApiError

# RFC 9110 digits only: int() alone would also take "+1", "1_0", " 1 " and non-ASCII digits such as "٣".
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
# Positions this long are past the end of any file; int() of thousands of digits is slow, and past 4300 raises.
_MAX_DIGITS = 18
_BEYOND_ANY_FILE = 10**_MAX_DIGITS
# List syntax (RFC 9110 §5.6.1): optional spaces or tabs around each element, none inside one.
_OWS = " \t"


def requested_range(method: str, range_header: str | None, if_range: str | None, etag: str,
                    size: int) -> ByteRange | None:
    """The one range of the file to send, or None to send all of it; ApiError 416 when the range asked for
    starts past the end. ``etag`` is the file's strong ETag, quoted."""
    if method != "GET" or range_header is None or size == 0:
        return None
    if if_range is not None and if_range.strip(_OWS) != etag:
        return None  # another representation (or a date: we send no Last-Modified), weak tags never match
    return parse(range_header, size)


def parse(header: str, size: int) -> ByteRange | None:
    """A ``Range`` header's one range within a file of ``size`` (> 0) bytes; None to ignore it."""
    unit, equals, range_set = header.partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    specs = [spec.strip(_OWS) for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]  # empty list elements are allowed and mean nothing
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].partition("-")
    if not dash:
        return None
    if not first_text:  # a suffix: the last n bytes
        suffix = _position(last_text)
        if suffix is None:
            return None
        if suffix == 0:
            raise not_satisfiable(size)
        return ByteRange(max(size - suffix, 0), size - 1)
    first = _position(first_text)
    last = _position(last_text) if last_text else _BEYOND_ANY_FILE
    if first is None or last is None or last < first:
        return None  # invalid: a range to ignore, not one past the end
    if first >= size:
        raise not_satisfiable(size)
    return ByteRange(first, min(last, size - 1))


def _position(text: str) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    significant = text.lstrip("0") or "0"
    return _BEYOND_ANY_FILE if len(significant) > _MAX_DIGITS else int(significant)


def not_satisfiable(size: int) -> ApiError:
    return ApiError(416, "Range not satisfiable.", f"The file is {size} bytes long.",
                    headers={"Content-Range": f"bytes */{size}"}, code="range_not_satisfiable")


def range_headers(byte_range: ByteRange | None, size: int) -> tuple[int, dict[str, str]]:
    """The status and the length headers of a download sending ``byte_range`` (None: all ``size`` bytes)."""
    headers = {"Accept-Ranges": "bytes"}
    if byte_range is None:
        return 200, {**headers, "Content-Length": str(size)}
    return 206, {**headers, "Content-Length": str(byte_range.length),
                 "Content-Range": f"bytes {byte_range.first}-{byte_range.last}/{size}"}

"""Display names: taken from an upload's Content-Disposition, given back in a download's.

A name is only ever shown, never used as a path or key; still it is cleaned
so it cannot carry a path, a control character or a header break.
"""

from __future__ import annotations

import posixpath
import unicodedata
import urllib.parse

from werkzeug.http import parse_options_header

MAX_NAME_BYTES = 255


def name_from_content_disposition(header: str | None) -> str | None:
    """The sanitized display name in ``header`` (``filename*`` wins), or None."""
    if not header:
        return None
    _kind, options = parse_options_header(header)
    return sanitize(options.get("filename"))


def sanitize(name: str | None) -> str | None:
    if not name:
        return None
    name = name.replace("\\", "/")
    name = posixpath.basename(name)
    # Control and format characters (Cc, Cf: CR, LF, NUL, bidi overrides) go.
    name = "".join(char for char in name if unicodedata.category(char) not in ("Cc", "Cf"))
    name = name.strip()
    if name in ("", ".", ".."):
        return None
    return _truncate_utf8(name, MAX_NAME_BYTES)


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def content_disposition(kind: str, name: str | None) -> str:
    """``{kind}; filename="…"`` (``inline`` or ``attachment``) with an ASCII fallback and RFC 5987 form for
    the rest; ``kind`` alone for an unnamed file."""
    if not name:
        return kind
    fallback = "".join(char if 0x20 <= ord(char) < 0x7F and char not in '"\\' else "_" for char in name)
    header = f'{kind}; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"
    return header

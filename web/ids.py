"""Ids in URLs, query parameters and bodies: a UUID, or 400 with the caller's message."""

from __future__ import annotations

import uuid

from web.errors import ApiError


def parse_uuid(value: object, message: str) -> uuid.UUID:
    """``value`` as a UUID; 400 ``message`` (e.g. ``Invalid file ID.``) for anything else, a non-string too."""
    try:
        if not isinstance(value, str):
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(400, message, f"{value!r} is not a UUID.") from None

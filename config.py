"""Configuration: embedded defaults, then the environment, then explicit overrides.

Every setting the contract names is read here and nowhere else; the rest of
the code reads ``current_app.config``. A bad value stops start-up with a
message naming the variable, instead of failing on the first request.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Iterable, Mapping

DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": "sqlite:///var/chatfiles.db",
    "S3_BUCKET": None,
    "S3_ENDPOINT_URL": None,
    "S3_REGION": "us-east-1",
    "S3_PREFIX": "chat-files/",
    "VARIANTS_PREFIX": "chat-file-variants/",
    "LOCAL_STORAGE_ROOT": "var/objects",
    "MAX_FILE_SIZE": 10 * 1024 * 1024,
    # Upload bodies one worker process holds in memory at once (two at the
    # default limit); further uploads wait for room.
    "UPLOAD_MEMORY_BUDGET": 20 * 1024 * 1024,
    # Decoded pixels allowed per image (all frames of an animation together);
    # what a decode may cost in memory is MAX_DECODE_MEMORY's to bound.
    "MAX_IMAGE_PIXELS": 40_000_000,
    # Estimated decoder memory above which an image is refused (images.decode_memory_estimate).
    "MAX_DECODE_MEMORY": 256 * 1024 * 1024,
    # Seconds an upload waits for one of the worker's two decode slots before a 503.
    "DECODE_WAIT_TIMEOUT": 30,
    # Seconds without a byte of the request body before the request ends with 408.
    "BODY_READ_TIMEOUT": 20,
    "WORKSPACES_ROOT": "var/workspaces",
    "PROXY_HOPS": 0,
    # Other origins (the chat frontend's, "https://chat.example.com") allowed to
    # make cookie-authenticated unsafe requests and WebSocket upgrades.
    "ALLOWED_ORIGINS": "",
    # Seconds between WebSocket pings; a client missing a pong is disconnected.
    "WATCH_PING_INTERVAL": 25,
    # Open watch sockets per user per instance; one more is refused with 429.
    "WATCH_MAX_PER_USER": 16,
    # Files linked to one chat at most (upstream Coder's 50); a link past it is refused.
    "MAX_FILES_PER_CHAT": 50,
    "TOKEN_LIFETIME_DAYS": 90,
    # Seconds a worker trusts a key row it looked up (auth.TokenCache): a
    # deleted key is refused at most this long after, on every instance. 0: off.
    "TOKEN_CACHE_SECONDS": 5,
    "DATABASE_POOL_SIZE": 20,
    "LOG_LEVEL": "INFO",
    # Retention, applied by the purge command (jobs/purge.py); unset (None): kept forever. Seconds an upload
    # linked to no chat is kept (unset by default: a frontend that never links would lose every file).
    "UNLINKED_FILE_RETENTION": None,
    # Days after its last update an archived chat, and the files linked only to it, are kept.
    "ARCHIVED_CHAT_RETENTION_DAYS": None,
    # Bytes stored per organization (originals plus stored variants); None: no quota.
    "ORG_STORAGE_QUOTA": None,
}

INTEGER_SETTINGS = (
    "MAX_FILE_SIZE",
    "UPLOAD_MEMORY_BUDGET",
    "MAX_IMAGE_PIXELS",
    "MAX_DECODE_MEMORY",
    "DECODE_WAIT_TIMEOUT",
    "BODY_READ_TIMEOUT",
    "PROXY_HOPS",
    "TOKEN_LIFETIME_DAYS",
    "TOKEN_CACHE_SECONDS",
    "DATABASE_POOL_SIZE",
    "WATCH_PING_INTERVAL",
    "WATCH_MAX_PER_USER",
    "MAX_FILES_PER_CHAT",
)

# Integer settings where unset (None) means "off", each with the smallest and largest value it may take when
# set (the retentions' largest: any longer and "now minus it" leaves the calendar).
OPTIONAL_INTEGER_SETTINGS = {
    "UNLINKED_FILE_RETENTION": (0, 100 * 365 * 24 * 3600),
    "ARCHIVED_CHAT_RETENTION_DAYS": (0, 100 * 365),
    "ORG_STORAGE_QUOTA": (1, 2**63 - 1),  # a BIGINT column counts against it
}


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def load(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the effective settings as a dict."""
    settings = dict(DEFAULTS)
    for name in DEFAULTS:
        value = os.environ.get(name)
        if value is not None and value != "":
            settings[name] = value
    settings.update(overrides or {})
    return validate(settings)


def validate(settings: dict[str, Any]) -> dict[str, Any]:
    try:
        settings["ALLOWED_ORIGINS"] = parse_allowed_origins(settings["ALLOWED_ORIGINS"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for name in INTEGER_SETTINGS:
        try:
            settings[name] = int(settings[name])
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {settings[name]!r}.") from None
        if settings[name] < 0:
            raise ConfigError(f"{name} must not be negative, got {settings[name]}.")
    for name, (smallest, largest) in OPTIONAL_INTEGER_SETTINGS.items():
        settings[name] = _optional_integer(name, settings[name], smallest, largest)
    if settings["MAX_FILE_SIZE"] == 0:
        raise ConfigError("MAX_FILE_SIZE must be at least 1 byte.")
    if settings["BODY_READ_TIMEOUT"] == 0:
        raise ConfigError("BODY_READ_TIMEOUT must be at least 1 second.")
    url = settings["DATABASE_URL"]
    if not url.startswith(("sqlite:", "postgres://", "postgresql://", "postgresql+pool://", "postgres+pool://")):
        raise ConfigError(f"DATABASE_URL must be a sqlite:/// or postgresql:// URL, got {url!r}.")
    for name in ("S3_PREFIX", "VARIANTS_PREFIX"):
        prefix = settings[name] or ""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ConfigError(f"{name} must be a relative key prefix, got {prefix!r}.")
    if (settings["VARIANTS_PREFIX"] or "") == (settings["S3_PREFIX"] or ""):
        raise ConfigError("VARIANTS_PREFIX must differ from S3_PREFIX: variants live apart from originals.")
    return settings


def _optional_integer(name: str, value: object, smallest: int, largest: int) -> int | None:
    """An optional setting's value: None when unset (or empty), else an integer in [smallest, largest]."""
    if value is None or value == "":
        return None
    try:
        number = int(value)  # type: ignore[call-overload]  # a str from the environment, or an int override
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer or unset, got {value!r}.") from None
    if not smallest <= number <= largest:
        raise ConfigError(f"{name} must be between {smallest} and {largest}, or unset; got {number}.")
    return number


def parse_allowed_origins(value: str | Iterable[str] | None) -> frozenset[str]:
    """``ALLOWED_ORIGINS`` (comma-separated, or a list) as a frozenset of ``scheme://host[:port]``; ValueError."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    origins: set[str] = set()
    for item in (item.strip() for item in items):
        if not item:
            continue
        parts = _split_origin(item)
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username
                or parts.path not in ("", "/") or parts.query or parts.fragment):
            raise ValueError(f"ALLOWED_ORIGINS entries must look like https://chat.example.com[:port], got {item!r}.")
        origins.add(f"{parts.scheme}://{parts.netloc.lower()}")
    return frozenset(origins)


def _split_origin(item: str) -> urllib.parse.SplitResult | None:
    """``item``'s parts, or None when its port is not a number."""
    parts = urllib.parse.urlsplit(item)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return None
    return parts

"""Configuration: embedded defaults, then the environment, then explicit overrides.

Every setting the contract names is read here and nowhere else; the rest of
the code reads ``current_app.config``. A bad value stops start-up with a
message naming the variable, instead of failing on the first request.
"""

import os

DEFAULTS = {
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
    # Decoded pixels allowed per image (all frames of an animation together).
    # 40 MP of RGBA is 160 MB of decoder memory: the bound on a bomb's cost.
    "MAX_IMAGE_PIXELS": 40_000_000,
    "WORKSPACES_ROOT": "var/workspaces",
    "PROXY_HOPS": 0,
    # Seconds between WebSocket pings; a client missing a pong is disconnected.
    "WATCH_PING_INTERVAL": 25,
    "TOKEN_LIFETIME_DAYS": 90,
    "DATABASE_POOL_SIZE": 20,
    "LOG_LEVEL": "INFO",
}

INTEGER_SETTINGS = (
    "MAX_FILE_SIZE",
    "UPLOAD_MEMORY_BUDGET",
    "MAX_IMAGE_PIXELS",
    "PROXY_HOPS",
    "TOKEN_LIFETIME_DAYS",
    "DATABASE_POOL_SIZE",
    "WATCH_PING_INTERVAL",
)


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def load(overrides=None):
    """Return the effective settings as a dict."""
    settings = dict(DEFAULTS)
    for name in DEFAULTS:
        value = os.environ.get(name)
        if value is not None and value != "":
            settings[name] = value
    settings.update(overrides or {})
    return validate(settings)


def validate(settings):
    for name in INTEGER_SETTINGS:
        try:
            settings[name] = int(settings[name])
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {settings[name]!r}.") from None
        if settings[name] < 0:
            raise ConfigError(f"{name} must not be negative, got {settings[name]}.")
    if settings["MAX_FILE_SIZE"] == 0:
        raise ConfigError("MAX_FILE_SIZE must be at least 1 byte.")
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

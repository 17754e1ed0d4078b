"""Session tokens: issuing them, and finding the caller of a request.

A token is ``<id>-<secret>``. The id finds the row; only a SHA-256 of the
secret is stored (the secret is 128 random bits, so a slow hash adds nothing)
and it is compared in constant time.

Each worker process remembers a looked-up key row for TOKEN_CACHE_SECONDS
(default 5): most requests then make no token query. The secret and the
expiry are still checked on every request; what the cache delays is only
noticing that the row was deleted (a revoked key, a deleted user), by at
most that many seconds on every instance.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, ParamSpec, TypeVar

from flask import current_app, g, request

from models import ApiKey, User, utcnow
from web.errors import ApiError

TOKEN_HEADER = "Coder-Session-Token"
TOKEN_COOKIE = "coder_session_token"
TOKEN_QUERY = "coder_session_token"
ID_LENGTH = 10

P = ParamSpec("P")
R = TypeVar("R")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(user: User, lifetime_days: int) -> str:
    """Create an API key for ``user`` and return the token string (shown once)."""
    key_id = secrets.token_hex(ID_LENGTH // 2)
    secret = secrets.token_urlsafe(16)
    ApiKey.create(
        id=key_id,
        user=user,
        secret_hash=hash_secret(secret),
        expires_at=utcnow() + datetime.timedelta(days=lifetime_days),
    )
    return f"{key_id}-{secret}"


def _is_key_id(text: str) -> bool:
    # Checked before it reaches a query: PostgreSQL refuses a NUL in a string.
    return len(text) == ID_LENGTH and all(char in "0123456789abcdef" for char in text)


def token_from_request() -> str | None:
    return request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or request.args.get(TOKEN_QUERY)


@dataclass(frozen=True)
class CachedKey:
    secret_hash: str
    expires_at: datetime.datetime
    user: User
    fetched_at: float


class TokenCache:
    """Key rows by id, each for ``ttl`` seconds of ``clock``; only rows that exist are kept.

    Bounded: when full it starts again empty (a flood of distinct valid
    tokens costs queries, never memory). ``ttl`` 0 turns it off.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[str, CachedKey] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> CachedKey | None:
        entry = self._entries.get(key_id)
        if entry is None or self.clock() - entry.fetched_at >= self.ttl:
            return None
        return entry

    def put(self, key_id: str, secret_hash: str, expires_at: datetime.datetime, user: User) -> CachedKey:
        entry = CachedKey(secret_hash, expires_at, user, self.clock())
        if self.ttl > 0:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[key_id] = entry
        return entry


def token_cache() -> TokenCache:
    """This app's cache (per process); tests replace it with one on a fake clock."""
    cache: TokenCache | None = current_app.extensions.get("token_cache")
    if cache is None:
        cache = current_app.extensions["token_cache"] = TokenCache(current_app.config["TOKEN_CACHE_SECONDS"])
    return cache


def _key_for(key_id: str) -> CachedKey | None:
    cache = token_cache()
    entry = cache.get(key_id)
    if entry is None:
        key = ApiKey.select(ApiKey, User).join(User).where(ApiKey.id == key_id).first()
        if key is None:
            return None
        entry = cache.put(key_id, key.secret_hash, key.expires_at, key.user)
    return entry


def user_for_token(token: str | None) -> User | None:
    """The user a token belongs to, or None if it is malformed, unknown or expired."""
    key_id, sep, secret = (token or "").partition("-")
    if not sep or not _is_key_id(key_id) or not secret:
        return None
    key = _key_for(key_id)
    if key is None or key.expires_at <= utcnow():
        return None
    if not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
        return None
    return key.user


def authenticate() -> User:
    """Set ``g.user`` from the request's token, or raise 401."""
    user = user_for_token(token_from_request())
    if user is None:
        raise ApiError(
            401,
            "You must be logged in to do this.",
            f"Send a valid, unexpired session token in the {TOKEN_HEADER} header, "
            f"the {TOKEN_COOKIE} cookie or the {TOKEN_QUERY} query parameter.",
        )
    g.user = user
    return user


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        authenticate()
        return view(*args, **kwargs)

    return wrapped

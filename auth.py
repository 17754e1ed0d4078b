"""Session tokens: issuing them, and finding the caller of a request.

A token is ``<id>-<secret>``. The id finds the row; only a SHA-256 of the
secret is stored (the secret is 128 random bits, so a slow hash adds nothing)
and it is compared in constant time.
"""

import datetime
import functools
import hashlib
import hmac
import secrets

from flask import g, request

from errors import ApiError
from models import ApiKey, User, utcnow

TOKEN_HEADER = "Coder-Session-Token"
TOKEN_COOKIE = "coder_session_token"
TOKEN_QUERY = "coder_session_token"
ID_LENGTH = 10


def hash_secret(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(user, lifetime_days):
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


def _is_key_id(text):
    # Checked before it reaches a query: PostgreSQL refuses a NUL in a string.
    return len(text) == ID_LENGTH and all(char in "0123456789abcdef" for char in text)


def token_from_request():
    return request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or request.args.get(TOKEN_QUERY)


def user_for_token(token):
    """The user a token belongs to, or None if it is malformed, unknown or expired."""
    key_id, sep, secret = (token or "").partition("-")
    if not sep or not _is_key_id(key_id) or not secret:
        return None
    key = ApiKey.select(ApiKey, User).join(User).where(ApiKey.id == key_id).first()
    if key is None or key.expires_at <= utcnow():
        return None
    if not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
        return None
    return key.user


def authenticate():
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


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        authenticate()
        return view(*args, **kwargs)

    return wrapped

"""Cross-origin protection: what a page on another site could make the user's browser do.

The browser sends the session cookie with requests that any page starts,
so an unsafe request (POST, PUT, PATCH, DELETE) or a WebSocket upgrade that
is not authenticated by the ``Coder-Session-Token`` header (no page on
another origin can set it without a CORS preflight, never granted here) must
come from this service's own origin. Modelled on Go 1.25's
``net/http.CrossOriginProtection``:

1. ``Sec-Fetch-Site`` (every current browser sends it): ``same-origin`` or
   ``none`` (typed in, a bookmark) pass; anything else is refused.
2. Without it (older browsers): an ``Origin`` whose host and port are not
   the request's own ``Host`` is refused. Schemes are not compared: TLS
   often ends at the proxy. ``Host`` is the forwarded one when PROXY_HOPS
   trusts ``X-Forwarded-Host`` (ProxyFix has already put it in place).
3. Requests with neither header (curl, SDKs, other services) pass.

An origin in ``ALLOWED_ORIGINS`` (the chat frontend's) passes whatever
``Sec-Fetch-Site`` says.
"""

from __future__ import annotations

import urllib.parse
from typing import Collection, Mapping

from flask import Flask, current_app, request
from werkzeug.datastructures import Headers

from web.auth import TOKEN_HEADER
from web.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def init_app(app: Flask) -> None:
    app.before_request(refuse_cross_origin)


def refuse_cross_origin() -> None:
    """Raise 403 for a cross-origin unsafe request or WebSocket upgrade; see the module docstring."""
    if _exempt(request.method, request.headers):
        return  # most requests: no Host to parse
    problem = cross_origin_problem(
        method=request.method,
        headers=request.headers,
        host=request.host,
        allowed=current_app.config["ALLOWED_ORIGINS"],
    )
    if problem:
        raise ApiError(403, "Cross-origin request refused.", problem, code="cross_origin")


def cross_origin_problem(method: str, headers: Headers | Mapping[str, str], host: str,
                         allowed: Collection[str]) -> str | None:
    """Why the request must be refused, or None. Pure, for the test table."""
    if _exempt(method, headers):
        return None
    origin = headers.get("Origin")
    if origin is not None and origin.lower() in allowed:
        return None
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        if site in ("same-origin", "none"):
            return None
        return f"Sec-Fetch-Site is {site!r}: the request comes from another site's page."
    if origin is None or _same_host(origin, host):
        return None
    return f"Origin {origin!r} is not this service ({host!r}) nor one of ALLOWED_ORIGINS."


def _exempt(method: str, headers: Headers | Mapping[str, str]) -> bool:
    """Safe requests that are not upgrades, and requests carrying the token header, are not checked."""
    upgrade = headers.get("Upgrade", "").lower() == "websocket"
    return (method in SAFE_METHODS and not upgrade) or bool(headers.get(TOKEN_HEADER))


def _same_host(origin: str, host: str) -> bool:
    """Host and port equal, a port that is the default for the Origin's scheme counting as none."""
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return False  # "null" (a sandboxed page, a file), or not an origin at all
    default = DEFAULT_PORTS[parts.scheme]
    ours, theirs = _host_port(host, default), _host_port(parts.netloc, default)
    return ours is not None and ours == theirs


def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    parts = urllib.parse.urlsplit(f"//{netloc}")
    try:
        port = parts.port or default_port
    except ValueError:
        return None
    return (parts.hostname or "").lower(), port

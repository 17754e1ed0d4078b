"""Upstream Coder's other spellings of the chats routes, answered by the same views.

Every rule under ``/api/v2/chats`` is also served under
``/api/experimental/chats`` (upstream's current prefix), and the git watch
also at ``…/chats/{chat}/stream/git`` (its current name), under both. The
aliases are made from the URL map itself once every blueprint is registered,
so a route added later gets its aliases without a line of its own. Each alias
keeps its rule's endpoint, methods and WebSocket flag: login, the
cross-origin check and the views' own logic are the same objects, and the
watch's two rules (upgrade and plain request) stay two.
"""

from __future__ import annotations

import copy as copy_module
from typing import Any

from flask import Flask
from werkzeug.routing import Rule

PREFIX = "/api/v2/chats"
UPSTREAM_PREFIXES = (PREFIX, "/api/experimental/chats")
WATCH_SUFFIX = "/git/watch"
STREAM_SUFFIX = "/stream/git"


def alias_paths(path: str) -> list[str]:
    """The other paths that serve ``path`` (a Flask rule or an OpenAPI path); none outside the chats routes."""
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return []
    rest = path[len(PREFIX):]
    spellings = [rest]
    if rest.endswith(WATCH_SUFFIX):
        spellings.append(rest[: -len(WATCH_SUFFIX)] + STREAM_SUFFIX)
    return [prefix + spelling for prefix in UPSTREAM_PREFIXES for spelling in spellings
            if prefix + spelling != path]


def init_app(app: Flask) -> None:
    """Add every alias; call it after the last blueprint is registered."""
    for rule in list(app.url_map.iter_rules()):
        for path in alias_paths(rule.rule):
            alias = Rule(path, endpoint=rule.endpoint, methods=rule.methods, websocket=rule.websocket,
                         defaults=rule.defaults, strict_slashes=rule.strict_slashes)
            # Flask answers OPTIONS itself for rules it made so; the alias does as its rule does.
            alias.provide_automatic_options = getattr(rule, "provide_automatic_options", False)  # type: ignore[attr-defined]
            app.url_map.add(alias)


def documented(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with each chats path's aliases listed as copies of it, in place of any listed before.

    ``scripts/openapi-aliases`` writes this back to docs/openapi.json after a chats path is added or changed;
    tests/test_openapi.py checks that nothing is left to write.
    """
    paths = {path: item for path, item in document["paths"].items() if "x-alias-of" not in item}
    listed: dict[str, Any] = {}
    for path, item in paths.items():
        listed[path] = item
        for alias in alias_paths(path):
            copy = {"x-alias-of": path, **copy_module.deepcopy(item)}
            suffix = ("Experimental" if alias.startswith(UPSTREAM_PREFIXES[1]) else "") + (
                "Stream" if alias.endswith(STREAM_SUFFIX) else "")
            for operation in copy.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] += suffix
                    operation["summary"] = f"{operation['summary']} (upstream path)"
                    operation["description"] = (f"The same as `{path}` (upstream Coder's spelling). "
                                                + operation.get("description", "")).rstrip()
            listed[alias] = copy
    return {**document, "paths": listed}

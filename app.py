"""The application factory."""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

import cli
import config
import models
import storage
from attachments import budget
from blueprints import chats, files, git_watch, health, openapi, organizations
from ops import observability
from web import aliases, bodies, errors, origins


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with an object's keys in the order the view built it (Flask's own sorts them)."""

    sort_keys = False


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.update(config.load(overrides))
    app.json = JSONProvider(app)
    # Innermost middleware: every body read through it, its drain counted in the request's log line.
    bodies.init_app(app)
    # First: JSON logging for everything after it; its middleware must end up inside ProxyFix.
    observability.init_app(app)

    models.init_app(app)
    storage.init_app(app)
    budget.init_app(app)  # this worker's uploads share it
    errors.init_app(app)
    origins.init_app(app)  # before every blueprint's own hooks (the watch route authenticates in one)
    cli.init_app(app)
    for blueprint in (files.bp, chats.bp, organizations.bp, health.bp, openapi.bp):
        app.register_blueprint(blueprint)
    git_watch.init_app(app)
    aliases.init_app(app)  # after every route: each /api/v2/chats… rule also under upstream's spellings

    hops = app.config["PROXY_HOPS"]
    if hops:
        # Flask's documented way to add WSGI middleware, though its class types wsgi_app as a method.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
    return app

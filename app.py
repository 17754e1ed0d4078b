"""The application factory."""

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import cli
import config
import models
import storage
from blueprints import chats, files, git_watch, health, openapi
from ops import observability
from web import bodies, errors, origins


def create_app(overrides=None):
    app = Flask(__name__, static_folder=None)
    app.config.update(config.load(overrides))
    app.json.sort_keys = False
    # Innermost middleware: every body read through it, its drain counted in the request's log line.
    bodies.init_app(app)
    # First: JSON logging for everything after it; its middleware must end up inside ProxyFix.
    observability.init_app(app)

    models.init_app(app)
    storage.init_app(app)
    errors.init_app(app)
    origins.init_app(app)  # before every blueprint's own hooks (the watch route authenticates in one)
    cli.init_app(app)
    for blueprint in (files.bp, chats.bp, health.bp, openapi.bp):
        app.register_blueprint(blueprint)
    git_watch.init_app(app)

    hops = app.config["PROXY_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
    return app

"""Liveness and readiness for the load balancer; no token needed."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from peewee import PeeweeException

import migrations
from storage import StorageError, get_storage

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    checks = (("database", _database_error()), ("storage", _storage_error()))
    failures = {name: error for name, error in checks if error}
    if failures:
        names = " and ".join(failures)
        detail = "; ".join(f"{name}: {error}" for name, error in failures.items())
        return jsonify(message=f"Not ready: {names} unreachable.", detail=detail), 503
    return jsonify(status="ok")


def _database_error() -> str | None:
    try:
        version = migrations.current_version()
    except PeeweeException as error:
        log.warning("readiness: database: %s", error)
        return type(error).__name__
    if version != migrations.LATEST:
        # Reachable but not migrated: this code would fail on it.
        return f"schema version {version}, this code needs {migrations.LATEST}; run init-db"
    return None


def _storage_error() -> str | None:
    try:
        get_storage().check()
    except StorageError as error:
        log.warning("readiness: storage: %s", error)
        return str(error)
    return None

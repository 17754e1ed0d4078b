"""Liveness and readiness for the load balancer; no token needed."""

import logging

from flask import Blueprint, jsonify
from peewee import PeeweeException

import migrations
from storage import StorageError, get_storage

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    failures = {name: error for name, error in (("database", _database_error()), ("storage", _storage_error())) if error}
    if failures:
        names = " and ".join(failures)
        detail = "; ".join(f"{name}: {error}" for name, error in failures.items())
        return jsonify(message=f"Not ready: {names} unreachable.", detail=detail), 503
    return jsonify(status="ok")


def _database_error():
    try:
        version = migrations.current_version()
    except PeeweeException as error:
        log.warning("readiness: database: %s", error)
        return type(error).__name__
    if version != migrations.LATEST:
        # Reachable but not migrated: this code would fail on it.
        return f"schema version {version}, this code needs {migrations.LATEST}; run init-db"
    return None


def _storage_error():
    try:
        get_storage().check()
    except StorageError as error:
        log.warning("readiness: storage: %s", error)
        return str(error)
    return None

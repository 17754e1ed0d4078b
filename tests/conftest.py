"""Shared fixtures: an app on every database and storage backend, a user, a client.

``app`` is parametrised over SQLite and a real PostgreSQL server, and over the
local directory store and moto's standalone S3 server reached over HTTP.
Tests that only care about one axis use ``sqlite_app`` or ask for a backend
by marking themselves; the servers start once per session, only when needed.
"""

import pytest

import cli
import migrations
import models
from app import create_app

pytest_plugins = ["tests.fixtures_servers", "tests.fixtures_edge"]

DATABASES = ["sqlite", "postgres"]
STORAGES = ["local", "s3"]


@pytest.fixture(params=DATABASES)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chatfiles.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=STORAGES)
def storage_config(request, tmp_path):
    if request.param == "local":
        return {"S3_BUCKET": None, "LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}
    endpoint_url, bucket = request.getfixturevalue("s3_bucket")
    return {"S3_BUCKET": bucket, "S3_ENDPOINT_URL": endpoint_url}


def make_app(database_url, storage_config, tmp_path, **overrides):
    settings = {
        "DATABASE_URL": database_url,
        "WORKSPACES_ROOT": str(tmp_path / "workspaces"),
        "TESTING": True,
        **storage_config,
        **overrides,
    }
    app = create_app(settings)
    migrations.upgrade()
    return app


@pytest.fixture
def app(database_url, storage_config, tmp_path):
    app = make_app(database_url, storage_config, tmp_path)
    yield app
    models.close_all_connections()


@pytest.fixture
def sqlite_app(tmp_path):
    """For behaviour that does not depend on the backends."""
    app = make_app(f"sqlite:///{tmp_path}/chatfiles.db", {"LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}, tmp_path)
    yield app
    models.close_all_connections()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def _create_user(app, name, org):
    with app.app_context(), models.db.connection_context():
        return cli.create_user(name, org, lifetime_days=1)


@pytest.fixture
def user(app):
    """A user in organization "acme": {"user_id", "organization_id", "token"}."""
    return _create_user(app, "alice", "acme")


@pytest.fixture
def other_user(app):
    """A second user, in another organization."""
    return _create_user(app, "bob", "globex")


@pytest.fixture
def auth(user):
    return {"Coder-Session-Token": user["token"]}

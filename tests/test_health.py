"""/healthz and /readyz, without a token."""

import peewee

import models
from storage import StorageError


def test_healthz_needs_no_token(sqlite_app):
    response = sqlite_app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_ok_when_database_and_storage_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json


def test_readyz_names_storage_when_it_fails(app, client, monkeypatch):
    def broken():
        raise StorageError("connection refused")

    monkeypatch.setattr(app.extensions["storage"], "check", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "storage" in response.json["message"]
    assert "database" not in response.json["message"]


def test_readyz_names_database_when_it_fails(client, monkeypatch):
    def broken(*args, **kwargs):
        raise peewee.OperationalError("could not connect to server")

    monkeypatch.setattr(models.db.obj, "execute_sql", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "database" in response.json["message"]
    assert "storage" not in response.json["message"]


def test_readyz_names_database_when_schema_is_not_migrated(client, app):
    import models

    # Without its version table the database reads as the first release's schema.
    with app.app_context(), models.db.connection_context():
        models.db.execute_sql("DROP TABLE schema_version")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "database" in response.json["message"]
    assert "init-db" in response.json["detail"]

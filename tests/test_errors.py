"""Every failure answers the JSON error shape, never HTML or a traceback."""

import pytest

from tests.test_files import assert_error


def test_unknown_route_is_json_404(sqlite_app):
    response = sqlite_app.test_client().get("/nope")
    assert_error(response, 404, "Not Found.")


def test_wrong_method_is_json_405_with_allow(sqlite_app):
    response = sqlite_app.test_client().delete("/api/v2/chats/files")
    assert_error(response, 405, "Method Not Allowed.")
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_bare_json_500_without_traceback(sqlite_app):
    @sqlite_app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    sqlite_app.config["PROPAGATE_EXCEPTIONS"] = False
    response = sqlite_app.test_client().get("/boom")
    assert_error(response, 500, "Internal server error.")
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/api/v2/chats/files/x", "/api/v2/chats/files"])
def test_error_bodies_are_json_objects_with_a_message(sqlite_app, path):
    response = sqlite_app.test_client().get(path)
    assert response.is_json
    assert isinstance(response.json["message"], str) and response.json["message"]


def test_database_outage_on_other_routes_is_json_503(client, auth, monkeypatch):
    import peewee

    import models

    def unreachable(*args, **kwargs):
        raise peewee.OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr(models.db.obj, "execute_sql", unreachable)
    response = client.get("/api/v2/chats", headers=auth)
    assert_error(response, 503, "The database is unavailable.")
    assert response.headers["Retry-After"] == "5"

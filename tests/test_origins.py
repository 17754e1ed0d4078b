"""Cross-origin protection: a table like Go's csrf_test.go, then through the app."""

import pytest

import config
from config import parse_allowed_origins
from tests.conftest import _create_user, make_app
from tests.single_backend import database_url, storage_config  # noqa: F401 (fixtures)
from tests.test_files import assert_error
from web.origins import cross_origin_problem

HOST = "files.example.com"
ALLOWED = parse_allowed_origins("https://chat.example.com, http://localhost:3000")
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}
UPGRADE_HEADERS = {**UPGRADE, "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
OK, REFUSED = "ok", "refused"

TABLE = [
    # (name, method, headers, expected)
    ("same-origin", "POST", {"Sec-Fetch-Site": "same-origin"}, OK),
    ("none (typed in, bookmark)", "POST", {"Sec-Fetch-Site": "none"}, OK),
    ("cross-site", "POST", {"Sec-Fetch-Site": "cross-site"}, REFUSED),
    ("same-site (a sibling subdomain)", "POST", {"Sec-Fetch-Site": "same-site"}, REFUSED),
    ("unknown Sec-Fetch-Site value", "POST", {"Sec-Fetch-Site": "whatever"}, REFUSED),
    ("Sec-Fetch-Site wins over a matching Origin", "POST",
     {"Sec-Fetch-Site": "cross-site", "Origin": f"https://{HOST}"}, REFUSED),
    ("same-origin wins over a foreign Origin", "POST",
     {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"}, OK),
    ("no headers (curl, SDKs)", "POST", {}, OK),
    ("old browser, Origin matches Host", "POST", {"Origin": f"https://{HOST}"}, OK),
    ("old browser, Origin matches Host, scheme differs", "POST", {"Origin": f"http://{HOST}"}, OK),
    ("old browser, foreign Origin", "POST", {"Origin": "https://evil.example"}, REFUSED),
    ("old browser, Origin with another port", "POST", {"Origin": f"https://{HOST}:8443"}, REFUSED),
    ("old browser, Origin with the scheme's default port", "POST", {"Origin": f"https://{HOST}:443"}, OK),
    ("old browser, Origin null", "POST", {"Origin": "null"}, REFUSED),
    ("old browser, Origin a suffix of Host", "POST", {"Origin": "https://example.com"}, REFUSED),
    ("allowed origin, cross-site", "POST", {"Sec-Fetch-Site": "cross-site", "Origin": "https://chat.example.com"}, OK),
    ("allowed origin, any case", "POST", {"Sec-Fetch-Site": "cross-site", "Origin": "HTTPS://Chat.Example.com"}, OK),
    ("allowed origin, old browser", "POST", {"Origin": "http://localhost:3000"}, OK),
    ("allowed origin's host on another scheme is not that origin", "POST",
     {"Sec-Fetch-Site": "cross-site", "Origin": "http://chat.example.com"}, REFUSED),
    ("allowed origin on another port", "POST", {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost:3001"},
     REFUSED),
    ("header token is exempt", "POST", {"Sec-Fetch-Site": "cross-site", "Coder-Session-Token": "x"}, OK),
    ("header token exempt, old browser", "POST", {"Origin": "https://evil.example", "Coder-Session-Token": "x"}, OK),
    ("GET is safe", "GET", {"Sec-Fetch-Site": "cross-site"}, OK),
    ("HEAD is safe", "HEAD", {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, OK),
    ("OPTIONS is safe", "OPTIONS", {"Sec-Fetch-Site": "cross-site"}, OK),
    ("PUT", "PUT", {"Sec-Fetch-Site": "cross-site"}, REFUSED),
    ("PATCH", "PATCH", {"Origin": "https://evil.example"}, REFUSED),
    ("DELETE", "DELETE", {"Sec-Fetch-Site": "cross-site"}, REFUSED),
    ("WebSocket upgrade, cross-site", "GET", {**UPGRADE, "Sec-Fetch-Site": "cross-site"}, REFUSED),
    ("WebSocket upgrade, foreign Origin", "GET", {**UPGRADE, "Origin": "https://evil.example"}, REFUSED),
    ("WebSocket upgrade, same origin", "GET", {**UPGRADE, "Origin": f"https://{HOST}"}, OK),
    ("WebSocket upgrade, header token", "GET", {**UPGRADE, "Sec-Fetch-Site": "cross-site", "Coder-Session-Token": "x"},
     OK),
]


@pytest.mark.parametrize(("method", "headers", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_cross_origin_table(method, headers, expected):
    problem = cross_origin_problem(method, headers, HOST, ALLOWED)
    assert (REFUSED if problem else OK) == expected, problem


@pytest.mark.parametrize("host", [f"{HOST}:443", HOST.upper()])
def test_host_with_default_port_or_other_case_is_the_same_host(host):
    assert cross_origin_problem("POST", {"Origin": f"https://{HOST}"}, host, ALLOWED) is None


@pytest.mark.parametrize("value", ["chat.example.com", "ftp://x", "https://x/path", "https://x?q", "https://u@x",
                                   "https://x:port", "https://"])
def test_bad_allowed_origins_stop_start_up(value, monkeypatch):
    monkeypatch.setenv("ALLOWED_ORIGINS", value)
    with pytest.raises(config.ConfigError, match="ALLOWED_ORIGINS"):
        config.load()


def test_allowed_origins_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALLOWED_ORIGINS", " https://Chat.example.com ,http://localhost:3000,")
    assert config.load()["ALLOWED_ORIGINS"] == {"https://chat.example.com", "http://localhost:3000"}


# Through the app: the cookie is what a foreign page's request carries.


@pytest.fixture
def cookie_client(client, user):
    client.set_cookie("coder_session_token", user["token"])
    return client


def test_cookie_post_from_another_site_is_refused(cookie_client):
    response = cookie_client.post("/api/v2/chats", json={"title": "x"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(response, 403)
    assert response.json["message"] == "Cross-origin request refused."


def test_cookie_post_from_an_old_browser_on_another_origin_is_refused(cookie_client):
    response = cookie_client.post("/api/v2/chats", json={"title": "x"}, headers={"Origin": "https://evil.example"})
    assert_error(response, 403)


def test_cookie_post_from_the_same_origin_is_served(cookie_client):
    headers = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert cookie_client.post("/api/v2/chats", json={"title": "x"}, headers=headers).status_code == 201


def test_cross_site_upload_with_the_cookie_is_refused(cookie_client, user):
    response = cookie_client.post(f"/api/v2/chats/files?organization={user['organization_id']}", data=b"x",
                                  headers={"Content-Type": "image/png", "Sec-Fetch-Site": "cross-site"})
    assert_error(response, 403)


def test_header_token_post_from_another_site_is_served(client, auth):
    headers = {**auth, "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    assert client.post("/api/v2/chats", json={"title": "x"}, headers=headers).status_code == 201


def test_cross_site_get_with_the_cookie_is_served(cookie_client):
    assert cookie_client.get("/api/v2/chats", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_watch_upgrade_from_another_site_is_refused(cookie_client):
    response = cookie_client.get(f"/api/v2/chats/{'0' * 32}/git/watch",
                                 headers={**UPGRADE_HEADERS, "Origin": "https://evil.example"})
    assert_error(response, 403)


def test_allowed_origin_may_post_with_the_cookie(tmp_path, database_url, storage_config):
    app = make_app(database_url, storage_config, tmp_path, ALLOWED_ORIGINS="https://chat.example.com")
    client = app.test_client()
    client.set_cookie("coder_session_token", _create_user(app, "carol", "acme")["token"])
    headers = {"Sec-Fetch-Site": "cross-site", "Origin": "https://chat.example.com"}
    assert client.post("/api/v2/chats", json={"title": "x"}, headers=headers).status_code == 201


@pytest.mark.parametrize(("hops", "status"), [(1, 201), (0, 403)])
def test_forwarded_host_counts_only_when_trusted(tmp_path, database_url, storage_config, hops, status):
    app = make_app(database_url, storage_config, tmp_path, PROXY_HOPS=hops)
    client = app.test_client()
    client.set_cookie("coder_session_token", _create_user(app, "carol", "acme")["token"])
    headers = {"Origin": "https://chat.example.com", "X-Forwarded-Host": "chat.example.com",
               "X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.1"}
    assert client.post("/api/v2/chats", json={"title": "x"}, headers=headers).status_code == status

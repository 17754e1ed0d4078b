"""Chats: creation with workspace checks, listing, archive and unarchive."""

import os
import uuid

import pytest

from tests.concurrency import run_at_once
from tests.test_files import assert_error

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)


def create_chat(client, auth, **body):
    return client.post("/api/v2/chats", json=body, headers=auth)


@pytest.fixture
def chat(client, auth):
    return create_chat(client, auth, title="First").json


def test_create_chat_returns_the_chat(client, auth, user):
    response = create_chat(client, auth, title="Hello", workspace="proj/one")
    assert response.status_code == 201
    chat = response.json
    assert set(chat) == {"id", "owner_id", "title", "archived", "workspace", "created_at", "updated_at", "files"}
    assert chat["files"] == []
    assert chat["owner_id"] == user["user_id"]
    assert (chat["title"], chat["archived"], chat["workspace"]) == ("Hello", False, "proj/one")
    assert chat["created_at"].endswith("Z")
    assert client.get(f"/api/v2/chats/{chat['id']}", headers=auth).json == chat


def test_workspace_is_optional(client, auth):
    assert create_chat(client, auth, title="x").json["workspace"] is None


@pytest.mark.parametrize(
    "workspace",
    ["../outside", "a/../../b", "/etc", "", ".", "a\\..\\b", 5],
)
def test_workspace_escaping_the_root_is_400(client, auth, workspace):
    response = create_chat(client, auth, title="x", workspace=workspace)
    assert_error(response, 400, "Invalid workspace.")
    assert response.json["validations"][0]["field"] == "workspace"


def test_workspace_symlink_pointing_out_is_400(client, auth, user, tmp_path):
    os.symlink(tmp_path, os.path.join(user["workspaces_dir"], "escape"))
    assert_error(create_chat(client, auth, title="x", workspace="escape"), 400, "Invalid workspace.")
    assert_error(create_chat(client, auth, title="x", workspace="escape/sub"), 400, "Invalid workspace.")


def test_workspace_symlink_inside_the_owners_directory_is_fine(client, auth, user):
    mine = user["workspaces_dir"]
    os.makedirs(os.path.join(mine, "real"))
    os.symlink(os.path.join(mine, "real"), os.path.join(mine, "alias"))
    assert create_chat(client, auth, title="x", workspace="alias").status_code == 201


def test_another_users_workspace_cannot_be_named_in_any_spelling(client, auth, user, other_user):
    """Workspaces are relative to the owner's directory: bob's is out of alice's reach."""
    bobs = os.path.join(other_user["workspaces_dir"], "project")
    os.makedirs(bobs)
    mine = user["workspaces_dir"]
    os.symlink(bobs, os.path.join(mine, "to-bob"))
    os.symlink(other_user["workspaces_dir"], os.path.join(mine, "to-bobs-dir"))
    spellings = [
        f"../{other_user['user_id']}/project",
        f"./../{other_user['user_id']}/project",
        bobs,
        f"//{bobs}",
        "to-bob",
        "to-bobs-dir/project",
    ]
    for spelling in spellings:
        assert_error(create_chat(client, auth, title="x", workspace=spelling), 400, "Invalid workspace.")
    # The same relative path names alice's own directory, never bob's.
    assert create_chat(client, auth, title="x", workspace="project").status_code == 201


def test_a_users_directory_that_is_a_symlink_is_refused(app, client, auth, user, other_user):
    os.rmdir(user["workspaces_dir"])
    os.symlink(other_user["workspaces_dir"], user["workspaces_dir"])
    assert_error(create_chat(client, auth, title="x", workspace="project"), 400, "Invalid workspace.")


@pytest.mark.parametrize("body", [None, [], "text", {"title": 5}])
def test_bad_body_is_400_json(client, auth, body):
    response = client.post("/api/v2/chats", data="{not json" if body is None else None, json=body, headers=auth,
                           content_type="application/json")
    assert_error(response, 400)


def test_list_is_newest_first_and_filters_by_archived(client, auth):
    ids = [create_chat(client, auth, title=str(n)).json["id"] for n in range(3)]
    assert client.post(f"/api/v2/chats/{ids[1]}/archive", headers=auth).status_code == 204
    assert [c["id"] for c in client.get("/api/v2/chats", headers=auth).json] == ids[::-1]
    assert [c["id"] for c in client.get("/api/v2/chats?archived=true", headers=auth).json] == [ids[1]]
    assert [c["id"] for c in client.get("/api/v2/chats?archived=false", headers=auth).json] == [ids[2], ids[0]]
    assert_error(client.get("/api/v2/chats?archived=maybe", headers=auth), 400)


def test_list_shows_only_the_callers_chats(client, auth, other_user):
    create_chat(client, auth, title="mine")
    assert client.get("/api/v2/chats", headers={"Coder-Session-Token": other_user["token"]}).json == []


def test_get_chat_bad_id_unknown_and_foreign(client, auth, other_user, chat):
    assert_error(client.get("/api/v2/chats/nope", headers=auth), 400, "Invalid chat ID.")
    assert_error(client.get(f"/api/v2/chats/{uuid.uuid4()}", headers=auth), 404)
    assert_error(client.get(f"/api/v2/chats/{chat['id']}", headers={"Coder-Session-Token": other_user["token"]}), 404)


def test_chats_need_a_token(client, chat):
    assert_error(client.get("/api/v2/chats"), 401)
    assert_error(client.post(f"/api/v2/chats/{chat['id']}/archive"), 401)


def test_archive_then_unarchive(client, auth, chat):
    url = f"/api/v2/chats/{chat['id']}"
    response = client.post(f"{url}/archive", headers=auth)
    assert response.status_code == 204 and response.data == b""
    assert client.get(url, headers=auth).json["archived"] is True
    assert_error(client.post(f"{url}/archive", headers=auth), 400, "Chat is already archived.")
    assert client.post(f"{url}/unarchive", headers=auth).status_code == 204
    assert client.get(url, headers=auth).json["archived"] is False
    assert_error(client.post(f"{url}/unarchive", headers=auth), 400, "Chat is not archived.")


def test_archive_updates_updated_at(client, auth, chat):
    client.post(f"/api/v2/chats/{chat['id']}/archive", headers=auth)
    assert client.get(f"/api/v2/chats/{chat['id']}", headers=auth).json["updated_at"] >= chat["updated_at"]


@pytest.mark.parametrize("action", ["archive", "unarchive"])
def test_archive_bad_id_unknown_and_foreign(client, auth, other_user, chat, action):
    assert_error(client.post(f"/api/v2/chats/nope/{action}", headers=auth), 400)
    assert_error(client.post(f"/api/v2/chats/{uuid.uuid4()}/{action}", headers=auth), 404)
    foreign = {"Coder-Session-Token": other_user["token"]}
    assert_error(client.post(f"/api/v2/chats/{chat['id']}/{action}", headers=foreign), 404)


def test_ten_concurrent_archives_give_one_204_and_nine_400(app, auth, chat):
    def archive():
        return app.test_client().post(f"/api/v2/chats/{chat['id']}/archive", headers=auth).status_code

    assert sorted(run_at_once(archive, 10)) == [204] + [400] * 9


# PATCH: upstream Coder's way to archive and rename.


def patch(client, auth, chat_id, body):
    return client.patch(f"/api/v2/chats/{chat_id}", json=body, headers=auth)


def test_patch_archives_unarchives_and_renames(client, auth, chat):
    url = f"/api/v2/chats/{chat['id']}"
    response = patch(client, auth, chat["id"], {"archived": True})
    assert response.status_code == 204 and response.data == b""
    archived = client.get(url, headers=auth).json
    assert archived["archived"] is True and archived["updated_at"] >= chat["updated_at"]
    # The value it already has: 204 here (the POST routes keep their 400).
    assert patch(client, auth, chat["id"], {"archived": True}).status_code == 204
    assert patch(client, auth, chat["id"], {"archived": False, "title": "Renamed"}).status_code == 204
    assert {k: client.get(url, headers=auth).json[k] for k in ("archived", "title")} == {
        "archived": False, "title": "Renamed"}
    assert patch(client, auth, chat["id"], {"title": ""}).status_code == 204
    assert client.get(url, headers=auth).json["title"] == ""


@pytest.mark.parametrize("body, field", [
    ({}, "body"),
    ({"workspace": "x"}, "body"),
    ({"archived": "true"}, "archived"),
    ({"archived": None}, "archived"),
    ({"archived": 1}, "archived"),
    ({"title": 5}, "title"),
    ({"title": None}, "title"),
    ({"title": "x" * 1001}, "title"),
    ({"title": "a\0b"}, "title"),
    ({"archived": True, "title": 5}, "title"),
])
def test_patch_with_nothing_to_change_or_a_wrong_type_is_400_and_changes_nothing(client, auth, chat, body, field):
    response = patch(client, auth, chat["id"], body)
    assert_error(response, 400)
    assert response.json["validations"][0]["field"] == field
    assert client.get(f"/api/v2/chats/{chat['id']}", headers=auth).json == chat


def test_patch_bad_id_unknown_foreign_and_no_token(client, auth, other_user, chat):
    assert_error(patch(client, auth, "nope", {"archived": True}), 400, "Invalid chat ID.")
    assert_error(patch(client, auth, str(uuid.uuid4()), {"archived": True}), 404)
    assert_error(patch(client, {"Coder-Session-Token": other_user["token"]}, chat["id"], {"archived": True}), 404)
    assert_error(client.patch(f"/api/v2/chats/{chat['id']}", json={"archived": True}), 401)
    assert client.get(f"/api/v2/chats/{chat['id']}", headers=auth).json["archived"] is False


def test_patch_archive_announces_like_the_post_route(client, auth, chat, monkeypatch):
    """The announcement (NOTIFY on PostgreSQL) is what closes watch sockets on every instance."""
    announced = []
    monkeypatch.setattr("gitwatch.archives.announce", announced.append)
    patch(client, auth, chat["id"], {"archived": True})
    patch(client, auth, chat["id"], {"archived": True})  # no change: nothing to announce
    patch(client, auth, chat["id"], {"archived": False})
    assert announced == [uuid.UUID(chat["id"])]


# Upstream's spellings: /api/experimental/chats… and the watch at …/stream/git.


def test_every_chats_rule_has_its_aliases_with_the_same_endpoint_methods_and_websocket_flag(app):
    rules = {(rule.rule, rule.endpoint): rule for rule in app.url_map.iter_rules()}
    for (path, endpoint), rule in list(rules.items()):
        if not path.startswith("/api/v2/chats"):
            continue
        expected = [path.replace("/api/v2/", "/api/experimental/", 1)]
        if path.endswith("/git/watch"):
            expected += [p.replace("/git/watch", "/stream/git") for p in (path, expected[0])]
        for alias in expected:
            twin = rules[(alias, endpoint)]
            assert (twin.methods, twin.websocket) == (rule.methods, rule.websocket), alias


def test_the_experimental_prefix_behaves_identically(client, auth, user):
    from tests.test_chat_files import upload_file

    created = client.post("/api/experimental/chats", json={"title": "upstream"}, headers=auth)
    assert created.status_code == 201
    chat_id = created.json["id"]
    file_id = upload_file(client, auth, user)
    assert client.post(f"/api/experimental/chats/{chat_id}/files", json={"file_ids": [file_id]},
                       headers=auth).status_code == 204
    assert client.patch(f"/api/experimental/chats/{chat_id}", json={"archived": True}, headers=auth).status_code == 204
    for prefix in ("/api/v2", "/api/experimental"):
        got = client.get(f"{prefix}/chats/{chat_id}", headers=auth).json
        assert (got["archived"], [f["id"] for f in got["files"]]) == (True, [file_id])
        assert client.get(f"{prefix}/chats/files/{file_id}", headers=auth).status_code == 200
    assert_error(client.get(f"/api/experimental/chats/{chat_id}"), 401)
    assert_error(client.get("/api/experimental/chats/nope", headers=auth), 400, "Invalid chat ID.")
    assert_error(client.post(f"/api/experimental/chats/{chat_id}/archive", headers=auth), 400,
                 "Chat is already archived.")


def test_the_aliases_refuse_cross_origin_cookie_requests(client, user, chat):
    client.set_cookie("coder_session_token", user["token"])
    for method, path in [("PATCH", f"/api/experimental/chats/{chat['id']}"),
                         ("POST", f"/api/experimental/chats/{chat['id']}/files"),
                         ("POST", f"/api/experimental/chats/{chat['id']}/archive")]:
        response = client.open(path, method=method, json={"archived": True, "file_ids": []},
                               headers={"Sec-Fetch-Site": "cross-site"})
        assert_error(response, 403, "Cross-origin request refused.")
    ok = client.patch(f"/api/experimental/chats/{chat['id']}", json={"title": "t"},
                      headers={"Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 204

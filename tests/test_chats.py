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

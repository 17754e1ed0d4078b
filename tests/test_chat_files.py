"""Files in chats: linking and unlinking, the per-chat cap, and ``files`` in every chat JSON."""

import uuid

import pytest

import models
from harness.imaging import make_image
from tests.test_files import assert_error, upload

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)


@pytest.fixture
def chat(client, auth):
    return client.post("/api/v2/chats", json={"title": "with files"}, headers=auth).json


def upload_file(client, auth, user, name="a.png"):
    response = upload(client, auth, make_image("image/png", 8, 8), organization=user["organization_id"],
                      headers={"Content-Disposition": f'attachment; filename="{name}"'})
    assert response.status_code == 201, response.json
    return response.json["id"]


def link(client, auth, chat_id, file_ids):
    return client.post(f"/api/v2/chats/{chat_id}/files", json={"file_ids": file_ids}, headers=auth)


def linked_ids(client, auth, chat_id):
    response = client.get(f"/api/v2/chats/{chat_id}", headers=auth)
    assert response.status_code == 200
    return [file["id"] for file in response.json["files"]]


def link_count(app):
    with app.app_context(), models.db.connection_context():
        return models.ChatFileLink.select().count()


def test_linked_files_are_in_the_chats_json_oldest_first(app, client, auth, user, chat):
    ids = [upload_file(client, auth, user, f"{n}.png") for n in range(3)]
    response = link(client, auth, chat["id"], [ids[2], ids[0], ids[1]])
    assert response.status_code == 204 and response.data == b""
    files = client.get(f"/api/v2/chats/{chat['id']}", headers=auth).json["files"]
    with app.app_context(), models.db.connection_context():
        rows = {str(row.id): row for row in models.ChatFile.select()}
    # Oldest first: the file's own created_at, then its id (the link's order does not matter).
    assert [file["id"] for file in files] == sorted(ids, key=lambda i: (rows[i].created_at, uuid.UUID(i)))
    first = rows[files[0]["id"]]
    assert files[0] == {"id": files[0]["id"], "name": first.name, "mime_type": "image/png",
                        "size_bytes": first.size, "created_at": models.rfc3339(first.created_at)}


def test_linking_is_idempotent_and_does_not_touch_updated_at(client, auth, user, chat):
    file_id = upload_file(client, auth, user)
    for _ in range(2):
        assert link(client, auth, chat["id"], [file_id, file_id]).status_code == 204
    after = client.get(f"/api/v2/chats/{chat['id']}", headers=auth).json
    assert [file["id"] for file in after["files"]] == [file_id]
    assert after["updated_at"] == chat["updated_at"]


def test_an_empty_list_links_nothing(client, auth, chat):
    assert link(client, auth, chat["id"], []).status_code == 204
    assert linked_ids(client, auth, chat["id"]) == []


def test_a_file_may_be_in_several_chats_and_unlinking_removes_one_link(client, auth, user, chat):
    other = client.post("/api/v2/chats", json={"title": "second"}, headers=auth).json
    file_id = upload_file(client, auth, user)
    for chat_id in (chat["id"], other["id"]):
        assert link(client, auth, chat_id, [file_id]).status_code == 204
    response = client.delete(f"/api/v2/chats/{chat['id']}/files/{file_id}", headers=auth)
    assert response.status_code == 204 and response.data == b""
    assert linked_ids(client, auth, chat["id"]) == []
    assert linked_ids(client, auth, other["id"]) == [file_id]
    assert_error(client.delete(f"/api/v2/chats/{chat['id']}/files/{file_id}", headers=auth), 404,
                 "File is not linked to this chat.")
    assert_error(client.delete(f"/api/v2/chats/{chat['id']}/files/nope", headers=auth), 400, "Invalid file ID.")


@pytest.mark.parametrize("bad", ["nope", 5, None, "1234"])
def test_a_file_id_that_is_not_a_uuid_is_400_and_links_nothing(app, client, auth, user, chat, bad):
    good = upload_file(client, auth, user)
    assert_error(link(client, auth, chat["id"], [good, bad]), 400, "Invalid file ID.")
    assert link_count(app) == 0


def test_an_unknown_or_foreign_file_is_404_and_links_nothing(app, client, auth, user, other_user, chat):
    mine = upload_file(client, auth, user)
    bobs = upload_file(client, {"Coder-Session-Token": other_user["token"]}, other_user)
    for stranger in (str(uuid.uuid4()), bobs):
        assert_error(link(client, auth, chat["id"], [mine, stranger]), 404, "File not found.")
    assert link_count(app) == 0


def test_a_chat_not_the_callers_is_404_and_a_bad_chat_id_400(client, auth, user, other_user, chat):
    file_id = upload_file(client, auth, user)
    bob = {"Coder-Session-Token": other_user["token"]}
    assert_error(link(client, bob, chat["id"], [file_id]), 404, "Chat not found.")
    assert_error(link(client, auth, str(uuid.uuid4()), [file_id]), 404, "Chat not found.")
    assert_error(link(client, auth, "nope", [file_id]), 400, "Invalid chat ID.")
    assert_error(client.delete(f"/api/v2/chats/{chat['id']}/files/{file_id}", headers=bob), 404, "Chat not found.")


@pytest.mark.parametrize("body", [{}, {"file_ids": "x"}, {"file_ids": {"a": 1}}, [], "text"])
def test_a_body_without_a_file_ids_array_is_400(client, auth, chat, body):
    response = client.post(f"/api/v2/chats/{chat['id']}/files", json=body, headers=auth)
    assert_error(response, 400)
    if isinstance(body, dict):  # an object without the array: the field is named (a string is not read as ids)
        assert response.json["message"] == "Invalid file_ids."
        assert response.json["validations"][0]["field"] == "file_ids"


def test_more_than_50_ids_a_call_is_400_with_a_validation(client, auth, chat):
    response = link(client, auth, chat["id"], [str(uuid.uuid4()) for _ in range(51)])
    assert_error(response, 400, "Too many file IDs.")
    assert response.json["validations"][0]["field"] == "file_ids"
    assert "50" in response.json["detail"]


def test_a_link_past_the_cap_is_400_with_the_limit_and_links_nothing(app, client, auth, user, chat):
    app.config["MAX_FILES_PER_CHAT"] = 3
    ids = [upload_file(client, auth, user, f"{n}.png") for n in range(5)]
    assert link(client, auth, chat["id"], ids[:2]).status_code == 204
    response = link(client, auth, chat["id"], ids[2:4])
    assert_error(response, 400, "Too many files in this chat.")
    assert "at most 3 files" in response.json["detail"]
    assert sorted(linked_ids(client, auth, chat["id"])) == sorted(ids[:2])
    # Relinking what is linked adds nothing, so it fits even at the cap.
    assert link(client, auth, chat["id"], [ids[2]]).status_code == 204
    assert link(client, auth, chat["id"], ids[:3]).status_code == 204
    assert_error(link(client, auth, chat["id"], [ids[4]]), 400, "Too many files in this chat.")
    app.config["MAX_FILES_PER_CHAT"] = 1  # lowered below what the chat holds: relinking is still no error
    assert link(client, auth, chat["id"], ids[:3]).status_code == 204
    assert_error(link(client, auth, chat["id"], ids[2:]), 400, "Too many files in this chat.")


def test_a_deleted_file_disappears_from_every_chat(app, client, auth, user, chat):
    """The link's foreign key cascades (SQLite runs with foreign_keys=1): no dangling entry, no 500."""
    other = client.post("/api/v2/chats", json={"title": "second"}, headers=auth).json
    kept, deleted = upload_file(client, auth, user, "kept.png"), upload_file(client, auth, user, "gone.png")
    for chat_id in (chat["id"], other["id"]):
        assert link(client, auth, chat_id, [kept, deleted]).status_code == 204
    assert client.delete(f"/api/v2/chats/files/{deleted}", headers=auth).status_code == 204
    for chat_id in (chat["id"], other["id"]):
        assert linked_ids(client, auth, chat_id) == [kept]
    assert [[f["id"] for f in c["files"]] for c in client.get("/api/v2/chats", headers=auth).json] == [[kept]] * 2
    assert link_count(app) == 2


def test_the_list_reads_every_chats_files_in_one_query(app, client, auth, user, monkeypatch):
    chats = [client.post("/api/v2/chats", json={"title": str(n)}, headers=auth).json["id"] for n in range(4)]
    ids = [upload_file(client, auth, user, f"{n}.png") for n in range(3)]
    for n, chat_id in enumerate(chats):
        assert link(client, auth, chat_id, ids[: n % 4]).status_code == 204
    statements = []
    database = models.db.obj
    real = database.execute_sql

    def counting(sql, *args, **kwargs):
        statements.append(sql)
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", counting)
    listed = client.get("/api/v2/chats", headers=auth).json
    assert [len(c["files"]) for c in listed] == [3, 2, 1, 0]  # newest chat first
    assert len([sql for sql in statements if "chatfilelink" in sql]) == 1
    filtered = client.get("/api/v2/chats?archived=false", headers=auth).json
    assert [len(c["files"]) for c in filtered] == [3, 2, 1, 0]


def test_the_link_routes_need_a_token(client, chat):
    assert_error(client.post(f"/api/v2/chats/{chat['id']}/files", json={"file_ids": []}), 401)
    assert_error(client.delete(f"/api/v2/chats/{chat['id']}/files/{uuid.uuid4()}"), 401)


@pytest.mark.parametrize("value, message", [("many", "must be an integer"), ("-1", "must not be negative")])
def test_max_files_per_chat_is_checked_at_start_up(monkeypatch, storage_config, value, message):
    import config

    monkeypatch.setenv("MAX_FILES_PER_CHAT", value)
    with pytest.raises(config.ConfigError, match=f"MAX_FILES_PER_CHAT {message}"):
        config.load()
    monkeypatch.setenv("MAX_FILES_PER_CHAT", "7")
    assert config.load()["MAX_FILES_PER_CHAT"] == 7


def test_a_file_deleted_between_lookup_and_link_is_404_not_500(app, client, auth, user, chat, monkeypatch):
    """The link's foreign key refuses a file that went away after it was looked up (a concurrent delete; here
    the delete runs in the link's own transaction, just before the insert)."""
    file_id = upload_file(client, auth, user)
    real_insert = models.ChatFileLink.insert_many.__func__

    def delete_first(cls, rows, *args, **kwargs):
        models.ChatFile.delete().where(models.ChatFile.id == uuid.UUID(file_id)).execute()
        return real_insert(cls, rows, *args, **kwargs)

    monkeypatch.setattr(models.ChatFileLink, "insert_many", classmethod(delete_first))
    assert_error(link(client, auth, chat["id"], [file_id]), 404, "File not found.")
    assert link_count(app) == 0

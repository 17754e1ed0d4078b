"""GET /api/v2/chats/files?organization=: a user's files, newest first, paged by a cursor, on SQLite and PostgreSQL."""

import base64
import datetime
import json
import uuid

import peewee
import pytest

import models
from attachments import listing, rows, usage
from harness.imaging import make_image
from tests.conftest import _create_user
from tests.test_files import assert_error, upload

URL = "/api/v2/chats/files"


@pytest.fixture
def storage_config(tmp_path):
    """The local store only: the listing reads rows, never objects."""
    return {"S3_BUCKET": None, "LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}


def insert_files(app, account, times):
    """A file row per creation time (no objects: the listing reads rows only); their ids."""
    ids = []
    with app.app_context(), models.db.connection_context():
        for index, created_at in enumerate(times):
            file_id = uuid.uuid4()
            rows.insert_file(file_id, uuid.UUID(account["user_id"]), uuid.UUID(account["organization_id"]),
                             f"f{index}.png", "image/png", 100 + index, "0" * 64, 1, 1, False)
            models.ChatFile.update(created_at=created_at).where(models.ChatFile.id == file_id).execute()
            ids.append(str(file_id))
    return ids


def listed(client, auth, organization, **params):
    response = client.get(URL, query_string={"organization": organization, **params}, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def every_page(client, auth, organization, limit, between_pages=lambda page_number: None):
    """The ids of every page, following ``next``; ``between_pages(n)`` runs after page n."""
    seen, cursor, number = [], None, 0
    while True:
        page = listed(client, auth, organization, limit=limit, **({} if cursor is None else {"after": cursor}))
        assert len(page["files"]) <= limit
        seen += [file["id"] for file in page["files"]]
        cursor, number = page["next"], number + 1
        if cursor is None:
            return seen
        between_pages(number)


def test_the_callers_files_newest_first_with_their_chats_and_total_bytes(app, client, auth, user, other_user):
    organization = user["organization_id"]
    photo = upload(client, auth, make_image("image/png", 400, 300), organization=organization,
                   headers={"Content-Disposition": 'attachment; filename="photo.png"'}).json["id"]
    icon = upload(client, auth, make_image("image/gif", 20, 20), "image/gif", organization=organization).json["id"]
    upload(client, {"Coder-Session-Token": other_user["token"]}, make_image(),
           organization=other_user["organization_id"])  # someone else's, elsewhere: never listed
    with app.app_context(), models.db.connection_context():
        chats = [models.Chat.create(owner=uuid.UUID(user["user_id"]), title=title) for title in ("a", "b")]
        for chat in chats:
            models.ChatFileLink.create(chat=chat.id, file=uuid.UUID(photo))
        row = models.ChatFile.get_by_id(uuid.UUID(photo))

    page = listed(client, auth, organization)
    assert [file["id"] for file in page["files"]] == [icon, photo]
    assert page["files"][1] == {"id": photo, "name": "photo.png", "mime_type": "image/png", "size_bytes": row.size,
                                "created_at": models.rfc3339(row.created_at),
                                "chat_ids": [str(chat.id) for chat in chats]}
    assert page["files"][0]["chat_ids"] == []
    assert page["next"] is None
    # What the caller's files hold in storage, variants included: here all of the organization's.
    organization_usage = client.get(f"/api/v2/organizations/{organization}/usage", headers=auth).json
    assert page["total_bytes"] == organization_usage["bytes"] > row.size


def test_paging_is_stable_when_files_come_and_go_between_pages(app, client, auth, user):
    start = datetime.datetime(2026, 1, 1)
    # Ties in creation time on purpose: the id breaks them, so a page boundary inside a tie is exact too.
    times = [start + datetime.timedelta(seconds=index // 3) for index in range(10)]
    ids = insert_files(app, user, times)
    organization = user["organization_id"]
    full = every_page(client, auth, organization, limit=200)
    assert len(full) == 10 and full == every_page(client, auth, organization, limit=3)

    deleted, added = [], []

    def churn(page_number):
        # After each page: one file already shown and one not yet shown deleted; a newer one uploaded.
        shown, unseen = full[3 * page_number - 1], full[-page_number]
        with app.app_context(), models.db.connection_context():
            models.ChatFile.delete().where(models.ChatFile.id.in_([uuid.UUID(shown), uuid.UUID(unseen)])).execute()
        deleted.extend([shown, unseen])
        added.extend(insert_files(app, user, [start + datetime.timedelta(days=1, seconds=page_number)]))

    seen = every_page(client, auth, organization, limit=3, between_pages=churn)
    assert len(seen) == len(set(seen))  # nothing twice
    # Everything that was there from the start and not deleted before its page came, in order; nothing newer.
    assert seen == [file_id for file_id in full if file_id not in deleted[1::2]]
    assert set(ids) == set(full) and not set(seen) & set(added)


@pytest.mark.parametrize("limit", ["0", "201", "-1", "1.5", "ten", "", "٣"])
def test_a_bad_limit_is_400_naming_the_field(client, auth, user, limit):
    response = client.get(URL, query_string={"organization": user["organization_id"], "limit": limit}, headers=auth)
    assert_error(response, 400, "Invalid limit.")
    assert response.json["validations"][0]["field"] == "limit"


def test_limits_one_and_two_hundred_are_accepted(app, client, auth, user):
    insert_files(app, user, [datetime.datetime(2026, 1, 1, 0, 0, second) for second in range(3)])
    assert len(listed(client, auth, user["organization_id"], limit=1)["files"]) == 1
    assert len(listed(client, auth, user["organization_id"], limit=200)["files"]) == 3


def _tampered(cursor):
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return [
        cursor[:-1],  # cut
        cursor + "A",
        "not a cursor",
        base64.urlsafe_b64encode(json.dumps({"id": raw[1]}).encode()).decode(),  # another shape
        base64.urlsafe_b64encode(json.dumps([raw[0], "x"]).encode()).decode().rstrip("="),  # not an id
        base64.urlsafe_b64encode(json.dumps([raw[0] + "+00:00", raw[1]]).encode()).decode().rstrip("="),
        # The same position spelled otherwise: one spelling per position, what the service made.
        base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode().rstrip("="),
        "",
        "A" * 1000,
    ]


def test_a_bad_or_tampered_cursor_is_400(app, client, auth, user):
    insert_files(app, user, [datetime.datetime(2026, 1, 1, 0, 0, second) for second in range(3)])
    cursor = listed(client, auth, user["organization_id"], limit=1)["next"]
    for bad in _tampered(cursor):
        response = client.get(URL, query_string={"organization": user["organization_id"], "after": bad}, headers=auth)
        assert_error(response, 400, "Invalid cursor.")
        assert response.json["validations"][0]["field"] == "after"


def test_an_overlong_cursor_is_refused_before_it_is_decoded(monkeypatch):
    """A cursor past MAX_CURSOR_LENGTH costs no base64 or JSON decoding, however it is spelled."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("an overlong cursor was decoded")

    monkeypatch.setattr(listing.base64, "urlsafe_b64decode", no_decoding)
    monkeypatch.setattr(listing.json, "loads", no_decoding)
    valid = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00.000000", "0" * 32]).encode()).decode()
    for cursor in ("A" * (listing.MAX_CURSOR_LENGTH + 1), valid + " " * listing.MAX_CURSOR_LENGTH, "A" * 1_000_000):
        with pytest.raises(ValueError, match="cursor length"):
            listing.decode_cursor(cursor)


def test_the_route_is_the_listing_not_a_chat_named_files(client, auth, user, other_user):
    """/api/v2/chats/<chat> is a route too: 'files' must never reach it."""
    assert_error(client.get(URL, headers=auth), 400, "Missing organization query parameter.")
    assert_error(client.get(URL, query_string={"organization": "acme"}, headers=auth), 400, "Invalid organization ID.")
    assert_error(client.get(URL, query_string={"organization": other_user["organization_id"]}, headers=auth), 403)
    assert_error(client.get(URL, query_string={"organization": user["organization_id"]}), 401)
    assert listed(client, auth, user["organization_id"]) == {"files": [], "next": None, "total_bytes": 0}


def test_total_bytes_is_the_callers_own_in_that_organization(app, client, auth, user):
    """Another member's files count in the organization's usage, not in the caller's total."""
    colleague = _create_user(app, "carol", "acme")
    colleague_auth = {"Coder-Session-Token": colleague["token"]}
    upload(client, colleague_auth, make_image("image/png", 300, 200), organization=user["organization_id"])
    insert_files(app, user, [datetime.datetime(2026, 1, 1)])
    with app.app_context(), models.db.connection_context():
        mine = usage.stored_bytes_of_owner(uuid.UUID(user["user_id"]), uuid.UUID(user["organization_id"]))
    assert listed(client, auth, user["organization_id"])["total_bytes"] == mine == 100


def test_a_page_costs_the_same_queries_however_many_files_and_links_it_holds(app, client, auth, user, monkeypatch):
    """chat_ids come from one query for the whole page, not one per file."""
    with app.app_context(), models.db.connection_context():
        chat = models.Chat.create(owner=uuid.UUID(user["user_id"]), title="all")

    def queries_for_a_page(count):
        ids = insert_files(app, user, [datetime.datetime(2027, 1, 1)] * count)
        with app.app_context(), models.db.connection_context():
            for file_id in ids:
                models.ChatFileLink.create(chat=chat.id, file=uuid.UUID(file_id))
        listed(client, auth, user["organization_id"], limit=200)  # the token's lookup cached, as in steady state
        statements = []
        real_execute_sql = peewee.Database.execute_sql
        monkeypatch.setattr(peewee.Database, "execute_sql",
                            lambda self, sql, *args, **kwargs: statements.append(sql)
                            or real_execute_sql(self, sql, *args, **kwargs))
        page = listed(client, auth, user["organization_id"], limit=200)
        monkeypatch.setattr(peewee.Database, "execute_sql", real_execute_sql)
        assert all(file["chat_ids"] == [str(chat.id)] for file in page["files"])
        return len([sql for sql in statements if "chatfilelink" in sql.lower()]), len(statements)

    links_for_two, statements_for_two = queries_for_a_page(2)
    links_for_twenty, statements_for_twenty = queries_for_a_page(18)
    assert links_for_two == links_for_twenty == 1
    assert statements_for_two == statements_for_twenty

"""An organization's usage (the counter and its route) and ORG_STORAGE_QUOTA, on SQLite and PostgreSQL.

The quota under real concurrency, across gunicorn workers, is tests/test_live.py's.
"""

import re
import uuid

import pytest

import config
import models
from app import create_app
from attachments import usage
from harness.imaging import make_image
from jobs.generate_variants import generate_missing
from storage import StorageError, get_storage
from tests.conftest import _create_user, make_app
from tests.test_files import assert_error, object_count, row_count, upload

QUOTA_MESSAGE = "Upload would exceed the organization's storage quota."


@pytest.fixture
def storage_config(tmp_path):
    """The local store only: usage is the database's business (the upload's store is tests/test_files.py's)."""
    return {"S3_BUCKET": None, "LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}


def usage_of(client, auth, organization):
    response = client.get(f"/api/v2/organizations/{organization}/usage", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def counted_from_rows(app, organization):
    """What the organization's rows say it stores: originals plus variants stored apart (a scan, for checking)."""
    with app.app_context(), models.db.connection_context():
        files = models.ChatFile.select().where(models.ChatFile.organization == organization)
        return sum(usage.stored_bytes(row.id) for row in files), files.count()


def quota_app(database_url, storage_config, tmp_path, quota):
    return make_app(database_url, storage_config, tmp_path, ORG_STORAGE_QUOTA=quota)


# A photo bigger than the thumbnail: the original and a stored thumbnail both count.
PHOTO = make_image("image/png", 400, 300)


def test_usage_counts_originals_and_stored_variants_and_names_no_quota_by_default(app, client, auth, user):
    organization = user["organization_id"]
    assert usage_of(client, auth, organization) == {"bytes": 0, "files": 0, "quota_bytes": None}
    assert upload(client, auth, PHOTO, organization=organization).status_code == 201
    assert upload(client, auth, make_image("image/png", 40, 30), organization=organization).status_code == 201

    stored, files = counted_from_rows(app, organization)
    assert stored > len(PHOTO) + 1  # the thumbnail of the photo counts too
    assert usage_of(client, auth, organization) == {"bytes": stored, "files": files, "quota_bytes": None}
    assert files == 2


def test_usage_is_for_members_only(app, client, auth, user, other_user):
    assert_error(client.get(f"/api/v2/organizations/{other_user['organization_id']}/usage", headers=auth), 403)
    assert_error(client.get("/api/v2/organizations/acme/usage", headers=auth), 400, "Invalid organization ID.")
    assert_error(client.get(f"/api/v2/organizations/{uuid.uuid4()}/usage", headers=auth), 403)
    assert_error(client.get(f"/api/v2/organizations/{user['organization_id']}/usage"), 401)


def test_an_upload_past_the_quota_is_refused_and_stores_nothing(database_url, storage_config, tmp_path):
    app = quota_app(database_url, storage_config, tmp_path, 10**9)
    client, account = app.test_client(), _create_user(app, "alice", "acme")
    auth, organization = {"Coder-Session-Token": account["token"]}, account["organization_id"]
    try:
        assert upload(client, auth, make_image("image/png", 40, 30), organization=organization).status_code == 201
        used, objects = usage_of(client, auth, organization)["bytes"], object_count(app)
        # The photo's original alone would fit (the early check lets it in); with its thumbnail it does not.
        quota = app.config["ORG_STORAGE_QUOTA"] = used + len(PHOTO)
        response = upload(client, auth, PHOTO, organization=organization)
        assert_error(response, 400, QUOTA_MESSAGE)
        needed = re.fullmatch(rf"The organization uses {used} of its {quota} bytes; this upload needs (\d+) more "
                              r"\(the file and its stored thumbnail and preview\)\.", response.json["detail"])
        assert needed and int(needed[1]) > len(PHOTO)
        assert (row_count(app), object_count(app)) == (1, objects)
        assert usage_of(client, auth, organization) == {"bytes": used, "files": 1, "quota_bytes": quota}
    finally:
        models.close_all_connections()


def test_an_upload_whose_declared_size_cannot_fit_is_refused_before_its_body_is_read(database_url, storage_config,
                                                                                     tmp_path):
    app = quota_app(database_url, storage_config, tmp_path, 1000)
    client, account = app.test_client(), _create_user(app, "alice", "acme")
    auth = {"Coder-Session-Token": account["token"]}
    try:
        # Not an image at all: its body read, its content would be refused; the quota answers first.
        response = upload(client, auth, b"\0" * 1001, organization=account["organization_id"])
        assert_error(response, 400, QUOTA_MESSAGE)
        assert "needs at least 1001 more" in response.json["detail"]
        fits = upload(client, auth, b"\0" * 1000, organization=account["organization_id"])
        assert_error(fits, 400)
        assert fits.json["message"] != QUOTA_MESSAGE  # read, and refused for what it is
        # Over the size limit too: the limit's own 413 comes first, as the contract's order says.
        app.config["MAX_FILE_SIZE"] = 1000
        assert_error(upload(client, auth, b"\0" * 1001, organization=account["organization_id"]), 413,
                     "File too large.")
    finally:
        models.close_all_connections()


def test_a_delete_gives_the_files_bytes_back(app, client, auth, user):
    organization = user["organization_id"]
    kept = upload(client, auth, make_image("image/png", 40, 30), organization=organization).json["id"]
    deleted = upload(client, auth, PHOTO, organization=organization).json["id"]
    assert client.delete(f"/api/v2/chats/files/{deleted}", headers=auth).status_code == 204
    stored, files = counted_from_rows(app, organization)
    assert usage_of(client, auth, organization)["bytes"] == stored
    assert files == 1 and client.get(f"/api/v2/chats/files/{kept}", headers=auth).status_code == 200


@pytest.mark.parametrize("quota", [None, 10**9], ids=["counted with the rows", "reserved before storing"])
def test_a_failed_save_leaves_nothing_counted(app, client, auth, user, monkeypatch, quota):
    def broken_put(*args, **kwargs):
        raise StorageError("unreachable")

    app.config["ORG_STORAGE_QUOTA"] = quota
    monkeypatch.setattr(app.extensions["storage"], "put", broken_put)
    assert_error(upload(client, auth, PHOTO, organization=user["organization_id"]), 500, "Failed to save chat file.")
    assert usage_of(client, auth, user["organization_id"])["bytes"] == 0


def test_generate_variants_adds_the_variants_it_stores(app, client, auth, user):
    """A file from before variants: its counter held the original only; the backfill adds what it stores."""
    organization = user["organization_id"]
    file_id = uuid.UUID(upload(client, auth, PHOTO, organization=organization).json["id"])
    with app.app_context(), models.db.connection_context():
        variants = models.ChatFileVariant.select().where(models.ChatFileVariant.file == file_id)
        variant_bytes = sum(variant.size for variant in variants if not variant.original)
        models.ChatFileVariant.delete().where(models.ChatFileVariant.file == file_id).execute()
        usage.release(uuid.UUID(organization), variant_bytes, files=0)  # as migration 6 counted such a file
        assert usage.of(uuid.UUID(organization)).bytes == len(PHOTO)

        result = generate_missing(get_storage())
        assert result.generated == 1
    assert usage_of(client, auth, organization)["bytes"] == counted_from_rows(app, organization)[0] > len(PHOTO)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5"])
def test_a_bad_quota_stops_start_up(value, tmp_path):
    with pytest.raises(config.ConfigError, match="ORG_STORAGE_QUOTA"):
        create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "ORG_STORAGE_QUOTA": value})


def test_an_empty_quota_is_no_quota_and_a_number_is_bytes(monkeypatch):
    monkeypatch.setenv("ORG_STORAGE_QUOTA", "")
    assert config.load()["ORG_STORAGE_QUOTA"] is None
    monkeypatch.setenv("ORG_STORAGE_QUOTA", "1048576")
    assert config.load()["ORG_STORAGE_QUOTA"] == 1048576

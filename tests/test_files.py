"""Upload and download, row by row of the contract, on every backend."""

import hashlib
import io
import struct
import threading
import uuid
import zlib

import peewee
import pytest

import models
from harness.imaging import make_animated_gif, make_image
from imaging import images
from storage import StorageError, get_storage, object_key

# What gunicorn tells the app for a chunked body: read the stream to its end.
CHUNKED = {"wsgi.input_terminated": True}
# Every image type the imaging package decodes, then the text types and PDF (filetypes).
ALLOWED_DETAIL = ("Allowed types: " + ", ".join(
    [*images.ALLOWED_TYPES, "text/plain", "text/markdown", "text/csv", "application/json", "application/pdf"]) + ".")


def upload(client, auth, data, content_type="image/png", organization=None, headers=None, **kwargs):
    query = {} if organization is None else {"organization": organization}
    return client.post(
        "/api/v2/chats/files",
        query_string=query,
        data=data,
        headers={**auth, "Content-Type": content_type, **(headers or {})},
        **kwargs,
    )


def stored_object(app, row_id):
    with app.app_context():
        row = models.ChatFile.get_by_id(row_id)
        return get_storage().head(object_key(app.config["S3_PREFIX"], row.organization_id, row.id))


def row_count(app):
    with app.app_context(), models.db.connection_context():
        return models.ChatFile.select().count()


def object_count(app):
    with app.app_context():
        return len(list(get_storage().iter_objects()))


def assert_error(response, status, message=None, detail=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    if message is not None:
        assert response.json["message"] == message
    if detail is not None:
        assert response.json["detail"] == detail


def with_png_dimensions(png, width, height):
    """The same PNG claiming other dimensions in its IHDR (CRC fixed up)."""
    ihdr = png[12:29]
    fields = struct.pack(">II", width, height) + ihdr[12:17]
    chunk = b"IHDR" + fields
    return png[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


# image/heif: a file whose brands name no codec (tests/test_camera_images.py); what x265 writes is image/heic.
@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/gif", "image/webp", "image/heic",
                                          "image/avif"])
def test_upload_accepts_each_allowed_type_and_download_returns_same_bytes(app, client, auth, user, content_type):
    data = make_image(content_type, 40, 30)
    response = upload(client, auth, data, content_type, user["organization_id"])
    assert response.status_code == 201, response.json
    file_id = response.json["id"]
    assert str(uuid.UUID(file_id)) == file_id

    download = client.get(f"/api/v2/chats/files/{file_id}", headers=auth)
    assert download.status_code == 200
    assert download.data == data
    assert download.headers["Content-Type"] == content_type


def test_upload_stores_object_at_contract_key_with_metadata(app, client, auth, user):
    data = make_image("image/png", 40, 30)
    response = upload(
        client, auth, data, "image/png", user["organization_id"],
        headers={"Content-Disposition": "attachment; filename*=UTF-8''%E2%82%AC%20rates.png"},
    )
    file_id = response.json["id"]
    info = stored_object(app, file_id)
    assert info.key == f"chat-files/{user['organization_id']}/{file_id}"
    assert info.content_type == "image/png"
    assert info.size == len(data)
    assert info.metadata == {
        "owner-id": user["user_id"],
        "organization-id": user["organization_id"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": "40",
        "height": "30",
        "filename": "%E2%82%AC%20rates.png",
    }


def test_database_holds_metadata_not_bytes(app, client, auth, user):
    data = make_image("image/gif", 10, 10)
    file_id = upload(client, auth, data, "image/gif", user["organization_id"]).json["id"]
    with app.app_context(), models.db.connection_context():
        row = models.ChatFile.get_by_id(file_id)
        values = [getattr(row, field) for field in row._meta.fields]
    assert not any(isinstance(value, (bytes, bytearray, memoryview)) for value in values)
    assert (row.size, row.width, row.height, row.content_type) == (len(data), 10, 10, "image/gif")


def test_stored_type_is_detected_type_not_declared(app, client, auth, user):
    jpeg = make_image("image/jpeg")
    file_id = upload(client, auth, jpeg, "image/png", user["organization_id"]).json["id"]
    assert client.get(f"/api/v2/chats/files/{file_id}", headers=auth).headers["Content-Type"] == "image/jpeg"
    assert stored_object(app, file_id).content_type == "image/jpeg"


def test_declared_type_ignores_case_and_parameters(client, auth, user):
    response = upload(client, auth, make_image(), "IMAGE/PNG; charset=binary", user["organization_id"])
    assert response.status_code == 201


# The table of checks, in the contract's order.


def test_upload_without_token_is_401(client, user):
    assert_error(upload(client, {}, make_image(), organization=user["organization_id"]), 401)


@pytest.mark.parametrize("organization", [None, ""])
def test_upload_without_organization_is_400(client, auth, organization):
    assert_error(upload(client, auth, make_image(), organization=organization), 400, "Missing organization query parameter.")


def test_upload_with_non_uuid_organization_is_400(client, auth):
    assert_error(upload(client, auth, make_image(), organization="acme"), 400, "Invalid organization ID.")


@pytest.mark.parametrize("which", ["unknown", "foreign"])
def test_upload_to_organization_caller_is_not_member_of_is_403(client, auth, other_user, which):
    organization = str(uuid.uuid4()) if which == "unknown" else other_user["organization_id"]
    assert_error(upload(client, auth, make_image(), organization=organization), 403)


@pytest.mark.parametrize("content_type", ["", "image/svg+xml", "text/html", "application/octet-stream", "image/bmp"])
def test_upload_with_disallowed_declared_type_is_400(client, auth, user, content_type):
    response = upload(client, auth, make_image(), content_type, user["organization_id"])
    assert_error(response, 400, "Unsupported file type.", ALLOWED_DETAIL)


def test_upload_with_content_length_over_limit_is_413_before_reading(app, client, auth, user):
    app.config["MAX_FILE_SIZE"] = 1000
    reads = []

    class CountingStream(io.BytesIO):
        def read(self, *args):
            reads.append(args)
            return super().read(*args)

        readinto = None  # force werkzeug through read()

    response = client.post(
        "/api/v2/chats/files",
        query_string={"organization": user["organization_id"]},
        input_stream=CountingStream(b"\x89PNG" + b"\0" * 2000),
        headers={**auth, "Content-Type": "image/png", "Content-Length": "2004"},
    )
    assert_error(response, 413, "File too large.", "Maximum file size is 1000 bytes.")
    assert reads == []


def test_upload_of_chunked_body_over_limit_is_413_reading_at_most_limit_plus_one(app, client, auth, user):
    limit = 100_000
    app.config["MAX_FILE_SIZE"] = limit
    stream = io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * (limit * 3))
    response = client.post(
        "/api/v2/chats/files",
        query_string={"organization": user["organization_id"]},
        input_stream=stream,
        headers={**auth, "Content-Type": "image/png", "Transfer-Encoding": "chunked"},
        environ_overrides=CHUNKED,
    )
    assert_error(response, 413, "File too large.", f"Maximum file size is {limit} bytes.")
    assert stream.tell() <= limit + 1


def test_chunked_body_within_limit_is_accepted(client, auth, user):
    data = make_image("image/webp")
    response = client.post(
        "/api/v2/chats/files",
        query_string={"organization": user["organization_id"]},
        input_stream=io.BytesIO(data),
        headers={**auth, "Content-Type": "image/webp", "Transfer-Encoding": "chunked"},
        environ_overrides=CHUNKED,
    )
    assert response.status_code == 201
    assert client.get(f"/api/v2/chats/files/{response.json['id']}", headers=auth).data == data


def test_limit_is_configurable_and_exact(app, client, auth, user):
    data = make_image()
    app.config["MAX_FILE_SIZE"] = len(data)
    assert upload(client, auth, data, organization=user["organization_id"]).status_code == 201
    app.config["MAX_FILE_SIZE"] = len(data) - 1
    assert_error(upload(client, auth, data, organization=user["organization_id"]), 413)


def test_empty_body_is_400(client, auth, user):
    response = upload(client, auth, b"", organization=user["organization_id"])
    assert_error(response, 400)
    assert response.json["message"] != "Unsupported file type."


@pytest.mark.parametrize(
    "body",
    [b"<html><script>alert(1)</script></html>", b"%PDF-1.4\n", b"PK\x03\x04zip", b"<svg xmlns='http://www.w3.org/2000/svg'/>"],
    ids=["html", "pdf", "zip", "svg"],
)
def test_body_that_is_not_an_image_is_400_unsupported(client, auth, user, body):
    assert_error(upload(client, auth, body, organization=user["organization_id"]), 400, "Unsupported file type.")


def invalid_images():
    png = make_image("image/png", 64, 64)
    return {
        "png-signature-then-zeros": b"\x89PNG\r\n\x1a\n" + b"\0" * 4096,
        "truncated-png": png[: len(png) // 2],
        "truncated-jpeg": make_image("image/jpeg", 64, 64)[:300],
        "truncated-gif": make_image("image/gif", 64, 64)[:-20],
        "truncated-webp": make_image("image/webp", 64, 64)[:-30],
        "png-then-html": png + b"<html><script>alert(1)</script></html>",
        "bomb-100000x100000": with_png_dimensions(png, 100_000, 100_000),
    }


@pytest.mark.parametrize("name", sorted(invalid_images()))
def test_image_that_does_not_decode_is_400_invalid(app, client, auth, user, name):
    response = upload(client, auth, invalid_images()[name], organization=user["organization_id"])
    assert_error(response, 400, "Invalid image file.")
    assert row_count(app) == 0


def test_animated_gif_over_pixel_budget_is_400(app, client, auth, user):
    app.config["MAX_IMAGE_PIXELS"] = 16 * 16 * 5
    response = upload(client, auth, make_animated_gif(frames=6), "image/gif", user["organization_id"])
    assert_error(response, 400, "Invalid image file.")
    assert upload(client, auth, make_animated_gif(frames=5), "image/gif", user["organization_id"]).status_code == 201


def test_storage_failure_is_500_and_leaves_no_row(app, client, auth, user, monkeypatch):
    def broken_put(*args, **kwargs):
        raise StorageError("unreachable")

    monkeypatch.setattr(app.extensions["storage"], "put", broken_put)
    response = upload(client, auth, make_image(), organization=user["organization_id"])
    assert_error(response, 500, "Failed to save chat file.")
    assert row_count(app) == 0


def test_database_failure_after_storing_is_500_and_deletes_the_object(app, client, auth, user, monkeypatch):
    real_execute_sql = peewee.Database.execute_sql

    def execute_sql_failing_inserts(database, sql, *args, **kwargs):
        if sql.lstrip().upper().startswith("INSERT"):
            raise peewee.OperationalError("simulated: database went away")
        return real_execute_sql(database, sql, *args, **kwargs)

    monkeypatch.setattr(peewee.Database, "execute_sql", execute_sql_failing_inserts)
    response = upload(client, auth, make_image(), organization=user["organization_id"])
    assert_error(response, 500, "Failed to save chat file.")
    assert object_count(app) == 0


# Display names.


@pytest.mark.parametrize(
    "header, expected",
    [
        ('attachment; filename="cat.png"', "cat.png"),
        ("attachment; filename*=UTF-8''%E2%82%AC%20rates.png", "€ rates.png"),
        ('attachment; filename="plain.png"; filename*=UTF-8\'\'%C3%A9t%C3%A9.png', "été.png"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Users\\\\me\\\\photo.png"', "photo.png"),
        ("attachment; filename*=UTF-8''evil%0D%0ASet-Cookie%3A%20x%3D1.png", "evilSet-Cookie: x=1.png"),
        ('attachment; filename=".."', None),
        ("inline", None),
    ],
)
def test_display_name_is_taken_from_content_disposition_and_sanitized(app, client, auth, user, header, expected):
    response = upload(client, auth, make_image(), organization=user["organization_id"],
                      headers={"Content-Disposition": header})
    with app.app_context(), models.db.connection_context():
        assert models.ChatFile.get_by_id(response.json["id"]).name == expected


def test_display_name_is_cut_to_255_bytes_on_a_utf8_boundary(app, client, auth, user):
    name = "é" * 200 + ".png"  # 404 bytes
    from urllib.parse import quote

    response = upload(client, auth, make_image(), organization=user["organization_id"],
                      headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"})
    with app.app_context(), models.db.connection_context():
        stored = models.ChatFile.get_by_id(response.json["id"]).name
    assert stored == "é" * 127
    assert len(stored.encode()) == 254


# Download.


@pytest.fixture
def uploaded(client, auth, user):
    data = make_image("image/png", 20, 20)
    response = upload(client, auth, data, organization=user["organization_id"],
                      headers={"Content-Disposition": 'attachment; filename="cat.png"'})
    return response.json["id"], data


def test_download_headers(client, auth, uploaded):
    file_id, data = uploaded
    response = client.get(f"/api/v2/chats/files/{file_id}", headers=auth)
    assert response.status_code == 200
    assert response.data == data
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Disposition"] == 'inline; filename="cat.png"'
    assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_download_is_streamed_from_storage(client, auth, uploaded):
    file_id, data = uploaded
    response = client.get(f"/api/v2/chats/files/{file_id}", headers=auth, buffered=False)
    assert response.is_streamed
    assert b"".join(response.response) == data
    response.close()


def test_download_of_unnamed_file_is_plain_inline(client, auth, user):
    file_id = upload(client, auth, make_image(), organization=user["organization_id"]).json["id"]
    assert client.get(f"/api/v2/chats/files/{file_id}", headers=auth).headers["Content-Disposition"] == "inline"


def test_non_ascii_name_is_rfc5987_encoded_without_header_injection(client, auth, user):
    header = "attachment; filename*=UTF-8''%E2%82%AC%22%3B%20x%0D%0AX-Evil%3A%201.png"
    file_id = upload(client, auth, make_image(), organization=user["organization_id"],
                     headers={"Content-Disposition": header}).json["id"]
    response = client.get(f"/api/v2/chats/files/{file_id}", headers=auth)
    assert "X-Evil" not in response.headers
    assert response.headers["Content-Disposition"] == (
        "inline; filename=\"__; xX-Evil: 1.png\"; filename*=UTF-8''%E2%82%AC%22%3B%20xX-Evil%3A%201.png"
    )


def test_download_with_bad_id_is_400(client, auth):
    assert_error(client.get("/api/v2/chats/files/not-a-uuid", headers=auth), 400, "Invalid file ID.")


def test_download_of_unknown_file_is_404(client, auth):
    assert_error(client.get(f"/api/v2/chats/files/{uuid.uuid4()}", headers=auth), 404)


def test_download_of_another_users_file_is_404(client, other_user, uploaded):
    file_id, _ = uploaded
    response = client.get(f"/api/v2/chats/files/{file_id}", headers={"Coder-Session-Token": other_user["token"]})
    assert_error(response, 404)


def test_download_without_token_is_401(client, uploaded):
    assert_error(client.get(f"/api/v2/chats/files/{uploaded[0]}"), 401)


def test_if_none_match_answers_304_without_touching_storage(app, client, auth, uploaded, monkeypatch):
    file_id, data = uploaded
    etag = client.get(f"/api/v2/chats/files/{file_id}", headers=auth).headers["ETag"]

    def no_storage(*args, **kwargs):
        raise AssertionError("storage touched")

    monkeypatch.setattr(app.extensions["storage"], "open", no_storage)
    monkeypatch.setattr(app.extensions["storage"], "head", no_storage)
    response = client.get(f"/api/v2/chats/files/{file_id}", headers={**auth, "If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"


def test_if_none_match_with_other_etag_gets_the_bytes(client, auth, uploaded):
    file_id, data = uploaded
    response = client.get(f"/api/v2/chats/files/{file_id}", headers={**auth, "If-None-Match": '"other"'})
    assert response.status_code == 200
    assert response.data == data


def test_head_gives_get_headers_without_body_or_storage_read(app, client, auth, uploaded, monkeypatch):
    file_id, data = uploaded
    get_headers = client.get(f"/api/v2/chats/files/{file_id}", headers=auth).headers
    monkeypatch.setattr(app.extensions["storage"], "open", lambda *a: pytest.fail("storage read"))
    response = client.head(f"/api/v2/chats/files/{file_id}", headers=auth)
    assert response.status_code == 200
    assert response.data == b""
    for name in ("Content-Type", "Content-Length", "Content-Disposition", "Cache-Control", "ETag", "X-Content-Type-Options"):
        assert response.headers[name] == get_headers[name]


def test_download_when_storage_fails_is_json_500(app, client, auth, uploaded, monkeypatch):
    def broken_open(*args):
        raise StorageError("down")

    monkeypatch.setattr(app.extensions["storage"], "open", broken_open)
    assert_error(client.get(f"/api/v2/chats/files/{uploaded[0]}", headers=auth), 500)


@pytest.mark.parametrize("path", ["", "/thumbnail", "/preview"])
def test_a_delete_racing_a_download_answers_404_not_500(app, client, auth, uploaded, monkeypatch, path):
    """The download read the row; the delete (row first, then objects) runs before it opens the object."""
    storage = app.extensions["storage"]
    real_open = storage.open

    def deleted_meanwhile(key, byte_range=None):
        assert client.delete(f"/api/v2/chats/files/{uploaded[0]}", headers=auth).status_code == 204
        return real_open(key, byte_range)

    monkeypatch.setattr(storage, "open", deleted_meanwhile)
    assert_error(client.get(f"/api/v2/chats/files/{uploaded[0]}{path}", headers=auth), 404, "File not found.")


def test_an_object_missing_under_its_row_is_still_a_500(app, client, auth, uploaded):
    storage = app.extensions["storage"]
    for key, _ in list(storage.iter_objects()):
        storage.delete(key)
    assert_error(client.get(f"/api/v2/chats/files/{uploaded[0]}", headers=auth), 500, "Failed to read chat file.")


def test_upload_budget_queues_bodies_beyond_its_capacity():
    from attachments.budget import UploadBudget

    budget = UploadBudget(capacity=100)
    order = []

    def second_upload():
        with budget.reserve(60, timeout=5):
            order.append("second")

    with budget.reserve(60, timeout=5):
        waiter = threading.Thread(target=second_upload)
        waiter.start()
        waiter.join(0.2)
        assert order == []  # 60 + 60 > 100: it waits
        order.append("first done")
    waiter.join(5)
    assert order == ["first done", "second"]


def test_upload_budget_lets_a_single_oversized_body_through_and_times_out_others():
    from attachments.budget import UploadBudget
    from web.errors import ApiError

    budget = UploadBudget(capacity=10)
    with budget.reserve(50, timeout=1):
        with pytest.raises(ApiError) as busy:
            with budget.reserve(1, timeout=0.1):
                pass
    assert busy.value.status == 503
    with budget.reserve(1, timeout=0.1):
        pass  # room again once the first is done


def test_upload_waiting_too_long_for_budget_is_json_503(app, client, auth, user, monkeypatch):
    import attachments.budget

    monkeypatch.setattr(attachments.budget, "BUDGET_WAIT_SECONDS", 0.1)
    budget = app.extensions["upload_budget"]
    with budget.reserve(budget.capacity, timeout=1):  # another upload holds all of it
        response = upload(client, auth, make_image(), organization=user["organization_id"])
    assert_error(response, 503, "Too many uploads in progress.")
    assert response.headers["Retry-After"] == "1"
    assert row_count(app) == 0


# Text, JSON and PDF (tests/test_attachment_types.py has the rest of their rows): on every backend too.


@pytest.mark.parametrize("declared, name, stored, served", [
    ("text/plain", "notes.md", "text/markdown", "text/markdown; charset=utf-8"),
    ("text/plain", "payload.json", "application/json", "application/json"),
    ("application/pdf", "report.pdf", "application/pdf", "application/pdf"),
])
def test_text_json_and_pdf_round_trip_without_dimensions(app, client, auth, user, declared, name, stored, served):
    from harness.documents import make_pdf

    data = make_pdf() if declared == "application/pdf" else (b'{"a": [1, 2]}' if name.endswith(".json") else b"# Hi\n")
    response = upload(client, auth, data, declared, user["organization_id"],
                      headers={"Content-Disposition": f'attachment; filename="{name}"'})
    assert response.status_code == 201, response.json
    file_id = response.json["id"]
    download = client.get(f"/api/v2/chats/files/{file_id}", headers=auth)
    assert (download.data, download.headers["Content-Type"]) == (data, served)
    assert download.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    with app.app_context(), models.db.connection_context():
        row = models.ChatFile.get_by_id(file_id)
    assert (row.content_type, row.width, row.height, row.animated) == (stored, None, None, False)
    stored_info = stored_object(app, file_id)
    assert stored_info.content_type == stored
    assert sorted(stored_info.metadata) == ["filename", "organization-id", "owner-id", "sha256"]

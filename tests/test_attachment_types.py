"""Attachment types beyond images (CONTRACT.md, "Attachment types"): text, Markdown, CSV, JSON and PDF, row by row.

Through the app over the test client, on SQLite and the local store (tests/test_files.py
runs a text, a JSON and a PDF file through every backend, moto's S3 included). The
verification runs in the decode sandbox, as an image's does.
"""

import hashlib
import json

import pytest

import filetypes
import models
from harness.documents import make_pdf
from harness.imaging import make_image
from tests.test_files import ALLOWED_DETAIL, assert_error, object_count, row_count, stored_object, upload

pytestmark = [pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
              pytest.mark.parametrize("storage_config", ["local"], indirect=True)]

SANDBOX_POLICY = "sandbox; default-src 'none'"
MARKDOWN = "# Notes\n\nSome *emphasis*, a list:\n\n- one\n- two <kbd>Ctrl</kbd>\n\n<details><summary>more</summary>x</details>\n"


def named(name):
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def send(client, auth, user, data, content_type, name=None):
    return upload(client, auth, data, content_type, user["organization_id"], headers=named(name) if name else None)


def stored_type(client, auth, response):
    assert response.status_code == 201, response.json
    return client.get(f"/api/v2/chats/files/{response.json['id']}/info", headers=auth).json["content_type"]


# --- accepted: each declared type, and the stored type -------------------------------------------------------


@pytest.mark.parametrize("declared, body, name, stored", [
    ("text/plain", b"build succeeded\n", "build.log", "text/plain"),
    ("text/plain", b"build succeeded\n", None, "text/plain"),
    ("text/markdown", MARKDOWN.encode(), "notes.txt", "text/markdown"),
    ("text/csv", b"name,count\nwidgets,3\n", "report.csv", "text/csv"),
    ("application/json", b'{"ok": true, "items": [1, 2.5, "three", null]}', "payload.json", "application/json"),
    ("application/pdf", make_pdf(2), "report.pdf", "application/pdf"),
    # text/plain refined by the display name's extension, whatever its case.
    ("text/plain", MARKDOWN.encode(), "notes.md", "text/markdown"),
    ("text/plain", MARKDOWN.encode(), "NOTES.MARKDOWN", "text/markdown"),
    ("text/plain", b"a,b\n1,2\n", "export.CSV", "text/csv"),
    ("text/plain", b'{"ok": true}', "data.JSON", "application/json"),
    # ... JSON only when it parses: otherwise the declared text/plain stands.
    ("text/plain", b"not json", "broken.json", "text/plain"),
    # Only text/plain is refined: a declared text type is kept, whatever the name says.
    ("text/markdown", b'{"ok": true}', "data.json", "text/markdown"),
    ("application/json", b"[1, 2]", "numbers.csv", "application/json"),
    # Declared type parameters and case are ignored, as for images.
    ("Text/Plain; charset=UTF-8", b"hello", "hello.txt", "text/plain"),
])
def test_accepted_types_are_stored_as_the_contract_says(client, auth, user, declared, body, name, stored):
    response = send(client, auth, user, body, declared, name)
    assert stored_type(client, auth, response) == stored
    assert client.get(f"/api/v2/chats/files/{response.json['id']}", headers=auth).data == body


@pytest.mark.parametrize("body", [
    "\ufeff# Notes with a BOM\n".encode(),
    "Grüße, 日本語, emoji 🎉, and a tab\t\n".encode(),
    b"<- arrows -> and a < b > c, <3, <<EOF",
    b"x" * 100_000,
])
def test_text_that_is_utf8_without_nul_is_accepted(client, auth, user, body):
    assert send(client, auth, user, body, "text/plain").status_code == 201


def test_json_with_a_bom_is_json(client, auth, user):
    response = send(client, auth, user, b'\xef\xbb\xbf{"a": [1]}', "text/plain", "x.json")
    assert stored_type(client, auth, response) == "application/json"


# --- refused ----------------------------------------------------------------------------------------------


def test_the_allowed_types_detail_lists_every_accepted_type(client, auth, user):
    response = send(client, auth, user, b"<p>hi</p>", "text/html")
    assert_error(response, 400, "Unsupported file type.", ALLOWED_DETAIL)
    assert response.json["detail"] == "Allowed types: " + ", ".join(filetypes.ALLOWED_TYPES) + "."


@pytest.mark.parametrize("declared, body", [
    # Bytes of an image declared as text, text declared as an image.
    ("text/plain", make_image("image/png")),
    ("application/json", make_image("image/gif")),
    ("image/png", b"just some text"),
    ("image/jpeg", make_pdf()),
    # Anything else declared as PDF.
    ("application/pdf", b"just some text"),
    ("application/pdf", make_image("image/png")),
    ("application/pdf", b" %PDF-1.7 with something before the header"),
    # A PDF declared as text.
    ("text/plain", make_pdf()),
])
def test_content_of_another_family_than_declared_is_unsupported(app, client, auth, user, declared, body):
    assert_error(send(client, auth, user, body, declared), 400, "Unsupported file type.")
    assert (row_count(app), object_count(app)) == (0, 0)


@pytest.mark.parametrize("body", [
    b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
    b"\xef\xbb\xbf  \n<svg onload=alert(1)>",
    b"<!DOCTYPE html><html><body>hi</body></html>",
    b"<html><script>alert(1)</script></html>",
    b"\n\n   <HTML>",
    b"<script>alert(1)</script>",
    b"<iframe src=https://evil.example>",
    b"<!-- a comment first --><svg/>",
    b"<!-- unclosed comment",
    b'<?xml version="1.0"?><note><to>Tove</to></note>',
    b'<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel/></rss>',
    b"<![CDATA[ x ]]>",
    b"<p>hello</p>",
    b"<math><mi>x</mi></math>",
])
@pytest.mark.parametrize("declared", ["text/plain", "text/markdown", "text/csv", "application/json"])
def test_markup_at_the_root_is_refused_whatever_it_is_declared_as(app, client, auth, user, body, declared):
    assert_error(send(client, auth, user, body, declared, "notes.md"), 400, "Unsupported file type.")
    assert row_count(app) == 0


@pytest.mark.parametrize("body", [
    b"# SVG Example\n<svg width=\"100\">...</svg>\n",
    b"Intro line\n\n<div align=\"center\"><img src=\"x.png\"></div>\n",
    b"<!-- markdownlint-disable -->\n# Title\n",
    b"<kbd>Ctrl</kbd> is not one of the HTML-sniffed elements\n",
    b"<https://example.com> is an autolink\n",
    b"< not a tag\n",
])
def test_markdown_with_inline_html_or_angle_brackets_is_text(client, auth, user, body):
    response = send(client, auth, user, body, "text/plain", "readme.md")
    assert stored_type(client, auth, response) == "text/markdown"


@pytest.mark.parametrize("body, detail", [
    (b"nul \x00 inside", "It holds a NUL byte (at byte 4): text never does."),
    (b"latin-1 caf\xe9 ok", "It is not UTF-8 (byte 11: invalid continuation byte)."),
    (b"overlong slash \xc0\xaf", "It is not UTF-8 (byte 15: invalid start byte)."),
    (b"overlong NUL \xe0\x80\x80", "It is not UTF-8 (byte 13: invalid continuation byte)."),
    (b"surrogate \xed\xa0\x80", "It is not UTF-8 (byte 10: invalid continuation byte)."),
    (b"cut short \xe6\x97", "It is not UTF-8 (byte 10: unexpected end of data)."),
    ("utf-16".encode("utf-16"), None),
])
@pytest.mark.parametrize("declared", ["text/plain", "text/csv", "application/json"])
def test_text_that_is_not_utf8_or_holds_nul_is_invalid(app, client, auth, user, body, detail, declared):
    assert_error(send(client, auth, user, body, declared), 400, "Invalid text file.", detail)
    assert row_count(app) == 0


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2", b'{"a": NaN}', b"[Infinity]", b"1 2", b"{'a': 1}",
                                  b'["tab\tinside"]', b"[" * 129 + b"]" * 129, b"   "])
def test_json_that_does_not_parse_is_invalid_json(app, client, auth, user, body):
    assert_error(send(client, auth, user, body, "application/json"), 400, "Invalid JSON file.")
    assert row_count(app) == 0


def test_json_nested_to_the_bound_is_accepted_and_one_deeper_refused(client, auth, user):
    deepest = b"[" * 128 + b"]" * 128
    assert send(client, auth, user, deepest, "application/json").status_code == 201
    response = send(client, auth, user, b"[" + deepest + b"]", "application/json")
    assert_error(response, 400, "Invalid JSON file.", "It nests deeper than 128 levels.")


@pytest.mark.parametrize("body, detail", [
    (b"%PDF-1.7\n", "Its structure does not parse: Stream has ended unexpectedly."),
    (make_pdf()[:200], None),
])
def test_pdf_whose_structure_does_not_parse_is_invalid_pdf(app, client, auth, user, body, detail):
    assert_error(send(client, auth, user, body, "application/pdf"), 400, "Invalid PDF file.", detail)
    assert (row_count(app), object_count(app)) == (0, 0)


# --- serving ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared, body, name, content_type, disposition", [
    ("text/plain", b"log line\n", "build.log", "text/plain; charset=utf-8", 'inline; filename="build.log"'),
    ("text/plain", b"# hi\n", "notes.md", "text/markdown; charset=utf-8", 'inline; filename="notes.md"'),
    ("text/csv", b"a,b\n", "t.csv", "text/csv; charset=utf-8", 'inline; filename="t.csv"'),
    ("application/json", b"{}", "p.json", "application/json", 'inline; filename="p.json"'),
    ("application/pdf", make_pdf(), "report.pdf", "application/pdf", 'attachment; filename="report.pdf"'),
    ("application/pdf", make_pdf(), None, "application/pdf", "attachment"),
    ("application/pdf", make_pdf(), "r\u00e9sum\u00e9.pdf", "application/pdf",
     "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
])
def test_downloads_carry_the_type_disposition_and_sandbox_policy(client, auth, user, declared, body, name,
                                                                 content_type, disposition):
    file_id = send(client, auth, user, body, declared, name).json["id"]
    for method in (client.get, client.head):
        response = method(f"/api/v2/chats/files/{file_id}", headers=auth)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Content-Disposition"] == disposition
        assert response.headers["Content-Security-Policy"] == SANDBOX_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Length"] == str(len(body))
        assert response.headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    revalidated = client.get(f"/api/v2/chats/files/{file_id}", headers={**auth, "If-None-Match": response.headers["ETag"]})
    assert revalidated.status_code == 304
    assert revalidated.headers["Content-Security-Policy"] == SANDBOX_POLICY


def test_images_and_their_variants_carry_no_sandbox_policy(client, auth, user):
    file_id = send(client, auth, user, make_image("image/png", 40, 30), "image/png", "a.png").json["id"]
    for path in ("", "/thumbnail", "/preview"):
        response = client.get(f"/api/v2/chats/files/{file_id}{path}", headers=auth)
        assert response.status_code == 200
        assert "Content-Security-Policy" not in response.headers
        assert response.headers["Content-Disposition"].startswith("inline")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("declared, body", [("text/plain", b"hello"), ("application/pdf", make_pdf())])
def test_files_without_pixels_have_no_variants(app, client, auth, user, declared, body):
    file_id = send(client, auth, user, body, declared, "f").json["id"]
    info = client.get(f"/api/v2/chats/files/{file_id}/info", headers=auth).json
    assert {key: info[key] for key in ("width", "height", "thumbnail", "preview", "animated")} == {
        "width": None, "height": None, "thumbnail": None, "preview": None, "animated": False}
    assert (info["size"], info["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert_error(client.get(f"/api/v2/chats/files/{file_id}/thumbnail", headers=auth), 404, "The file has no thumbnail.")
    assert_error(client.get(f"/api/v2/chats/files/{file_id}/preview", headers=auth), 404, "The file has no preview.")
    assert object_count(app) == 1  # the original only


def test_an_image_whose_variants_are_not_made_yet_keeps_its_message(app, client, auth, user):
    file_id = send(client, auth, user, make_image(), "image/png").json["id"]
    with app.app_context(), models.db.connection_context():
        models.ChatFileVariant.delete().execute()
    assert_error(client.get(f"/api/v2/chats/files/{file_id}/thumbnail", headers=auth), 404, "The file has no thumbnail yet.")


def test_the_object_has_the_stored_type_and_no_dimensions(app, client, auth, user):
    file_id = send(client, auth, user, b'{"a": 1}', "text/plain", "a.json").json["id"]
    stored = stored_object(app, file_id)
    assert stored.content_type == "application/json"
    assert "width" not in stored.metadata and "height" not in stored.metadata
    assert stored.metadata["filename"] == "a.json"


# --- the jobs ---------------------------------------------------------------------------------------------


def test_generate_variants_counts_files_without_pixels_apart_and_does_not_fail(app, client, auth, user, runner):
    send(client, auth, user, b"hello", "text/plain")
    send(client, auth, user, make_pdf(), "application/pdf")
    send(client, auth, user, make_image(), "image/png")
    result = runner.invoke(args=["generate-variants", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {key: summary[key] for key in ("files", "complete", "no_variants", "generated", "failed")} == {
        "files": 3, "complete": 1, "no_variants": 2, "generated": 0, "failed": []}


def test_gc_storage_keeps_files_without_variants(app, client, auth, user, runner):
    send(client, auth, user, b"hello", "text/plain")
    send(client, auth, user, make_pdf(), "application/pdf")
    result = runner.invoke(args=["gc-storage", "--older-than", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["deleted"], summary["failed"], summary["kept_with_row"]) == ([], [], 2)
    assert object_count(app) == 2


@pytest.mark.parametrize("ask", ["range past the end", "thumbnail"])
def test_an_error_about_a_file_without_pixels_keeps_its_sandbox_policy_and_nosniff(client, auth, user, ask):
    # The contract: every non-image response carries the policy, every response keeps nosniff, errors too.
    file_id = send(client, auth, user, b"# notes\n", "text/markdown").json["id"]
    if ask == "thumbnail":
        response = client.get(f"/api/v2/chats/files/{file_id}/thumbnail", headers=auth)
        assert_error(response, 404, "The file has no thumbnail.")
    else:
        response = client.get(f"/api/v2/chats/files/{file_id}", headers={**auth, "Range": "bytes=100-"})
        assert_error(response, 416, "Range not satisfiable.")
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_an_image_error_carries_nosniff_and_no_sandbox_policy(client, auth, user):
    file_id = send(client, auth, user, make_image(), "image/png").json["id"]
    response = client.get(f"/api/v2/chats/files/{file_id}", headers={**auth, "Range": "bytes=999999-"})
    assert_error(response, 416, "Range not satisfiable.")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in response.headers

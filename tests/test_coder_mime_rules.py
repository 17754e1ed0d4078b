"""The peer checks of upstream Coder's attachment rules, reproduced where our contract agrees with them.

Source: coder/coder ``coderd/chatfiles/mime.go`` and ``coderd/chatfiles/mime_test.go``
(TestClassifyStoredMediaType, TestIsCompatibleUploadMediaType, TestIsAllowedStoredMediaType,
TestIsInlineRenderableStoredMediaType, TestHasSVGRootElement, TestPrepareStoredFile). Each case keeps
Coder's name. Coder classifies by content with a sniffer and stores what it finds; we take the declared
type and make the bytes prove it, so a case is reproduced as the upload a client would make. Where the
contract disagrees, the case is listed at the end with the reason, not tested:

- CSVFromDetector, JSONFromDetector (``report.txt`` holding CSV or JSON becomes text/csv or
  application/json in Coder): we refine text/plain by the display name's extension only, never by sniffing.
- HTMLFallsBackToTextPlain (an HTML document stored as text/plain in Coder): HTML at the root is refused
  here whatever it is declared as (CONTRACT.md, "Attachment types").
- PDF with the bytes ``%PDF-1.7\\n`` alone (stored by Coder): a PDF must parse here; a real one is used.
- RejectsEmptyNormalizedName: a display name is optional here.
- image/avif not allowed in Coder: camera images are accepted here (imaging/).
"""

import pytest

from harness.documents import make_pdf
from harness.imaging import make_image
from tests.test_files import assert_error, upload

pytestmark = [pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
              pytest.mark.parametrize("storage_config", ["local"], indirect=True)]


def send(client, auth, user, data, declared, name):
    return upload(client, auth, data, declared, user["organization_id"],
                  headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}"})


def info(client, auth, response):
    assert response.status_code == 201, response.json
    return client.get(f"/api/v2/chats/files/{response.json['id']}/info", headers=auth).json


# TestClassifyStoredMediaType: a text/plain upload (how a client sends a file it cannot name the type of).
@pytest.mark.parametrize("case, name, data, want", [
    ("PlainText", "build.log", b"build succeeded\n", "text/plain"),
    ("MarkdownFromExtension", "notes.md", b"# Release notes\n", "text/markdown"),
    ("UppercaseJSONExtension", "data.JSON", b'{"ok":true}', "application/json"),
    ("InvalidJSONExtensionFallsBackToPlainText", "broken.json", b"not json", "text/plain"),
    ("UppercaseMDExtension", "NOTES.MD", b"# Notes\n", "text/markdown"),
    ("MarkdownMentioningSVGStaysMarkdown", "notes.md", b"# SVG Example\n<svg width=\"100\">...</svg>", "text/markdown"),
    ("CSVMentioningSVGStaysCSV", "report.csv", b"name,icon\nlogo,<svg><rect/></svg>\n", "text/csv"),
    ("TextMentioningSVGStaysPlainText", "main.go", b"package main\n// renders <svg> tags\n", "text/plain"),
])
def test_classify_stored_media_type(client, auth, user, case, name, data, want):
    assert info(client, auth, send(client, auth, user, data, "text/plain", name))["content_type"] == want, case


@pytest.mark.parametrize("case, name, data, declared, message", [
    ("XMLStaysBlocked", "note.xml", b'<?xml version="1.0"?><note><to>Tove</to></note>', "text/plain",
     "Unsupported file type."),
    ("SVGBlockedEvenWhenNamedText", "notes.txt", b'<svg xmlns="http://www.w3.org/2000/svg"><text>Hello</text></svg>',
     "text/plain", "Unsupported file type."),
    ("RejectsUnsupportedStoredFileType", "evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>',
     "image/svg+xml", "Unsupported file type."),
    ("BinaryOctetStream", "data.bin", bytes([0, 1, 2, 3, 4, 5]), "text/plain", "Invalid text file."),
])
def test_blocked_content_is_refused(client, auth, user, case, name, data, declared, message):
    assert_error(send(client, auth, user, data, declared, name), 400, message)


def test_pdf_is_stored_as_pdf(client, auth, user):
    assert info(client, auth, send(client, auth, user, make_pdf(), "application/pdf", "report.pdf"))[
        "content_type"] == "application/pdf"


# TestIsCompatibleUploadMediaType: which stored type a declared type may end as.
@pytest.mark.parametrize("case, declared, name, data, stored", [
    ("ExactMatch", "text/plain", "a.txt", b"hello", "text/plain"),
    ("TextPlainRefinesToMarkdown", "text/plain", "a.md", b"# hi", "text/markdown"),
    ("TextPlainRefinesToCSV", "text/plain", "a.csv", b"a,b", "text/csv"),
    ("TextPlainRefinesToJSON", "text/plain", "a.json", b"[1]", "application/json"),
])
def test_compatible_upload_media_types(client, auth, user, case, declared, name, data, stored):
    assert info(client, auth, send(client, auth, user, data, declared, name))["content_type"] == stored, case


def test_text_plain_does_not_refine_to_png(client, auth, user):  # TextPlainDoesNotRefineToPNG
    assert_error(send(client, auth, user, make_image("image/png"), "text/plain", "a.png"), 400, "Unsupported file type.")


def test_json_does_not_refine_to_plain_text(client, auth, user):  # JSONDoesNotRefineToPlainText
    assert_error(send(client, auth, user, b"plain words", "application/json", "a.txt"), 400, "Invalid JSON file.")


# TestIsAllowedStoredMediaType: what a declared type may be (parameters ignored).
@pytest.mark.parametrize("declared, data, allowed", [
    ("text/plain; charset=utf-8", b"x", True),
    ("text/markdown", b"x", True),
    ("text/csv", b"x", True),
    ("application/json", b"{}", True),
    ("application/pdf", make_pdf(), True),
    ("image/png", make_image("image/png"), True),
    ("image/svg+xml", b"<svg/>", False),
    ("application/zip", b"PK\x03\x04", False),
])
def test_allowed_stored_media_types(client, auth, user, declared, data, allowed):
    response = upload(client, auth, data, declared, user["organization_id"])
    assert (response.status_code == 201) is allowed, response.json


# TestIsInlineRenderableStoredMediaType: PDFs are stored but download-only.
@pytest.mark.parametrize("declared, data, inline", [
    ("text/plain; charset=utf-8", b"x", True),
    ("text/markdown", b"x", True),
    ("image/png", make_image("image/png"), True),
    ("application/pdf", make_pdf(), False),
])
def test_inline_renderable_stored_media_types(client, auth, user, declared, data, inline):
    file_id = upload(client, auth, data, declared, user["organization_id"]).json["id"]
    disposition = client.get(f"/api/v2/chats/files/{file_id}", headers=auth).headers["Content-Disposition"]
    assert disposition.startswith("inline" if inline else "attachment")


# TestHasSVGRootElement (our check refuses HTML and XML roots too).
@pytest.mark.parametrize("data, refused", [
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', True),
    (b"\xef\xbb\xbf<svg></svg>", True),
    (b"# SVG Example\n<svg width=\"100\">...</svg>", False),
    (b"name,icon\nlogo,<svg><rect/></svg>\n", False),
])
def test_svg_root_element(client, auth, user, data, refused):
    response = send(client, auth, user, data, "text/plain", "x.txt")
    assert (response.status_code == 400 and response.json["message"] == "Unsupported file type.") is refused


# TestPrepareStoredFile: the display name.
def test_strips_control_characters_and_trims_exposed_whitespace(client, auth, user):
    name = "%00%20release%09%20notes.txt%20%00"  # "\x00 release\t notes.txt \x00"
    assert info(client, auth, send(client, auth, user, b"hello", "text/plain", name))["name"] == "release notes.txt"


def test_truncates_names_at_rune_boundaries(client, auth, user):
    name = "%E7%95%8C" * 100  # "界" x 100: 300 bytes
    stored = info(client, auth, send(client, auth, user, b"hello", "text/plain", name))["name"]
    assert stored == "界" * 85 and len(stored.encode()) == 255

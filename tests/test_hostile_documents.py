"""The hostile corpus of the text and PDF attachments: each attack, and the defence that answers it.

Most run the verifiers in this process (filetypes.text, filetypes.pdf: what
the sandbox runs), so a test can see which defence answered and what work
was done; the last ones go through the upload route and the decode sandbox,
whose memory and time limits are the last line for all of them.
"""

import zlib

import pytest
import pypdf.filters

import filetypes
from filetypes import pdf, text
from harness.documents import (CATALOG_AND_PAGES, assemble, flate_bomb, make_pdf, object_stream_pdf, one_page,
                               stream, with_object_stream)
from tests.test_files import assert_error, row_count, upload

TEN_MIB = 10 * 1024 * 1024


def refused(verify, data, *args):
    """The InvalidFile or WrongFamily that ``verify(data, *args)`` raises."""
    with pytest.raises((filetypes.InvalidFile, filetypes.WrongFamily)) as raised:
        verify(data, *args)
    return raised.value


# --- text and JSON --------------------------------------------------------------------------------------


def test_ten_mib_of_open_brackets_is_refused_by_the_container_bound_before_parsing():
    error = refused(text.verify_text, b"[" * TEN_MIB, "required")
    assert (error.message, error.detail) == ("Invalid JSON file.", "It has more than 1000000 arrays and objects.")


@pytest.mark.parametrize("document", [
    b"[" * 999_999,  # under the container bound, never closed
    b"[" * 200_000 + b"]" * 200_000,
    b'{"a":' * 129 + b"1" + b"}" * 129,
    (b"[" * 127 + b"[]" + b"]" * 127 + b",") * 1000,  # each repetition 128 deep: many peaks to walk
])
def test_deep_json_is_refused_by_the_depth_bound_not_the_parsers_recursion(document):
    if document.endswith(b","):
        document = b"[" + document[:-1] + b"]"  # one more level around it all: 129
    error = refused(text.verify_text, document, "required")
    assert (error.message, error.detail) == ("Invalid JSON file.", "It nests deeper than 128 levels.")


@pytest.mark.parametrize("document, depth", [
    (b'[1, "[[[", {"a": "\\\\"}, "\\"[", [[]]]', 3),
    (b'"\\\\\\""', 0),
    (b'[[[]], [[[[]]]]]', 5),
    (b'{"k": "}}}}]]]]"}', 1),
    (b'["\\\\\\\\", ["\\\\"]]', 2),
])
def test_nesting_depth_ignores_brackets_in_strings_and_escapes(document, depth):
    assert text.nesting_depth(text.json_brackets(document)) == depth


def test_huge_numbers_and_strings_are_json_without_converting_them():
    assert text.verify_text(b"1" * TEN_MIB, "required") is True
    assert text.verify_text(b"[" + b"9" * 100_000 + b"e99999999]", "required") is True
    assert text.verify_text(b'"' + b"a" * TEN_MIB + b'"', "required") is True


def test_ten_mib_of_text_is_text():
    assert text.verify_text(b"a log line that goes on and on\n" * (TEN_MIB // 31), "none") is False


@pytest.mark.parametrize("disguise", [
    b"<svg onload=alert(1)>", b"\xef\xbb\xbf<svg/>", b"\t\r\n <SVG>", b"<?xml version='1.0'?><x/>",
    b"<!doctype html>", b"<html>", b"<!--x--> <!--y--><script>", b"<svg:svg xmlns:svg='http://www.w3.org/2000/svg'>",
    b"<x xmlns='http://www.w3.org/1999/xhtml'>", b"<!-- <svg> -->\n<svg>",
])
@pytest.mark.parametrize("json_check", ["none", "try", "required"])
def test_markup_disguised_as_text_markdown_csv_or_json_is_another_family(disguise, json_check):
    error = refused(text.verify_text, disguise + b"\nmore text", json_check)
    assert isinstance(error, filetypes.WrongFamily)


def test_a_flood_of_root_comments_is_markup_after_a_bounded_walk():
    error = refused(text.verify_text, b"<!---->" * (TEN_MIB // 7), "none")
    assert str(error) == ("The file content is markup (more than 64 HTML comments before anything else): "
                          "SVG, HTML and XML are never accepted.")


def test_ten_mib_of_whitespace_is_text():
    assert text.verify_text(b" " * TEN_MIB, "none") is False


# --- PDF ------------------------------------------------------------------------------------------------


def test_a_real_pdf_and_one_with_object_streams_are_accepted():
    assert pdf.verify_pdf(make_pdf(3)) == 3
    assert pdf.verify_pdf(object_stream_pdf()) == 1


def page_tree(kids, count=1):
    objects = one_page()
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count)
    return assemble(objects)


@pytest.mark.parametrize("name, document, detail", [
    ("truncated", make_pdf(2)[:300], None),
    ("header only", b"%PDF-1.7\n", "Its structure does not parse: Stream has ended unexpectedly."),
    ("no xref", assemble(one_page(), xref=False), "Its structure does not parse: startxref not found."),
    ("page tree that contains itself", page_tree(b"2 0 R"), "Its structure does not parse: Detected cyclic page references."),
    ("page tree through itself and a page", page_tree(b"3 0 R 2 0 R"),
     "Its structure does not parse: Detected cyclic page references."),
    ("no /Kids", assemble({**one_page(), 2: b"<< /Type /Pages /Count 1 >>"}), "Its page tree lists no pages."),
    ("empty /Kids", page_tree(b"", count=0), "Its page tree lists no pages."),
    ("no page tree", assemble({**one_page(), 1: b"<< /Type /Catalog >>"}), None),
    ("object stream claiming a billion objects",
     with_object_stream(b"1 0 2 35 " + CATALOG_AND_PAGES, 10**9, first=9), None),
    ("object stream starting past its end", with_object_stream(b"1 0 2 35 " + CATALOG_AND_PAGES, 2, first=10**12), None),
])
def test_broken_or_looping_structures_are_invalid_pdf(name, document, detail):
    error = refused(pdf.verify_pdf, document)
    assert error.message == "Invalid PDF file.", name
    if detail is not None:
        assert error.detail == detail


@pytest.mark.parametrize("name, document", [
    ("/Prev chain that loops on itself", assemble(one_page(), prev="self")),
    ("/Prev to offset 0", assemble(one_page(), prev=0)),
    ("huge /Count", page_tree(b"3 0 R", count=2**31 - 1)),
])
def test_what_a_careful_reader_recovers_is_accepted(name, document):
    assert pdf.verify_pdf(document) == 1, name


def test_a_flate_bomb_in_a_content_stream_is_never_inflated(monkeypatch):
    inflated = []
    real = pypdf.filters.decompress
    monkeypatch.setattr(pypdf.filters, "decompress", lambda data: inflated.append(len(data)) or real(data))
    document = assemble(one_page(stream(flate_bomb(1 << 26), Filter=b"/FlateDecode")))  # 64 MiB in 64 KB
    assert pdf.verify_pdf(document) == 1
    assert inflated == []


def test_an_object_stream_bomb_stops_at_the_lowered_inflate_limit(monkeypatch):
    outputs = []
    real = pypdf.filters._decompress_with_limit
    monkeypatch.setattr(pypdf.filters, "_decompress_with_limit", lambda data: outputs.append(real(data)) or outputs[-1])
    head = b"1 0 2 35 "
    compressor = zlib.compressobj(9)
    bomb = compressor.compress(head + CATALOG_AND_PAGES) + b"".join(
        compressor.compress(b" " * (1 << 20)) for _ in range(64)) + compressor.flush()  # 64 MiB of spaces
    # (under pypdf's own 75 MB limit: only the lowered one stops it)
    document = with_object_stream(b"", 2, filtered=False, first=len(head)).replace(
        b"/Length 0 /Type /ObjStm /N 2 /First 9 >>\nstream\n\nendstream",
        b"/Length %d /Type /ObjStm /N 2 /First 9 /Filter /FlateDecode >>\nstream\n" % len(bomb) + bomb + b"\nendstream")
    assert refused(pdf.verify_pdf, document).message == "Invalid PDF file."
    assert outputs == []  # refused at the limit: nothing inflated was kept


def test_a_corrupt_object_stream_is_retried_a_bounded_number_of_bytes(monkeypatch):
    """pypdf retries a zlib stream that fails byte by byte, one Python loop turn each: at most a quarter MiB."""
    fed = []

    class Counting(tuple):
        def __getitem__(self, index):
            fed.append(index)
            return super().__getitem__(index)

    monkeypatch.setattr(pypdf.filters, "_SINGLE_BYTES", Counting(pypdf.filters._SINGLE_BYTES))
    corrupt = b"x\x9c" + bytes(range(256)) * 4 * 1024  # a zlib header, then 1 MiB that is no deflate data
    document = with_object_stream(b"", 2, filtered=False).replace(
        b"/Length 0 /Type /ObjStm /N 2 /First 0 >>\nstream\n\nendstream",
        b"/Length %d /Type /ObjStm /N 2 /First 0 /Filter /FlateDecode >>\nstream\n" % len(corrupt) + corrupt
        + b"\nendstream")
    assert refused(pdf.verify_pdf, document).message == "Invalid PDF file."
    assert 0 < len(fed) <= pdf.MAX_RECOVERY_INPUT


def test_an_encrypted_pdf_without_the_empty_password_is_invalid():
    from pypdf import PdfWriter
    import io

    writer = PdfWriter()
    writer.add_blank_page(width=10, height=10)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    error = refused(pdf.verify_pdf, buffer.getvalue())
    assert error.detail == "It is encrypted with a password: its structure cannot be read."

    writer = PdfWriter()
    writer.add_blank_page(width=10, height=10)
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    assert pdf.verify_pdf(buffer.getvalue()) == 1  # opens without a password, as a viewer would


# --- through the upload route: the sandbox ---------------------------------------------------------------


@pytest.fixture
def sqlite_client(sqlite_app):
    return sqlite_app.test_client()


@pytest.fixture
def member(sqlite_app):
    import cli
    import models

    with sqlite_app.app_context(), models.db.connection_context():
        made = cli.create_user("mallory", "acme", lifetime_days=1)
    return {"Coder-Session-Token": made["token"]}, made["organization_id"]


def test_ten_mib_of_open_brackets_uploaded_is_invalid_json(sqlite_app, sqlite_client, member):
    auth, organization = member
    response = upload(sqlite_client, auth, b"[" * TEN_MIB, "application/json", organization)
    assert_error(response, 400, "Invalid JSON file.", "It has more than 1000000 arrays and objects.")
    assert row_count(sqlite_app) == 0


def test_the_checks_run_in_the_sandbox_not_in_the_serving_process(sqlite_client, member, monkeypatch):
    def in_this_process(*args):
        raise AssertionError("parsed in the serving process")

    monkeypatch.setattr(text, "verify_text", in_this_process)
    monkeypatch.setattr(pdf, "verify_pdf", in_this_process)
    auth, organization = member
    assert upload(sqlite_client, auth, b"hello", "text/plain", organization).status_code == 201
    assert upload(sqlite_client, auth, make_pdf(), "application/pdf", organization).status_code == 201


def test_a_parse_past_the_sandboxs_memory_ceiling_is_answered_as_the_familys_invalid_file(sqlite_app, sqlite_client,
                                                                                        member):
    # A sandbox of its own with a small ceiling: 8 MiB + 2 MiB for the upload's mapping.
    sqlite_app.config.update(MAX_DECODE_MEMORY=8 * 1024 * 1024, MAX_FILE_SIZE=2 * 1024 * 1024)
    auth, organization = member
    lists = b"[" + b",".join([b"[]"] * 400_000) + b"]"  # within the bounds; 400,000 lists are ~30 MiB parsed
    response = upload(sqlite_client, auth, lists, "application/json", organization)
    assert_error(response, 400, "Invalid JSON file.",
                 "The file is too expensive to check: it needs more memory than the checker's ceiling.")
    assert upload(sqlite_client, auth, lists, "text/csv", organization).status_code == 201  # no parse: fine

"""Small PDFs for tests and benchmarks, real (made with pypdf) and hostile (assembled object by object)."""

import io
import zlib

from pypdf import PdfWriter


def make_pdf(pages=1):
    """A real PDF of ``pages`` blank pages, as pypdf writes it."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=100)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def assemble(objects, *, trailer=b"/Root 1 0 R", xref=True, prev=None, header=b"%PDF-1.7\n"):
    """A PDF of ``objects`` ({number: body bytes}) with a correct cross-reference table (or none), the trailer
    entries given and, with ``prev``, a /Prev pointing at that offset (None: no /Prev; "self": this very table)."""
    out = bytearray(header + b"%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    if not xref:
        return bytes(out + b"%%EOF\n")
    start = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number] if number in offsets else b"0000000000 65535 f \n"
    extra = b""
    if prev is not None:
        extra = b" /Prev %d" % (start if prev == "self" else prev)
    out += b"trailer\n<< /Size %d %s%s >>\nstartxref\n%d\n%%%%EOF\n" % (size, trailer, extra, start)
    return bytes(out)


def one_page(contents=None):
    """The objects of a one-page document; ``contents``: a content stream object's bytes, as object 4."""
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100]" + (b" /Contents 4 0 R" if contents else b"") + b" >>",
    }
    if contents:
        objects[4] = contents
    return objects


def stream(data, **entries):
    """A stream object with /Length and the given entries (already PDF syntax)."""
    head = b" ".join(b"/%s %s" % (key.encode(), value) for key, value in entries.items())
    return b"<< /Length %d %s >>\nstream\n" % (len(data), head) + data + b"\nendstream"


def flate_bomb(inflated=1 << 30):
    """zlib data that inflates to ``inflated`` zero bytes (about a thousandth of that compressed)."""
    compressor = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated >> 20)]
    return b"".join(parts) + compressor.flush()


def with_object_stream(objstm_data, count, *, filtered=True, first=None):
    """A one-page PDF whose catalog (1) and page tree (2) live in an object stream (object 5) of ``count``
    declared objects holding ``objstm_data`` (its pairs header first: ``first`` is where the objects start),
    found through a cross-reference stream (PDF 1.5)."""
    data = zlib.compress(objstm_data) if filtered else objstm_data
    entries = {b"Type": b"/ObjStm", b"N": b"%d" % count, b"First": b"%d" % (first or 0)}
    if filtered:
        entries[b"Filter"] = b"/FlateDecode"
    body = {3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] >>",
            5: stream(data, **{key.decode(): value for key, value in entries.items()})}
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(body):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + body[number] + b"\nendobj\n"
    xref_at = len(out)
    rows = [b"\x00" + (0).to_bytes(4, "big") + (65535).to_bytes(2, "big"),
            b"\x02" + (5).to_bytes(4, "big") + (0).to_bytes(2, "big"),
            b"\x02" + (5).to_bytes(4, "big") + (1).to_bytes(2, "big"),
            b"\x01" + offsets[3].to_bytes(4, "big") + (0).to_bytes(2, "big"),
            b"\x00" + (0).to_bytes(4, "big") + (0).to_bytes(2, "big"),
            b"\x01" + offsets[5].to_bytes(4, "big") + (0).to_bytes(2, "big"),
            b"\x01" + xref_at.to_bytes(4, "big") + (0).to_bytes(2, "big")]
    xref = stream(b"".join(rows), Type=b"/XRef", Size=b"7", W=b"[1 4 2]", Root=b"1 0 R")
    out += b"6 0 obj\n" + xref + b"\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


CATALOG_AND_PAGES = b"<< /Type /Catalog /Pages 2 0 R >> << /Type /Pages /Kids [3 0 R] /Count 1 >>"


def object_stream_pdf():
    """A well-formed one-page PDF with its catalog and page tree in an object stream."""
    head = b"1 0 2 %d " % len(b"<< /Type /Catalog /Pages 2 0 R >> ")
    return with_object_stream(head + CATALOG_AND_PAGES, 2, first=len(head))

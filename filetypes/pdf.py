"""Proving that bytes are a PDF: the header, the cross-reference data and the page tree, parsed by pypdf.

Runs in a sandbox process (sandbox/tasks.py), on the upload's mapped file.
Nothing is rendered and no content stream is decoded: only the objects the
structure needs are read (the catalog, the page tree; object and
cross-reference streams are inflated when those objects live in them).
pypdf's own limits (page tree depth and entries, cycle detection, stream
lengths, xref stream entries) stop most hostile files; its recovery is kept
(a loop in the ``/Prev`` chain, a broken offset table pypdf rebuilds by
scanning) where it finds a document. The inflate limit is lowered to what
object streams need, so an inflate bomb costs little before it is refused,
and the sandbox's memory and CPU limits bound whatever is left.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from pypdf import PasswordType, PdfReader, apply_configuration

from filetypes import INVALID_MESSAGES, PDF, PDF_HEADER, InvalidFile, WrongFamily

HEADER = PDF_HEADER
# Inflated bytes one stream may give: object and cross-reference streams hold dictionaries and offsets, a few
# megabytes in the largest documents; content streams, the ones that are big, are never inflated.
MAX_INFLATED = 16 * 1024 * 1024
# A corrupt zlib stream makes pypdf retry it a byte per Python loop turn (its recovery of streams some old
# writers ended badly): a quarter MiB of that is a fraction of a second, its default 5 MB several seconds.
MAX_RECOVERY_INPUT = 256 * 1024
LIMITS: dict[str, Any] = {
    "zlib_maximum_output_length": MAX_INFLATED,
    "lzw_maximum_output_length": MAX_INFLATED,
    "run_length_maximum_output_length": MAX_INFLATED,
    "brotli_maximum_output_length": MAX_INFLATED,
    "array_based_stream_maximum_output_length": MAX_INFLATED,
    "zlib_maximum_recovery_input_length": MAX_RECOVERY_INPUT,
    "jbig2dec_binary": None,  # never start a program on an upload
}

# A hostile file makes pypdf log a warning per oddity it recovers from: not the service's news.
logging.getLogger("pypdf").setLevel(logging.CRITICAL)


def verify_pdf(data: Any) -> int:
    """The number of pages of the PDF ``data`` (any buffer: bytes, the upload's mmap); raises WrongFamily
    for what does not start with ``%PDF-`` and InvalidFile (``Invalid PDF file.``) for what does not parse."""
    if bytes(data[:len(HEADER)]) != HEADER:
        raise WrongFamily("The file content is not a PDF (it does not start with %PDF-).")
    with apply_configuration(**LIMITS):
        try:
            pages = _count_pages(PdfReader(io.BytesIO(data), strict=False))
        except InvalidFile:
            raise
        except MemoryError:
            raise  # the sandbox's ceiling: it answers for the process
        except Exception as error:  # pypdf raises many types (its own, KeyError, ValueError ...) on broken input
            raise InvalidFile(INVALID_MESSAGES[PDF], f"Its structure does not parse: {_describe(error)}") from None
    if pages == 0:
        raise InvalidFile(INVALID_MESSAGES[PDF], "Its page tree lists no pages.")
    return pages


def _count_pages(reader: PdfReader) -> int:
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise InvalidFile(INVALID_MESSAGES[PDF], "It is encrypted with a password: its structure cannot be read.")
    return len(reader.pages)


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return (text[:200] + "...") if len(text) > 200 else text.rstrip(".") + "."

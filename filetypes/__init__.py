"""What may be attached, and how each kind is proved, stored and served: one table, as data.

After coder/coder's ``coderd/chatfiles/mime.go`` and Zulip's upload rules: a
family per row (web and camera images, text, documents) with the declared
types it accepts, whether it has pixels (then variants are made), how its
stored type is chosen, and the headers a download carries. The declared type
picks the family; the bytes must then prove they belong to it (the image
decode, text.verify_text, pdf.verify_pdf, all in a sandbox process), and the
stored type is the family's rule applied to what the bytes proved.

The image types are imaging.images.ALLOWED_TYPES, so a decoder added there is
accepted here too. The table is built once, at import, and looked up by type:
every upload and download asks it. Nothing in this module parses untrusted
bytes.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from imaging import images

IMAGE, TEXT, PDF = "image", "text", "pdf"
TEXT_TYPES = ("text/plain", "text/markdown", "text/csv", "application/json")
JSON_TYPE = "application/json"
PDF_TYPE = "application/pdf"
PDF_HEADER = b"%PDF-"  # a PDF's first bytes: what tells it from every other family

# text/plain uploads named like these are stored as the richer type (JSON only when the bytes parse as JSON).
REFINED_BY_EXTENSION = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".json": JSON_TYPE}

# Every non-image download: a document from a user's bytes never runs script or loads anything on this origin.
SANDBOX_POLICY = "sandbox; default-src 'none'"


@dataclass(frozen=True)
class Family:
    name: str
    declared: tuple[str, ...]  # the Content-Type values an upload may declare for it
    pixels: bool  # decoded as an image: has width, height and variants
    disposition: str  # "inline" or "attachment" (downloaded, never shown by the browser from this origin)


# The table, in the order the ``Allowed types:`` detail lists them.
FAMILIES = (
    Family(IMAGE, images.ALLOWED_TYPES, pixels=True, disposition="inline"),
    Family(TEXT, TEXT_TYPES, pixels=False, disposition="inline"),
    Family(PDF, (PDF_TYPE,), pixels=False, disposition="attachment"),
)
ALLOWED_TYPES = tuple(declared for family in FAMILIES for declared in family.declared)
_FAMILY_OF = {declared: family for family in FAMILIES for declared in family.declared}


def family_of(content_type: str) -> Family | None:
    """The family a declared (or stored) type belongs to; None for a type nothing accepts."""
    return _FAMILY_OF.get(content_type)


def has_pixels(content_type: str) -> bool:
    """Whether a stored file of this type is an image (has dimensions and variants)."""
    family = family_of(content_type)
    return family is not None and family.pixels


class JsonCheck:
    """What a text upload's verification does about JSON: it must parse, it may (and says whether), or no parse."""

    REQUIRED, TRY, NONE = "required", "try", "none"


def json_check(declared: str, name: str | None) -> str:
    """JsonCheck for a text upload declared ``declared`` and named ``name``."""
    if declared == JSON_TYPE:
        return JsonCheck.REQUIRED
    if declared == "text/plain" and _refined(name) == JSON_TYPE:
        return JsonCheck.TRY
    return JsonCheck.NONE


def stored_text_type(declared: str, name: str | None, is_json: bool) -> str:
    """The stored type of a proved text upload: the declared type, text/plain refined by the name's extension."""
    if declared != "text/plain":
        return declared
    refined = _refined(name)
    if refined is None or (refined == JSON_TYPE and not is_json):
        return declared
    return refined


def _refined(name: str | None) -> str | None:
    return REFINED_BY_EXTENSION.get(posixpath.splitext(name or "")[1].lower())


@dataclass(frozen=True)
class Serving:
    """How a download of a stored type is answered."""

    content_type: str  # the Content-Type header's value
    disposition: str  # "inline" or "attachment"
    sandboxed: bool  # carries SANDBOX_POLICY: everything that is not an image


def serving(content_type: str) -> Serving:
    """How to serve a stored file of type ``content_type``: text with ``; charset=utf-8`` (JSON without: RFC
    8259 defines no charset parameter, JSON is UTF-8 by definition), PDF as an attachment only, every
    non-image under SANDBOX_POLICY. A type no family has (none is stored) is served as a sandboxed attachment."""
    family = family_of(content_type)
    if family is None:
        return Serving(content_type, "attachment", sandboxed=True)
    charset = family.name == TEXT and content_type.startswith("text/")
    header = content_type + "; charset=utf-8" if charset else content_type
    return Serving(header, family.disposition, sandboxed=not family.pixels)


INVALID_MESSAGES = {TEXT: "Invalid text file.", JSON_TYPE: "Invalid JSON file.", PDF: "Invalid PDF file."}
# Each message's error code (web/errors.py), which the upload-rejection metric counts by.
INVALID_CODES = {INVALID_MESSAGES[TEXT]: "invalid_text", INVALID_MESSAGES[JSON_TYPE]: "invalid_json",
                 INVALID_MESSAGES[PDF]: "invalid_pdf"}


class WrongFamily(ValueError):
    """The content is not of the declared type's family (an image declared as text, markup, not a PDF): 400
    ``Unsupported file type.``"""


class InvalidFile(ValueError):
    """The content is of its family but does not prove itself: 400 with ``message`` (INVALID_MESSAGES)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail

"""Proving that bytes are text: UTF-8 without NUL, not markup at the root, and JSON where JSON is asked for.

Runs in a sandbox process (sandbox/tasks.py), on the upload's mapped file.
Every step is linear in the size and runs at C speed (bytes.find, the UTF-8
decoder, re, bytes.translate/replace, the json module's C scanner), so a
10 MiB upload costs a few passes over its bytes (docs/PERFORMANCE.md).

Markup: SVG, HTML and XML are never stored, whatever they are declared as,
because a browser or a viewer that sniffs would run them. What counts is the
root: after a BOM, whitespace and HTML comments, the first thing is an XML
declaration or processing instruction (``<?``), a markup declaration
(``<!DOCTYPE``, ``<![CDATA[``), an element that the WHATWG sniffing
algorithm takes for HTML (``<html``, ``<script``, ``<div``, ``<p`` ...) or
SVG/MathML, or any element declaring an XML namespace. Markdown with inline
HTML further down, or text mentioning ``<svg>``, is text.

JSON nesting is bounded before the parse, so the parser's recursion is never
what stops a ``[[[[...`` document, and the parse keeps no values (numbers are
not converted, objects are dropped as they close).
"""

from __future__ import annotations

import codecs
import json
import re
from filetypes import INVALID_MESSAGES, JSON_TYPE, PDF_HEADER, TEXT, InvalidFile, JsonCheck, WrongFamily
from imaging import images

BOM = b"\xef\xbb\xbf"
UTF8_CHUNK = 64 * 1024  # under glibc's trim threshold (128 KiB): the same heap pages serve every chunk
MAX_JSON_DEPTH = 128  # serde_json's default recursion limit; real payloads nest a few dozen levels at most
MAX_JSON_CONTAINERS = 1_000_000  # each is a Python object while parsing: bounds the parse's time and memory
MAX_ROOT_COMMENTS = 64  # HTML comments skipped before the root; more and it is markup
# The elements the WHATWG MIME sniffing standard takes for HTML ("identifying a resource with an unknown
# MIME type"), with SVG and MathML, which run script or load resources as well.
MARKUP_ROOTS = frozenset({b"html", b"head", b"body", b"script", b"iframe", b"h1", b"div", b"font", b"table", b"a",
                          b"style", b"title", b"b", b"br", b"p", b"svg", b"math"})

_SPACE = re.compile(rb"[ \t\n\r\f]*")
_OPENING_TAG = re.compile(rb"<([a-z][a-z0-9:._-]*)([ \t\n\r\f/>]|$)")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))
_RUNS = re.compile(rb"\[+|\]+")
PEELS = 4  # after them, at most one run in ten brackets is left to walk
_BRACKETS_AS_SQUARE = bytes.maketrans(b"{}", b"[]")

Text = images.ImageBytes  # bytes, or the upload's file mapped (an mmap)


def verify_text(data: Text, json_check: str) -> bool:
    """Whether ``data`` parsed as JSON (only looked at when ``json_check`` asks); raises WrongFamily or
    InvalidFile (``Invalid text file.``, ``Invalid JSON file.``)."""
    check_family(data)
    nul = data.find(b"\0")
    if nul != -1:
        raise InvalidFile(INVALID_MESSAGES[TEXT], f"It holds a NUL byte (at byte {nul}): text never does.")
    not_utf8 = utf8_error(data)
    if not_utf8 is not None:
        raise InvalidFile(INVALID_MESSAGES[TEXT], f"It is not UTF-8 (byte {not_utf8[0]}: {not_utf8[1]}).")
    if json_check == JsonCheck.NONE:
        return False
    try:
        parse_json(data, str(data[len(BOM):] if data[:3] == BOM else data, "utf-8"))
    except InvalidFile:
        if json_check == JsonCheck.REQUIRED:
            raise
        return False
    return True


def utf8_error(data: Text) -> tuple[int, str] | None:
    """(byte offset, reason) of the first thing in ``data`` that is not UTF-8, or None.

    Decoded a chunk at a time and thrown away: the check needs no 10 MiB string (whose fresh pages cost more
    than the decode itself in a sandbox that returns its memory after each task).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with memoryview(data) as view:
        for start in range(0, max(len(view), 1), UTF8_CHUNK):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(view[start:start + UTF8_CHUNK], final=start + UTF8_CHUNK >= len(view))
            except UnicodeDecodeError as error:
                return start - pending + error.start, error.reason
    return None


def check_family(data: Text) -> None:
    """WrongFamily when the bytes are an image, a PDF or markup at the root, whatever the declared text type."""
    if images.sniff(data) is not None:
        raise WrongFamily("The file content is an image, not text.")
    if data[:len(PDF_HEADER)] == PDF_HEADER:
        raise WrongFamily("The file content is a PDF, not text.")
    markup = markup_root(data)
    if markup is not None:
        raise WrongFamily(f"The file content is markup ({markup}): SVG, HTML and XML are never accepted.")


def markup_root(data: Text) -> str | None:
    """What markup the content's root is (``<svg>``, ``an XML declaration`` ...), or None for text."""
    position = len(BOM) if data[:3] == BOM else 0
    for _ in range(MAX_ROOT_COMMENTS + 1):
        position = _SPACE.match(data, position).end()  # type: ignore[union-attr]  # * always matches
        if data[position:position + 4] != b"<!--":
            break
        end = data.find(b"-->", position + 4)
        if end == -1:
            return "an HTML comment that never ends"
        position = end + 3
    else:
        return f"more than {MAX_ROOT_COMMENTS} HTML comments before anything else"
    head = bytes(data[position:position + 1024]).lower()
    if head.startswith(b"<?"):
        return "an XML declaration or processing instruction"
    if head.startswith(b"<!"):
        return "a markup declaration such as <!DOCTYPE>"
    tag = _OPENING_TAG.match(head)
    if tag is None:
        return None
    name = tag.group(1)
    if name in MARKUP_ROOTS or name.rpartition(b":")[2] in (b"svg", b"html", b"math"):
        return f"a <{name.decode()}> element"
    if b"xmlns" in head[:head.find(b">") if b">" in head else len(head)]:
        return f"a <{name.decode()}> element with an XML namespace"
    return None


def parse_json(data: Text, text: str) -> None:
    """InvalidFile (``Invalid JSON file.``) unless ``text`` (``data`` decoded) is one JSON value (RFC 8259:
    no NaN or Infinity) of at most MAX_JSON_CONTAINERS arrays and objects nested at most MAX_JSON_DEPTH deep."""
    brackets = json_brackets(data)
    if len(brackets) > 2 * MAX_JSON_CONTAINERS:
        raise InvalidFile(INVALID_MESSAGES[JSON_TYPE], f"It has more than {MAX_JSON_CONTAINERS} arrays and objects.")
    if nesting_depth(brackets) > MAX_JSON_DEPTH:
        raise InvalidFile(INVALID_MESSAGES[JSON_TYPE], f"It nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        json.loads(text, parse_int=_drop, parse_float=_drop, parse_constant=_refuse_constant,
                   object_pairs_hook=_drop)
    except json.JSONDecodeError as error:
        raise InvalidFile(INVALID_MESSAGES[JSON_TYPE],
                          f"It does not parse: {error.msg} (line {error.lineno}, column {error.colno}).") from None
    except (ValueError, RecursionError) as error:
        raise InvalidFile(INVALID_MESSAGES[JSON_TYPE], f"It does not parse: {error}.") from None


def json_brackets(data: Text) -> bytes:
    """The document's brackets outside strings, ``{}`` written as ``[]``: what its nesting is made of.

    In C-speed passes: escaped backslashes, then escaped quotes go (a run of backslashes pairs up left to
    right, as the JSON lexer reads it), everything but quotes and brackets goes, then what lies between a
    quote and the next (a string) goes. Where the document is not JSON this may be wrong; the parse refuses
    it then anyway, and no earlier than the brackets counted here.
    """
    unescaped = bytes(data).replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.translate(_BRACKETS_AS_SQUARE, _NOT_STRUCTURE).split(b'"')[::2])


def nesting_depth(brackets: bytes) -> int:
    """The deepest any prefix of ``brackets`` (``[`` and ``]`` only) opens, in linear time.

    Peeling every adjacent ``[]`` pair keeps every other position's depth and lowers the peaks by one, so a
    few peels (C speed) leave few runs of the same bracket, which are then walked one run at a time.
    """
    peeled = 0
    while brackets and peeled < PEELS:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets, peeled = shorter, peeled + 1
    depth = deepest = 0
    for run in _RUNS.finditer(brackets):
        depth += len(run.group()) if run.group()[:1] == b"[" else -len(run.group())
        deepest = max(deepest, depth)
    return deepest + peeled if brackets else peeled


def _drop(*_: object) -> None:
    """Values are not kept: only whether the document parses matters."""


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")

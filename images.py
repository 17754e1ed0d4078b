"""Proving that bytes are the image they claim to be.

``verify_image`` is pure: sniff the leading bytes, then make Pillow decode
every pixel of every frame under a pixel budget. Anything that is not a
complete, well-formed PNG, JPEG, GIF or WebP raises :class:`InvalidImage`.
"""

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

ALLOWED_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}

# Pillow's own bomb check is ours to make, per request, from config.
Image.MAX_IMAGE_PIXELS = None


class UnsupportedType(ValueError):
    """The leading bytes are not one of the allowed image types."""


class InvalidImage(ValueError):
    """The bytes start like an allowed image but do not decode as one."""


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def sniff(data):
    """The image type the leading bytes announce, or None."""
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def verify_image(data, max_pixels):
    """Return the detected type and size of ``data``, or raise.

    Raises UnsupportedType when the leading bytes are no allowed image, and
    InvalidImage when Pillow cannot decode all of it within ``max_pixels``.
    """
    content_type = sniff(data)
    if content_type is None:
        raise UnsupportedType("The file content is not a PNG, JPEG, GIF or WebP image.")
    _check_container(data, content_type)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a truncated or odd file warns; treat it as invalid
            width, height = _decode_all_frames(data, content_type, max_pixels)
    except InvalidImage:
        raise
    except Exception as error:  # Pillow raises many types for corrupt input
        raise InvalidImage(f"The image could not be decoded: {error}.") from None
    return ImageInfo(content_type, width, height)


def _decode_all_frames(data, content_type, max_pixels):
    with Image.open(_BufferReader(data), formats=[PILLOW_FORMATS[content_type]]) as image:
        width, height = image.size
        frame_pixels = width * height
        if frame_pixels == 0:
            raise InvalidImage("The image has no pixels.")
        decoded = 0
        for frame in range(getattr(image, "n_frames", 1)):
            decoded += frame_pixels
            if decoded > max_pixels:
                raise InvalidImage(f"The image has more than {max_pixels} pixels.")
            image.seek(frame)
            image.load()
        return width, height


def _check_container(data, content_type):
    """Refuse bytes after the end of a PNG or WebP container: that is a polyglot."""
    if content_type == "image/png":
        end = _png_end(data)
    elif content_type == "image/webp":
        end = 8 + struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else len(data)
        end += end % 2  # RIFF pads odd-sized chunks
    else:
        return
    if end < len(data):
        raise InvalidImage(f"The image has {len(data) - end} unexpected bytes after its end.")


def _png_end(data):
    """Offset just past the IEND chunk, or len(data) when there is none (Pillow then fails)."""
    offset = 8
    view = memoryview(data)
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", view, offset)
        chunk_end = offset + 12 + length
        if bytes(view[offset + 4 : offset + 8]) == b"IEND":
            return chunk_end
        offset = chunk_end
    return len(data)


class _BufferReader(io.RawIOBase):
    """A seekable reader over any buffer, without the copy io.BytesIO makes of a bytearray."""

    def __init__(self, data):
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        chunk = self._view[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self):
        return self._pos

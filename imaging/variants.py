"""Thumbnails and previews: small still pictures made from an upload's own verifying decode.

The variants are data (after Zulip's ``zerver/lib/thumbnail.py``): one frozen
:class:`VariantSpec` each, one list, and the code loops over it; adding a size
is one line. Every variant is the first frame as it displays — EXIF
orientation applied, its colour profile converted to sRGB — scaled to fit its
box (never up) and encoded afresh, so no metadata (EXIF, GPS, XMP, text
chunks) is carried over. A variant marked ``original_if_fits`` is the original
itself when that is animated or already fits: it is not stored twice. Only
for web images: a camera image (HEIC/HEIF, AVIF) always gets a WebP, since
browsers and models may not read the original.

Memory: ``images.verify_image`` hands over its decoded first frame (a JPEG's
already decoded near the preview's scale, ``images.DRAFT_BOUND``), which is
shrunk once to the largest variant's box before anything else touches it; the
smaller variants come from that. The shrink goes band by band (imaging/banded.py), so
no full-size copy of the frame is made, not even the RGB(A) one Pillow needs
to resample a palette frame or the premultiplied one for alpha
(tests/test_variants.py counts them).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
from dataclasses import dataclass, replace

from PIL import Image, ImageCms

from imaging import banded, images


@dataclass(frozen=True)
class VariantSpec:
    name: str  # the route's last segment and the object key's
    max_width: int
    max_height: int
    original_if_fits: bool = False  # the original serves when it is animated or already fits


VARIANTS = (
    VariantSpec("thumbnail", 256, 256),
    VariantSpec("preview", 1280, 1280, original_if_fits=True),
)
NAMES = tuple(spec.name for spec in VARIANTS)
# The first frame is shrunk to this once; every variant is made from that.
WORKING_BOX = (max(spec.max_width for spec in VARIANTS), max(spec.max_height for spec in VARIANTS))

# WebP at quality 75 (libvips' default, what Zulip serves), effort 2 of 6:
# bench/variants.py measured it against JPEG and the other qualities and
# efforts (docs/PERFORMANCE.md, "Variants"): JPEG is 20 times faster but
# twice the bytes, libwebp's default effort (4) 10% smaller but twice the time.
ENCODING = ("WEBP", "image/webp", {"quality": 75, "method": 2})
EXTENSIONS = {"image/webp": ".webp", "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif"}

# Orientation tag values 2-8 and the transposition that makes them upright (EXIF 2.3, tag 0x0112).
ORIENTATION_TAG = 0x0112
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIDEWAYS = (5, 6, 7, 8)  # width and height swap when displayed
SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class Still:
    """The first frame, upright, in sRGB, fitting WORKING_BOX; and the whole image's displayed size."""

    image: Image.Image | None  # None once the variants are made (verify_and_make)
    width: int
    height: int


@dataclass(frozen=True)
class Made:
    """One variant of one file, ready to store (``data``) or served by the original (``original``)."""

    name: str
    content_type: str
    width: int
    height: int
    size: int
    sha256: str
    data: bytes | None = None

    @property
    def original(self) -> bool:
        return self.data is None


class FirstFrame:
    """``images.verify_image``'s ``on_first_frame``: keeps the still the variants are made from."""

    still: Still | None = None

    def __call__(self, frame: Image.Image, size: tuple[int, int]) -> None:
        self.still = still_of(frame, size)


def orientation(frame: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when absent or unreadable: a broken EXIF block is ignored, as browsers do."""
    try:
        value = int(_exif_of(frame).get(ORIENTATION_TAG, 1))
    except Exception:  # Pillow's EXIF parser raises many types for a malformed block
        return 1
    return value if value in UPRIGHT else 1


def _exif_of(frame: Image.Image) -> Image.Exif:
    """The frame's EXIF. An AVIF's orientation is its irot/imir only (MIAF), which Pillow reports as EXIF
    orientation: not the XMP tiff:Orientation getexif() falls back on, which browsers ignore there. (A
    HEIC's irot/imir libheif applies itself, and pillow-heif removes its EXIF and XMP orientation.)"""
    if frame.format != "AVIF":
        return frame.getexif()
    exif = Image.Exif()
    exif.load(frame.info.get("exif") or b"")
    return exif


def displayed_size(size: tuple[int, int], turn: int) -> tuple[int, int]:
    return (size[1], size[0]) if turn in SIDEWAYS else (size[0], size[1])


def still_of(frame: Image.Image, size: tuple[int, int]) -> Still:
    """The decoder's first ``frame`` (of an image of ``size``) made into a Still, leaving ``frame`` untouched."""
    turn = orientation(frame)
    width, height = displayed_size(size, turn)
    target = displayed_size(banded.fit(width, height, *WORKING_BOX), turn)  # in the frame's own orientation
    image = _shrunk(frame, target)
    image = _eight_bit(image)
    if turn in UPRIGHT:
        image = image.transpose(UPRIGHT[turn])
    image = _to_srgb(image, frame.info.get("icc_profile"), frame)
    return Still(image, width, height)


def verify_and_make(
    data: images.ImageBytes, max_pixels: int, max_memory: int | None, sha256: str
) -> tuple[images.ImageInfo, Still, list[Made]]:
    """An upload's whole image work: one decode that verifies ``data`` and feeds its variants.

    Returns (ImageInfo, Still, [Made]), the Still without its pixels: an upload
    keeps it through its slow storage writes, and a worker has 8 of them at
    once. Raises what ``images.verify_image`` raises.
    """
    first_frame = FirstFrame()
    info = images.verify_image(data, max_pixels, max_memory, on_first_frame=first_frame)
    still = first_frame.still
    assert still is not None  # verify_image decodes the first frame, or raises
    made = make(still, info.content_type, info.animated, len(data), sha256)
    return info, replace(still, image=None), made


def make(still: Still, content_type: str, animated: bool, size: int, sha256: str) -> list[Made]:
    """Every variant of an image: encoded from ``still``, or the original (its type, size and sha256) itself."""
    made: list[Made] = []
    for spec in VARIANTS:
        fits = still.width <= spec.max_width and still.height <= spec.max_height
        if spec.original_if_fits and content_type in images.WEB_TYPES and (animated or fits):
            made.append(Made(spec.name, content_type, still.width, still.height, size, sha256))
            continue
        width, height = banded.fit(still.width, still.height, spec.max_width, spec.max_height)
        image = still.image
        assert image is not None, "a still without its pixels makes no variant"
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
        data = _encode(image)
        made.append(Made(spec.name, ENCODING[1], width, height, len(data), hashlib.sha256(data).hexdigest(), data))
    return made


def renamed(name: str | None, content_type: str) -> str | None:
    """The display name with its extension changed to ``content_type``'s (None stays None)."""
    if not name:
        return name
    stem, extension = os.path.splitext(name)
    return (stem or name) + EXTENSIONS[content_type]


def _shrunk(frame: Image.Image, target: tuple[int, int]) -> Image.Image:
    """The frame at ``target`` in a mode Pillow resamples smoothly, never copied whole (imaging/banded.py)."""
    mode = _resamplable_mode(frame)
    if frame.size == target:
        return frame if frame.mode == mode else frame.convert(mode)  # it fits the box: a small copy
    return banded.resized(frame, target, mode)


def _resamplable_mode(frame: Image.Image) -> str:
    """The frame's mode if Pillow resamples it smoothly; RGB(A) for a palette or bilevel frame."""
    if frame.mode in ("RGB", "RGBA", "L", "LA", "CMYK", "I", "F") or frame.mode.startswith("I;16"):
        return frame.mode
    return "RGBA" if frame.has_transparency_data else "RGB"


def _eight_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grey (a 16-bit PNG) as 8-bit grey, keeping the top 8 bits as a browser shows it."""
    if image.mode == "F":
        return image.convert("L")
    if image.mode == "I" or image.mode.startswith("I;16"):
        return image.point(lambda value: value / 256).convert("L")
    return image


def _to_srgb(image: Image.Image, icc_profile: bytes | None, frame: Image.Image) -> Image.Image:
    """RGB (RGBA when any pixel is see-through), converted from the embedded profile to sRGB, without metadata.

    A profile lcms cannot use (broken, or for another colour space), or one
    beyond what browsers accept (acceptable_icc_profile), is ignored: the
    pixels are taken as sRGB, as browsers do.
    """
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    if alpha is not None and alpha.getextrema()[0] == 255:
        alpha = None  # fully opaque: no alpha channel to store
    colour = image if image.mode in ("RGB", "CMYK", "L") else image.convert("RGB")
    if icc_profile and acceptable_icc_profile(icc_profile):
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            converted = ImageCms.profileToProfile(colour, profile, SRGB, outputMode="RGB")
            if converted is not None:  # None only when converting in place
                colour = converted
        except Exception:  # lcms reports an unusable profile as PyCMSError, OSError or ValueError
            pass
    if colour.mode != "RGB":
        colour = colour.convert("RGB")
    elif colour is frame:
        colour = image.copy()  # never hand out (or change) the decoder's own frame
    if alpha is not None:
        colour.putalpha(alpha)
    colour.info = {}
    return colour


# --- embedded colour profiles ------------------------------------------------------
#
# LittleCMS parses and runs whatever pipeline a profile describes: a 1,868-byte
# PNG whose iCCP chunk inflates to a D2B0 'mpet' of 100,000 matrices kept it
# busy for 271 s (issue 16). So a profile goes to it only when a browser's colour
# engine would take it: Firefox's qcms (src/iccread.rs) and Chrome's skcms
# (skcms.cc, skcms_Parse). Beyond these bounds it is ignored like a broken one.

MAX_ICC_PROFILE_SIZE = 4 * 1024 * 1024  # qcms MAX_PROFILE_SIZE
MAX_ICC_TAGS = 1024  # qcms MAX_TAG_COUNT
# Elements of a multiProcessElements tag ('mpet': the D2Bx/B2Dx float
# pipelines, which LittleCMS prefers to A2Bx). qcms and skcms run none at all.
# A float profile's pipeline needs a few: curves, a matrix or a CLUT, curves.
# 16 leaves room for any of those, and LittleCMS then builds the transform in
# milliseconds (measured, a whole small upload: 10 matrices 0.05 s; 10,000
# matrices 5 s; 100,000 more than 20 s, minutes in the issue).
MAX_PIPELINE_ELEMENTS = 16
# Segments of all the segmented curves ('curf') of an mpet's curve sets, each
# counted as often as the pipeline uses it. LittleCMS evaluates a curve
# segment by segment: one curve set of 30,000 segments took 2.3 s, 16 of them
# more than a minute. A curve has a few (below, within and above 0..1); 256 is
# 16 RGB curve sets of 5.
MAX_PIPELINE_SEGMENTS = 256
# Grid points of a CLUT, the product over its inputs ('mft1'/'mft2' lut8/16,
# 'mAB '/'mBA ', an mpet's 'clut' element): qcms MAX_LUT_SIZE. A 33 x 33 x 33
# RGB grid is 35,937 points, a 17^4 CMYK one 83,521.
MAX_CLUT_POINTS = 500_000


def acceptable_icc_profile(data: bytes) -> bool:
    """Whether an embedded ICC profile is one browsers would use: its header (size, 'acsp'), its tag
    table and every tag inside the profile (skcms), and no pipeline or CLUT grid beyond the bounds above."""
    view = memoryview(data).cast("B")
    if not 132 <= len(view) <= MAX_ICC_PROFILE_SIZE or view[36:40] != b"acsp":
        return False
    size, count = struct.unpack_from(">I", view, 0)[0], struct.unpack_from(">I", view, 128)[0]
    if size > len(view) or count > MAX_ICC_TAGS or 132 + 12 * count > size:
        return False
    for entry in range(count):
        offset, length = struct.unpack_from(">II", view, 132 + 12 * entry + 4)
        if length < 4 or offset + length > size or not _acceptable_tag(view[offset : offset + length]):
            return False
    return True


def _acceptable_tag(tag: memoryview) -> bool:
    kind = bytes(tag[:4])
    if kind in (b"mft1", b"mft2"):  # inputs at 8, grid points (every axis) at 10
        return len(tag) >= 48 and tag[10] ** tag[8] <= MAX_CLUT_POINTS
    if kind in (b"mAB ", b"mBA "):  # inputs at 8, the CLUT's offset at 24 (0: none): a grid point count per input
        if len(tag) < 32:
            return False
        clut = struct.unpack_from(">I", tag, 24)[0]
        return clut == 0 or (clut + 20 <= len(tag) and math.prod(tag[clut : clut + min(tag[8], 16)]) <= MAX_CLUT_POINTS)
    if kind == b"mpet":
        return _acceptable_pipeline(tag)
    return True


def _acceptable_pipeline(tag: memoryview) -> bool:
    """An mpet: channels at 8, its element count at 12, then a position (offset, size) per element."""
    if len(tag) < 16:
        return False
    count = struct.unpack_from(">I", tag, 12)[0]
    if count > MAX_PIPELINE_ELEMENTS or 16 + 8 * count > len(tag):
        return False
    segments = 0
    for entry in range(count):
        offset, length = struct.unpack_from(">II", tag, 16 + 8 * entry)
        if length < 12 or offset + length > len(tag):
            return False
        element = tag[offset : offset + length]
        kind = bytes(element[:4])
        if kind == b"clut":  # a grid point count per input (at 8) from 12
            inputs = struct.unpack_from(">H", element, 8)[0]
            if len(element) < 28 or math.prod(element[12 : 12 + min(inputs, 16)]) > MAX_CLUT_POINTS:
                return False
        elif kind == b"cvst":
            segments += _curve_set_segments(element)
    return segments <= MAX_PIPELINE_SEGMENTS


def _curve_set_segments(element: memoryview) -> int:
    """Segments of a curve set's curves: a position per channel (count at 8) from 12, each a 'curf'
    with its segment count at 8. One that does not fit counts as too many."""
    channels = struct.unpack_from(">H", element, 8)[0]
    if 12 + 8 * channels > len(element):
        return MAX_PIPELINE_SEGMENTS + 1
    segments = 0
    for channel in range(channels):
        offset, length = struct.unpack_from(">II", element, 12 + 8 * channel)
        if length < 12 or offset + length > len(element) or element[offset : offset + 4] != b"curf":
            return MAX_PIPELINE_SEGMENTS + 1
        segments += struct.unpack_from(">H", element, offset + 8)[0]
    return segments


def _encode(image: Image.Image) -> bytes:
    pillow_format, _, options = ENCODING
    buffer = io.BytesIO()
    image.save(buffer, pillow_format, **options)
    return buffer.getvalue()

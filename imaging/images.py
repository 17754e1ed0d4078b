"""Proving that bytes are the image they claim to be.

``verify_image`` is pure: sniff the leading bytes, walk the container's
structure, estimate the decoder's memory from the header (refused over a
budget), then make Pillow decode every pixel of every frame under a pixel
budget. Anything that is not a complete, well-formed PNG, JPEG, GIF or WebP
(web images) or HEIC/HEIF or AVIF (camera images, imaging/isobmff.py)
raises :class:`InvalidImage`.

The walk comes first because some of Pillow's work is a Python call per
piece of the file (a PNG chunk, a JPEG marker, a GIF sub-block or frame)
and a progressive JPEG's is a pass over every pixel per scan: a crafted file
of a few megabytes could keep a worker busy for minutes. The caps below are
far above what real images use.
"""

from __future__ import annotations

import io
import math
import mmap
import struct
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from PIL import GifImagePlugin, Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from imaging import banded, isobmff

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# What an image is read from, never copied: an upload's bytes, or its spooled file mapped.
ImageBytes = bytes | bytearray | mmap.mmap
# verify_image's ``on_first_frame(image, (width, height))``.
FrameCallback = Callable[[Image.Image, tuple[int, int]], None]

# What browsers show: such an original may serve as its own preview (imaging/variants.py).
WEB_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# What phones and tools write and browsers and models may not read: its variants are always WebP.
# image/heic: HEVC-coded HEIF (a heic/heix/hevc/... brand); image/heif: the generic container (mif1/msf1 alone).
CAMERA_TYPES = ("image/heic", "image/heif", "image/avif")
ALLOWED_TYPES = WEB_TYPES + CAMERA_TYPES  # one family for detection: the bytes decide among all of them

PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP",
                  "image/heic": "HEIF", "image/heif": "HEIF", "image/avif": "AVIF"}
NOT_AN_IMAGE = "The file content is not a PNG, JPEG, GIF, WebP, HEIC/HEIF or AVIF image."

# Pillow's own bomb check is ours to make, per request, from config.
Image.MAX_IMAGE_PIXELS = None


def pillow_warnings_as_errors() -> None:
    """A truncated or odd file makes Pillow warn: that is an invalid image.

    Set once for the process (at import), for Pillow's warnings only:
    warnings.catch_warnings() is process-wide state and not safe around
    concurrent requests' threads. (pytest restores the filters after
    importing a test module: a test that needs them calls this in its own
    catch_warnings().)
    """
    warnings.filterwarnings("error", module=r"PIL(\.|$)")
    # Except those of the EXIF parser (TiffImagePlugin: here it only ever
    # reads the TIFF directories of a JPEG's EXIF and MPF blocks, PNG's eXIf
    # and WebP's EXIF). Pillow parses a JPEG's EXIF while opening it (to find
    # its DPI) and warns of each tag that points past the block, or of a
    # directory cut short, then skips it: metadata, not pixels. A browser
    # ignores what it cannot read of an EXIF block and shows the picture
    # (variants.orientation: 1 when unreadable).
    warnings.filterwarnings("ignore", module=r"PIL\.TiffImagePlugin$")
    # And a JPEG's broken MPF index (the camera's further images, never
    # shown): Pillow then reads the file as the plain JPEG it also is.
    warnings.filterwarnings("ignore", message="Image appears to be a malformed MPO file",
                            module=r"PIL\.JpegImagePlugin$")


pillow_warnings_as_errors()


def register_camera_decoders() -> None:
    """pillow-heif's HEIF opener, and both camera decoders' options; idempotent.

    Called where decoding happens (the decode sandbox at start, before its
    memory ceiling; any process on its first camera image), never at import:
    the serving process reads ALLOWED_TYPES but parses no image, and keeps
    libheif out of its memory. Pillow opens a file only with the one plugin
    its sniffed type names (_open), so registering adds no format an upload
    can reach otherwise.

    One decoding thread each: a sandbox decodes one image at a time on a
    2-core machine beside another sandbox, and every thread reserves its
    stack (and glibc a malloc arena, 64 MiB of address space) inside the
    RLIMIT_AS ceiling. CPU time is counted per process, all threads together,
    so RLIMIT_CPU bounds them either way. libheif's own security limits stay
    on; embedded thumbnails, depth and auxiliary images are never read (not
    shown, and the variants come from the full decode).
    """
    global _camera_decoders_registered
    if _camera_decoders_registered:
        return
    import pillow_heif  # libheif is loaded here, not at import
    from PIL import AvifImagePlugin

    pillow_heif.options.DISABLE_SECURITY_LIMITS = False
    pillow_heif.register_heif_opener(decode_threads=CAMERA_DECODE_THREADS, thumbnails=False, depth_images=False,
                                     aux_images=False)
    AvifImagePlugin.DEFAULT_MAX_THREADS = CAMERA_DECODE_THREADS
    AvifImagePlugin.DECODE_CODEC_CHOICE = "auto"  # dav1d in Pillow's wheels
    _camera_decoders_registered = True


CAMERA_DECODE_THREADS = 1
HEIF_TYPES = ("image/heic", "image/heif")
_camera_decoders_registered = False

MAX_FRAMES = 10_000  # Pillow spends ~50 us on each, however small
MAX_JPEG_SCANS = 100  # each is a pass over the whole image; encoders write about 10
MAX_JPEG_MARKERS = 10_000
MAX_PNG_CHUNKS = 50_000  # a 10 MiB PNG in 8 KiB IDATs has 1,300
MAX_GIF_BLOCKS = 200_000  # blocks and sub-blocks; 10 MiB of pixels is 41,000

# A JPEG decodes straight to 1/2, 1/4 or 1/8 of its size (libjpeg's DCT
# scaling, Pillow's draft). The verifying decode goes only as small as still
# covers the largest variant (imaging/variants.py: the 1280 x 1280 preview), so the
# same decode feeds the variants.
DRAFT_BOUND = 1280


class UnsupportedType(ValueError):
    """The leading bytes are not one of the allowed image types."""


class InvalidImage(ValueError):
    """The bytes start like an allowed image but do not decode as one."""


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int
    animated: bool = False  # more than one frame


def sniff(data: ImageBytes) -> str | None:
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
    return isobmff.sniff(bytes(data[: isobmff.MAX_FTYP_SIZE]))


def verify_image(
    data: ImageBytes, max_pixels: int, max_memory: int | None = None, *, on_first_frame: FrameCallback | None = None
) -> ImageInfo:
    """Return the detected type and size of ``data`` (any bytes-like: bytes, an mmap), or raise.

    Raises UnsupportedType when the leading bytes are no allowed image, and
    InvalidImage when Pillow cannot decode all of it within ``max_pixels``,
    or when decoding it would take more than ``max_memory`` bytes (estimated
    from its header, before decoding; None: no limit).
    ``on_first_frame(image, (width, height))``, when given, is called with the
    decoded first frame (a JPEG's at jpeg_draft_size) before the decode moves
    on: what imaging/variants.py makes the thumbnail and preview from.
    """
    content_type = sniff(data)
    if content_type is None:
        raise UnsupportedType(NOT_AN_IMAGE)
    canvas = _check_container(data, content_type)
    forget_pages(data, len(data))  # the walk read every page of the file; the decode reads them again in turn
    try:
        width, height, frames = _decode_all_frames(data, content_type, max_pixels, max_memory, on_first_frame, canvas)
    except InvalidImage:
        raise
    except UnidentifiedImageError:  # its message names the reader object, an address in memory
        raise InvalidImage(f"Pillow does not recognise it as a {PILLOW_FORMATS[content_type]} image.") from None
    except MemoryError:
        raise  # the decoding process's limit, not the file's fault: its sandbox says so
    except Exception as error:  # Pillow raises many types for corrupt input
        raise InvalidImage(f"The image could not be decoded: {error}.") from None
    # A HEIF's several images are a collection (a burst, stills side by side), shown by its primary one.
    return ImageInfo(content_type, width, height, animated=frames > 1 and content_type not in HEIF_TYPES)


def jpeg_draft_scale(width: int, height: int, bound: int = DRAFT_BOUND) -> int:
    """The largest of 8, 4, 2, 1 by which a JPEG can be shrunk while decoding and still cover ``bound``.

    Never more than the shorter side, so both sides keep a pixel and Pillow's
    draft picks exactly this scale.
    """
    longest = max(width, height)
    for scale in (8, 4, 2):
        if longest / scale >= min(bound, longest) and min(width, height) >= scale:
            return scale
    return 1


def jpeg_draft_size(width: int, height: int) -> tuple[int, int]:
    """The size Pillow decodes a ``width`` x ``height`` JPEG to (what its decoder memory follows)."""
    scale = jpeg_draft_scale(width, height)
    return -(-width // scale), -(-height // scale)


def _draft_jpeg(image: Image.Image) -> None:
    """Decode scaled down: every block is still entropy-decoded (so truncation
    and corruption still fail), faster and in a fraction of the memory of a
    full decode. Asking for the rounded-down size makes Pillow pick exactly
    jpeg_draft_scale."""
    width, height = image.size
    scale = jpeg_draft_scale(width, height)
    image.draft(None, (max(1, width // scale), max(1, height // scale)))


def _decode_all_frames(
    data: ImageBytes,
    content_type: str,
    max_pixels: int,
    max_memory: int | None,
    on_first_frame: FrameCallback | None = None,
    canvas: tuple[int, int] | None = None,
) -> tuple[int, int, int]:
    if max_memory is not None and content_type == "image/webp":
        _refuse_webp_before_opening(data, max_memory)
    if max_memory is not None and content_type in CAMERA_TYPES and canvas is not None:
        # Opening already parses every box in libheif or libavif: refused on the walk's sizes first.
        _refuse_over(decode_memory_estimate(_HeaderOnly(canvas, "RGB"), content_type, data, canvas), max_memory)
    with _open(data, content_type) as image:
        width, height = image.size
        if width * height == 0:
            raise InvalidImage("The image has no pixels.")
        if content_type == "image/jpeg":
            _draft_jpeg(image)
        if max_memory is not None:
            _refuse_over(decode_memory_estimate(image, content_type, data, canvas), max_memory)
        decoded = frames = 0
        for frame, _ in enumerate(_seek_each_frame(image, content_type)):  # the first: what is shown
            # Counted at the frame's own size, before decoding: a GIF frame may
            # grow the canvas. The first at the header's size: a JPEG's draft shrank image.size.
            decoded += _first_frame_pixels(image.size if content_type in CAMERA_TYPES else (width, height),
                                           content_type, canvas) if frame == 0 else image.size[0] * image.size[1]
            if decoded > max_pixels:
                raise InvalidImage(f"The image has more than {max_pixels} pixels.")
            image.load()
            frames += 1
            if frame == 0 and on_first_frame is not None:
                on_first_frame(image, (width, height))
        return width, height, frames



# --- decoder memory, estimated from the header --------------------------------

# Bytes per pixel of Pillow's image memory, by mode (anything else: 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
# Allocator slack, tables and buffers a decode needs whatever the image's size.
DECODE_BASE_MEMORY = 8 * 1024 * 1024
# Besides its pixels, each image Pillow holds has an array of pointers to its
# rows (libImaging's Imaging.image): 8 bytes a row. Nothing beside a photo's
# pixels, but 305 MiB for a 1 x 39,999,999 PNG's 38 MiB of palette pixels
# (bench/decode_memory.py measured 354 MiB for it).
ROW_POINTER_BYTES = struct.calcsize("P")


def _open(data: ImageBytes, content_type: str) -> ImageFile.ImageFile:
    """Pillow's image of ``data``, opened (not decoded) as ``content_type`` only."""
    if content_type in CAMERA_TYPES:
        register_camera_decoders()
    # Pillow reads only read(), seek() and tell() of a file object (its documentation says so),
    # though it types the argument as a whole IO[bytes].
    return Image.open(_BufferReader(data), formats=[PILLOW_FORMATS[content_type]])  # type: ignore[arg-type]


def estimate_decode_memory(data: ImageBytes) -> int:
    """decode_memory_estimate for the bytes of an image (for benchmarks and tests)."""
    content_type = sniff(data)
    if content_type is None:
        raise UnsupportedType(NOT_AN_IMAGE)
    canvas = _check_container(data, content_type)
    with _open(data, content_type) as image:
        if content_type == "image/jpeg":
            _draft_jpeg(image)
        return decode_memory_estimate(image, content_type, data, canvas)


def decode_memory_estimate(
    image: ImageFile.ImageFile | _HeaderOnly, content_type: str, data: ImageBytes, canvas: tuple[int, int] | None = None
) -> int:
    """Bytes the decode of ``image`` (opened, JPEG drafted, not loaded) and its variants will need at their peak.

    From the header only, per format, as measured by bench/decode_memory.py
    (docs/PERFORMANCE.md): frames decode one after another, so an animation
    costs the canvases its decoder keeps, not its frame count. ``canvas`` is
    the size the container walk found the frames to need (_check_container:
    a GIF's frames may reach past its logical screen, and Pillow grows the
    canvas to hold them); None: the header's.
    """
    width, height = image.size
    if canvas is not None and content_type in CAMERA_TYPES:
        # The largest image or grid canvas of the file (the primary image may be it, turned by its irot).
        if canvas[0] * canvas[1] > width * height:
            width, height = canvas
    elif canvas is not None:
        width, height = max(width, canvas[0]), max(height, canvas[1])
    pixels = width * height
    pixel_bytes = _MODE_BYTES.get(image.mode, 4)
    if isinstance(image, GifImagePlugin.GifImageFile):
        animated = image.is_animated  # its n_frames would read every frame
    else:
        animated = getattr(image, "n_frames", 1) > 1
    # cost: the pixels' bytes; held: the full-size images Pillow holds at once, each with its row pointers.
    if content_type == "image/jpeg":
        assert isinstance(image, JpegImagePlugin.JpegImageFile)  # opened as a JPEG: only WebP's is estimated before
        cost, held = pixels * pixel_bytes + _jpeg_decoder_memory(image, data), 1
    elif content_type == "image/webp":
        # libwebp's canvas and its disposed copy, Pillow's copy of the frame
        # (flat buffers) and the image, all RGBA; lossless adds its own ARGB buffer.
        cost, held = pixels * 4 * (5 if _webp_is_lossless(data) else 4), 1
    elif content_type in CAMERA_TYPES:
        cost, held = len(data) + _camera_decoder_memory(image, content_type, pixels), 1
    elif animated and content_type == "image/gif":
        # The canvas, the previous one, the disposal fill, the frame and its
        # RGBA conversion (a GIF's frames after the first are RGB(A)).
        cost, held = pixels * 20, 5
    elif animated:
        # APNG: the canvas, the previous one (to dispose to), the frame and its blend.
        cost, held = pixels * 4 * 4, 4
    else:
        cost, held = pixels * pixel_bytes, 1
    if content_type == "image/png":
        cost += _png_line_buffers(data)
    return DECODE_BASE_MEMORY + cost + held * height * ROW_POINTER_BYTES + _variant_memory(image)


# Camera images' decoder memory, per pixel, fitted to bench/decode_memory.py's peaks (docs/PERFORMANCE.md,
# "Decoder memory"; the decoders also copy the whole file first). Pillow's image is 4 bytes a pixel; the
# decoder hands over its RGB(A) as bytes, 3 or 4 a pixel (its "channels").
# HEIF: pillow-heif keeps each image's decoded bytes once decoded (every image of a collection), with
# libheif's YCbCr planes and conversion beside the one decoding: channels + 3 a pixel of every image,
# and Pillow's image of the largest, 3 more (its frames reuse one).
HEIF_KEPT_EXTRA_BYTES = 3
HEIF_IMAGE_BYTES = 3
# AVIF: Pillow's image, the frame's bytes, libavif's YUV planes (1.5 bytes a pixel at 4:2:0, alpha 1
# more; 4:4:4 counts as alpha would) and 1 of slack; a sequence also holds the previous frame's bytes
# and dav1d's reference frames (AV1 keeps up to 7 besides the one decoding).
AVIF_IMAGE_BYTES = 4 + 1
AVIF_YUV_BYTES = 2.5
AVIF_REFERENCE_FRAMES = 7


def _camera_decoder_memory(image: ImageFile.ImageFile | _HeaderOnly, content_type: str, pixels: int) -> int:
    """A camera image's decoder memory at ``pixels`` (its largest image or canvas); before opening, the
    header's sizes (_HeaderOnly, RGB) give the lower figure of one image without alpha."""
    channels = 4 if "A" in image.mode else 3
    frames = getattr(image, "n_frames", 1)
    if content_type == "image/avif":
        cost = pixels * (AVIF_IMAGE_BYTES + channels + AVIF_YUV_BYTES)
        if frames > 1:
            cost += pixels * (channels + AVIF_YUV_BYTES * min(frames - 1, AVIF_REFERENCE_FRAMES))
        return math.ceil(cost)
    every_image = max(sum(width * height for width, height in _heif_image_sizes(image)), pixels)
    return every_image * (channels + HEIF_KEPT_EXTRA_BYTES) + pixels * HEIF_IMAGE_BYTES


def _heif_image_sizes(image: ImageFile.ImageFile | _HeaderOnly) -> list[tuple[int, int]]:
    """Each top-level image's size, from pillow-heif's parse (seeking would allocate each image);
    an image not opened yet: none known."""
    heif_file = getattr(image, "_heif_file", None)  # pillow-heif's container, not part of its public API
    if heif_file is None:
        return []
    return [(each.size[0], each.size[1]) for each in heif_file]


def _refuse_over(estimate: int, max_memory: int) -> None:
    if estimate > max_memory:
        raise InvalidImage(f"The image is too large to decode: it would take about {estimate} bytes of "
                           f"memory, more than the {max_memory} allowed.")


@dataclass(frozen=True)
class _HeaderOnly:
    """What decode_memory_estimate reads of an opened image, known from a header before opening."""

    size: tuple[int, int]
    mode: str = "RGBA"
    n_frames: int = 1


def _refuse_webp_before_opening(data: ImageBytes, max_memory: int) -> None:
    """Pillow's WebP open already makes libwebp's decoder, which allocates its canvases: a 6320 x 6320
    lossless WebP of a few hundred bytes takes 320 MB there. So its estimate comes from the header first."""
    size = _webp_canvas_size(data)
    if size is not None:
        _refuse_over(decode_memory_estimate(_HeaderOnly(size), "image/webp", data), max_memory)


def _webp_canvas_size(data: ImageBytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first chunk (VP8X's canvas, or a still's VP8L / VP8 frame header);
    None when it has no such header (Pillow then refuses it)."""
    kind = bytes(data[12:16])
    if kind == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(data) >= 30 and bytes(data[23:26]) == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _png_line_buffers(data: ImageBytes) -> int:
    """Pillow's PNG decoder holds two rows as stored (the row and the one before it, for the filters):
    nothing for a photo, twice the image for a PNG one row high. From IHDR, the first chunk (Pillow opened it)."""
    width, bit_depth, colour_type = struct.unpack_from(">I", data, 16)[0], data[24], data[25]
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type, 4)
    return 2 * (-(-width * samples * bit_depth // 8) + 1)


# What imaging/variants.py adds while it makes the still from the first frame
# (measured by bench/decode_memory.py): the band it shrinks at a time
# (imaging/banded.py: cropped, converted to RGB(A), premultiplied, resampled: at most
# 4 bytes a pixel each, and a row pointer a row each), or the whole frame
# converted when it fits the preview's box; then the still, its resized copy
# and the encoder's buffers, each at most the preview's box in RGBA.
BAND_COPIES = 4
BAND_BYTES_PER_PIXEL = 4 * BAND_COPIES
VARIANT_WORKING_MEMORY = 3 * (DRAFT_BOUND * DRAFT_BOUND * 4 + DRAFT_BOUND * ROW_POINTER_BYTES)


def _variant_memory(image: ImageFile.ImageFile | _HeaderOnly) -> int:
    width, height = image.size
    target = banded.fit(width, height, DRAFT_BOUND, DRAFT_BOUND)
    if target == image.size:
        shrink = target[0] * target[1] * 4 + target[1] * ROW_POINTER_BYTES  # fits: converted whole, if at all
    else:
        band = banded.largest_band(image.size, target, image.mode)
        rows = band // width
        shrink = (band * BAND_BYTES_PER_PIXEL + BAND_COPIES * rows * ROW_POINTER_BYTES
                  + _resample_weights(image.size, target, rows, image.mode))
    return shrink + VARIANT_WORKING_MEMORY


def _resample_weights(size: tuple[int, int], target: tuple[int, int], band_rows: int, mode: str) -> int:
    """The weights resize() computes first: for each pixel of the result along each axis, a double for
    each source pixel its filter reaches (Pillow's Resample.c, precompute_coeffs).

    After imaging/banded.py's box-reduce that is a few per result pixel; but 16-bit grey cannot be reduced, so
    a shrink from a row of 39,999,999 pixels weighs 2 x 31,250 of them for each of its 1280: 610 MiB
    (measured). Across, each band weighs the whole width; down, only its own rows.
    """
    if banded.can_reduce(mode):
        return 0
    reach = banded.SUPPORT[banded.SHRINK_FILTER]
    (width, height), (result_width, result_height) = size, target
    across = (math.ceil(reach * width / result_width) * 2 + 1) * result_width
    down = (math.ceil(reach * height / result_height) * 2 + 1) * math.ceil(band_rows * result_height / height)
    return (across + down) * 8


def _jpeg_decoder_memory(image: JpegImagePlugin.JpegImageFile, data: ImageBytes) -> int:
    """libjpeg's own buffers: every coefficient of the full-size image when it has several scans."""
    width, height = _jpeg_full_size(image)
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)]
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    blocks = sum(-(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max)) for _, h, v, _ in layers)
    if image.info.get("progressive") or _jpeg_first_scan_components(data) < len(layers):
        return blocks * 64 * 2  # a 16-bit coefficient per sample, whatever the output scale
    return width * 16 * len(layers) * 4  # one row of blocks, a few times over


def _jpeg_full_size(image: ImageFile.ImageFile) -> tuple[int, int]:
    """The size before draft(): draft() changes image.size to the scaled one."""
    scale = image.decoderconfig[0] if image.decoderconfig else 1
    return image.size[0] * scale, image.size[1] * scale


def _jpeg_first_scan_components(data: ImageBytes) -> int:
    """How many components the first scan holds (fewer than the frame's: one scan per component)."""
    offset = 2
    while (marker := _next_jpeg_marker(data, offset)) is not None:
        code, offset = marker
        if code == _JPEG_SOS:
            return data[offset + 2] if offset + 2 < len(data) else 0
        if code == _JPEG_EOI:
            break
        if code not in _JPEG_WITHOUT_LENGTH:
            offset += int.from_bytes(data[offset : offset + 2], "big")
    return 0


MAX_WEBP_CHUNKS = 20_000


def _webp_is_lossless(data: ImageBytes) -> bool:
    """Whether any frame is VP8L (lossless), looking into animation frames; past the cap, assume so."""
    chunks = 0
    pending = [(12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0]))]
    while pending:
        offset, end = pending.pop()
        while offset + 8 <= end:
            kind, size = struct.unpack_from("<4sI", data, offset)
            if kind == b"VP8L":
                return True
            if kind == b"ANMF":
                pending.append((offset + 24, min(end, offset + 8 + size)))  # 16 bytes of frame header
            offset += 8 + size + size % 2
            chunks += 1
            if chunks > MAX_WEBP_CHUNKS:
                return True
    return False


def _first_frame_pixels(size: tuple[int, int], content_type: str, canvas: tuple[int, int] | None) -> int:
    """A camera image's first frame counts at the largest image its header gives (its ispe before a crop,
    a grid's canvas): what the decoder decodes, whatever the size it hands over."""
    pixels = size[0] * size[1]
    if content_type in CAMERA_TYPES and canvas is not None:
        return max(pixels, canvas[0] * canvas[1])
    return pixels


def _seek_each_frame(image: Image.Image, content_type: str) -> Iterator[int]:
    """Seek to each frame in turn, up to MAX_FRAMES; counting a GIF's frames first would read them all."""
    if content_type == "image/jpeg":
        yield 0  # further images in a JPEG (MPF: gain or depth maps) are for cameras, not shown
        return
    if content_type in HEIF_TYPES:
        yield from _seek_each_heif_image(image)
        return
    frame = 0
    while True:
        yield frame
        frame += 1
        try:
            image.seek(frame)
        except EOFError:
            break
        if frame == MAX_FRAMES:
            raise InvalidImage(f"The image has more than {MAX_FRAMES} frames.")
    declared = getattr(image, "n_frames", 1)
    if frame != declared:
        raise InvalidImage(f"The image declares {declared} frames but has {frame}.")


def _seek_each_heif_image(image: Image.Image) -> Iterator[int]:
    """pillow-heif opens a HEIF at its primary image (its first frame here: what is shown), then the others."""
    primary, count = image.tell(), getattr(image, "n_frames", 1)
    if count > MAX_FRAMES:
        raise InvalidImage(f"The image has more than {MAX_FRAMES} frames.")
    yield primary
    for index in range(count):
        if index != primary:
            image.seek(index)
            yield index


def _check_container(data: ImageBytes, content_type: str) -> tuple[int, int] | None:
    """Walk the structure: refuse a truncated container, too many pieces, and bytes after the end.

    Bytes after the end of a PNG, GIF or WebP make a polyglot. After a JPEG's
    end marker they are allowed: cameras put further images (MPF) and
    motion-photo videos there. Returns the canvas (width, height) the frames
    need when the walk finds it larger than the header may say (a GIF's, see
    _gif_walk), else None.
    """
    if content_type == "image/gif":
        end, canvas = _gif_walk(data)
    elif content_type in CAMERA_TYPES:
        try:
            sizes = isobmff.walk(data)
            isobmff.refuse_foreign_items(sizes, content_type)
        except isobmff.ContainerError as error:
            raise InvalidImage(str(error)) from None
        return sizes.canvas  # the walk found the boxes to end exactly at the end of the file
    else:
        end, canvas = _CONTAINER_ENDS[content_type](data), None
    if end < len(data) and content_type != "image/jpeg":
        raise InvalidImage(f"The image has {len(data) - end} unexpected bytes after its end.")
    return canvas


def _png_end(data: ImageBytes) -> int:
    """Offset just past the IEND chunk."""
    offset, chunks = 8, 0
    while offset + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        offset += 12 + length
        if kind == b"IEND":
            break
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidImage(f"The PNG has more than {MAX_PNG_CHUNKS} chunks.")
    else:
        raise InvalidImage("The PNG ends before its IEND chunk.")
    if offset > len(data):
        raise InvalidImage("The PNG ends inside its IEND chunk.")
    return offset


# A marker: 0xFF (any number, fill bytes) then a code. Inside compressed data
# 0xFF is followed by 0x00 (a stuffed byte) or a restart marker, so this
# finds the next marker wherever the search starts.
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA
_JPEG_WITHOUT_LENGTH = (0x01, 0xD8)  # TEM, SOI


def _jpeg_end(data: ImageBytes) -> int:
    """Offset just past the first end-of-image marker, counting markers and scans on the way."""
    markers = scans = 0
    offset = 2
    while (marker := _next_jpeg_marker(data, offset)) is not None:
        code, offset = marker
        if code == _JPEG_EOI:
            return offset
        markers += 1
        scans += code == _JPEG_SOS
        if markers > MAX_JPEG_MARKERS:
            raise InvalidImage(f"The JPEG has more than {MAX_JPEG_MARKERS} markers.")
        if scans > MAX_JPEG_SCANS:
            raise InvalidImage(f"The JPEG has more than {MAX_JPEG_SCANS} scans.")
        if code not in _JPEG_WITHOUT_LENGTH:
            offset += int.from_bytes(data[offset : offset + 2], "big")  # a scan's data follows its header
    raise InvalidImage("The JPEG ends before its end-of-image marker.")


def _next_jpeg_marker(data: ImageBytes, offset: int) -> tuple[int, int] | None:
    """(code, offset past it) of the next marker, skipping stuffed 0xFF00 bytes and restart markers.

    bytes.find jumps between 0xFF bytes at C speed; a regular expression over
    the entropy-coded data was ten times slower (60 ms for an 8 MB photo).
    """
    while (offset := data.find(b"\xff", offset)) != -1:
        offset += 1
        while offset < len(data) and data[offset] == 0xFF:  # fill bytes before a marker
            offset += 1
        if offset == len(data):
            return None
        code = data[offset]
        offset += 1
        if code != 0x00 and not 0xD0 <= code <= 0xD7:
            return code, offset
    return None


def _gif_walk(data: ImageBytes) -> tuple[int, tuple[int, int]]:
    """(offset just past the trailer, canvas), walking every block and sub-block.

    The canvas is the logical screen grown to hold every frame's image
    descriptor (left + width, top + height): Pillow grows it to hold a frame
    that reaches past the screen, so a 10 x 10 GIF can decode a 6320 x 6320
    canvas.
    """
    if len(data) < 13:
        raise InvalidImage("The GIF ends inside its header.")
    width, height = struct.unpack_from("<HH", data, 6)
    offset = 13 + _gif_color_table_size(data[10])
    blocks = 0
    while offset < len(data):
        introducer = data[offset]
        if introducer == 0x3B:  # trailer
            return offset + 1, (width, height)
        if introducer == 0x21:  # extension: label, then sub-blocks
            offset += 2
        elif introducer == 0x2C and offset + 10 <= len(data):  # image: descriptor, colour table, LZW size, sub-blocks
            left, top, frame_width, frame_height = struct.unpack_from("<4H", data, offset + 1)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            offset += 10 + _gif_color_table_size(data[offset + 9]) + 1
        elif introducer == 0x2C:
            break
        else:
            raise InvalidImage(f"The GIF has a block of unknown type {introducer:#04x}.")
        while offset < len(data) and data[offset]:
            offset += 1 + data[offset]
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise InvalidImage(f"The GIF has more than {MAX_GIF_BLOCKS} blocks.")
        offset += 1  # the empty sub-block ending the chain
        blocks += 1
    raise InvalidImage("The GIF ends before its trailer.")


def _gif_color_table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _webp_end(data: ImageBytes) -> int:
    """Offset just past the RIFF container (and its pad byte, when there is one)."""
    end = 8 + struct.unpack_from("<I", data, 4)[0]  # sniff saw 12 bytes
    if end > len(data):
        raise InvalidImage("The WebP ends before the size its header gives.")
    return min(end + end % 2, len(data))  # RIFF pads odd-sized chunks


_CONTAINER_ENDS: dict[str, Callable[[ImageBytes], int]] = {
    "image/png": _png_end, "image/jpeg": _jpeg_end, "image/webp": _webp_end,  # a GIF's: _gif_walk
}


# A mapped file's pages count in the process's RSS once read, and stay counted
# until unmapped: a decode of a 10 MiB upload would hold 10 MiB of pages it
# has read and will not read again. Dropping them from the mapping leaves them
# in the page cache (reading one again is a minor fault, not I/O).
FORGET_STEP = 1 << 18  # bytes read between two drops


def forget_pages(data: ImageBytes | None, end: int) -> None:
    """Drop the pages of ``data`` (when it is an mmap) before ``end`` from this process's memory."""
    if isinstance(data, mmap.mmap) and not data.closed:
        length = end - end % mmap.PAGESIZE
        if length:
            data.madvise(mmap.MADV_DONTNEED, 0, length)


class _BufferReader(io.RawIOBase):
    """A seekable reader over any buffer, without the copy io.BytesIO makes of a bytearray.

    Over an mmap, the pages it has read are dropped as it goes (forget_pages).
    """

    def __init__(self, data: ImageBytes) -> None:
        self._data: ImageBytes | None = data
        self._base = memoryview(data)
        self._view = self._base.cast("B")
        self._pos = 0
        self._forgotten = 0  # pages before this offset were dropped

    def close(self) -> None:
        # Give the buffer back now, not at garbage collection: an mmap cannot close while viewed.
        self._view.release()
        self._base.release()
        self._data = None
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as target:
            chunk = self._view[self._pos : self._pos + len(target)]
            target[: len(chunk)] = chunk
        self._pos += len(chunk)
        if self._pos - self._forgotten >= FORGET_STEP:
            forget_pages(self._data, self._pos)
            self._forgotten = self._pos
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        self._forgotten = min(self._forgotten, self._pos)  # a reader going back reads those pages again
        return self._pos

    def tell(self) -> int:
        return self._pos

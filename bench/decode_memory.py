"""Decoder memory: the estimate from the header against the measured peak, per file of a hostile corpus.

``python -m bench.decode_memory`` prints the table (docs/PERFORMANCE.md,
"Decoder memory"). Each file is as large as MAX_IMAGE_PIXELS lets it be
(40 M pixels, all frames together) and tiny on disk: the costliest input a
client can send. Every decode runs in a fresh subprocess that first decodes
a small image of the same format (so code and libraries are loaded), resets
its peak RSS (``clear_refs``; ru_maxrss when not permitted), runs
``images.verify_image`` and ``variants.make`` as an upload does, and reports its peak RSS minus
its RSS before the decode. Like an upload, the decode hands its first frame
to ``variants`` and the thumbnail and preview are made: what is measured is
all of an upload's image work.
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "var" / "bench" / "decode-corpus"
SIDE = 6320  # 6320 x 6320 = 39.9 M pixels, under MAX_IMAGE_PIXELS
FRAME_SIDE = 4470  # two frames of 4470 x 4470 = 40.0 M pixels together
MiB = 1024 * 1024


def _still(mode, side=SIDE, color=None):
    return Image.new(mode, (side, side), color if color is not None else _COLORS[mode])


_COLORS = {"RGB": (200, 30, 90), "RGBA": (200, 30, 90, 128), "L": 77, "P": 3, "CMYK": (10, 200, 30, 40),
           "I;16": 40000}


def _frames(mode, count=2, side=FRAME_SIDE):
    # Distinct colours: encoders merge identical frames.
    return [Image.new(mode, (side, side), (40 * index, 200 - 40 * index, 90, 128)[: len(mode)]) for index in
            range(count)]


def _noise(mode, side):
    """Noise in every band: a lossless encoder's transforms and the decoder's buffers are all used."""
    bands = [Image.effect_noise((side, side), 80).point(lambda v, k=k: (v * (k + 3)) % 256) for k in range(len(mode))]
    return Image.merge(mode, bands)


def _save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _save_animation(frames, fmt, **options):
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)


# Shapes Pillow's encoders will not write (or only slowly, holding the whole image), written by hand.

_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # per pixel, by IHDR colour type


def _png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_pixels(width, height, colour_type, bit_depth):
    """The zlib stream of ``height`` rows of zeros (filter 0), compressed a few MiB at a time."""
    row = bytes(1 + -(-width * _PNG_SAMPLES[colour_type] * bit_depth // 8))
    compressor, parts, left = zlib.compressobj(9), [], height
    while left:
        rows = min(left, max(1, (4 << 20) // len(row)))
        parts.append(compressor.compress(row * rows))
        left -= rows
    return b"".join(parts) + compressor.flush()


def _png_by_hand(width, height, colour_type, bit_depth=8, frames=1, dispose=0, blend=0):
    """A PNG of one colour (an APNG of ``frames`` frames, each the whole canvas, when more than one)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    if colour_type == 3:
        header += _png_chunk(b"PLTE", bytes((200, 30, 90)))
    pixels = _png_pixels(width, height, colour_type, bit_depth)
    if frames == 1:
        return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")
    body, sequence = _png_chunk(b"acTL", struct.pack(">II", frames, 0)), 0
    for frame in range(frames):
        body += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, dispose, blend))
        sequence += 1
        if frame == 0:
            body += _png_chunk(b"IDAT", pixels)
        else:
            body += _png_chunk(b"fdAT", struct.pack(">I", sequence) + pixels)
            sequence += 1
    return b"\x89PNG\r\n\x1a\n" + header + body + _png_chunk(b"IEND", b"")


def _gif_frame(width, height, index):
    """The image descriptor, LZW size and data of a one-colour frame, as Pillow encodes it."""
    image = Image.new("P", (width, height), index)
    image.putpalette([0, 0, 0, 200, 30, 90, 40, 160, 90, 90, 40, 200])
    data = _save(image, "GIF")
    offset = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[offset] == 0x21:  # extensions: label, sub-blocks
        offset += 2
        while data[offset]:
            offset += 1 + data[offset]
        offset += 1
    return data[offset:-1]  # up to the trailer


def _gif_by_hand(screen, frames):
    """A GIF whose logical screen is ``screen`` and whose frames are at (left, top, width, height):
    Pillow's encoder would grow the screen to hold them."""
    palette = bytes((0, 0, 0, 200, 30, 90, 40, 160, 90, 90, 40, 200))
    data = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x81, 0, 0) + palette  # a global table of 4 colours
    for index, (left, top, width, height) in enumerate(frames):
        descriptor = _gif_frame(width, height, 1 + index % 3)
        data += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 100 ms, no disposal
        data += b"\x2c" + struct.pack("<HH", left, top) + descriptor[5:]
    return data + b"\x3b"


# (name, content type, builder): builders run once, their output is cached under var/bench.
CORPUS = (
    ("png-rgb", "image/png", lambda: _save(_still("RGB"), "PNG")),
    ("png-rgba", "image/png", lambda: _save(_still("RGBA"), "PNG")),
    ("png-palette", "image/png", lambda: _save(_still("P"), "PNG")),
    ("png-gray16", "image/png", lambda: _save(_still("I;16"), "PNG")),
    ("png-interlaced-rgba", "image/png", lambda: _save(_still("RGBA", side=4000), "PNG", interlace=True)),
    ("apng-rgba-2-frames", "image/png", lambda: _save_animation(_frames("RGBA"), "PNG")),
    # Dispose to the previous frame, blend over it: Pillow keeps the most canvases.
    ("apng-previous-over", "image/png", lambda: _save_animation(_frames("RGBA"), "PNG", disposal=2, blend=1)),
    ("gif-still", "image/gif", lambda: _save(_still("P"), "GIF")),
    ("gif-2-frames", "image/gif", lambda: _save_animation(_frames("RGB"), "GIF")),
    ("gif-2-frames-background", "image/gif",
     lambda: _save_animation(_frames("RGB"), "GIF", disposal=2, transparency=0)),
    # A 10 x 10 logical screen whose second frame is 6320 x 6320: Pillow grows the canvas.
    ("gif-frame-past-the-screen", "image/gif", lambda: _gif_by_hand((10, 10), [(0, 0, 10, 10), (0, 0, SIDE, SIDE)])),
    ("jpeg-baseline-rgb", "image/jpeg", lambda: _save(_still("RGB"), "JPEG")),
    ("jpeg-baseline-444", "image/jpeg", lambda: _save(_still("RGB"), "JPEG", subsampling=0)),
    ("jpeg-progressive-rgb", "image/jpeg", lambda: _save(_still("RGB"), "JPEG", progressive=True)),
    ("jpeg-progressive-444", "image/jpeg", lambda: _save(_still("RGB"), "JPEG", progressive=True, subsampling=0)),
    ("jpeg-progressive-gray", "image/jpeg", lambda: _save(_still("L"), "JPEG", progressive=True)),
    ("jpeg-baseline-cmyk", "image/jpeg", lambda: _save(_still("CMYK"), "JPEG")),
    ("jpeg-progressive-cmyk", "image/jpeg", lambda: _save(_still("CMYK"), "JPEG", progressive=True)),
    ("webp-lossy", "image/webp", lambda: _save(_still("RGB"), "WEBP", quality=50, method=0)),
    ("webp-lossy-alpha", "image/webp", lambda: _save(_still("RGBA"), "WEBP", quality=50, method=0)),
    ("webp-lossless", "image/webp", lambda: _save(_still("RGB"), "WEBP", lossless=True, method=0)),
    ("webp-lossless-alpha", "image/webp", lambda: _save(_still("RGBA"), "WEBP", lossless=True, method=0)),
    ("webp-lossless-noise", "image/webp", lambda: _save(_noise("RGBA", 3000), "WEBP", lossless=True, method=0)),
    ("webp-animated-lossy", "image/webp", lambda: _save_animation(_frames("RGB"), "WEBP", quality=50, method=0)),
    ("webp-animated-lossless", "image/webp",
     lambda: _save_animation(_frames("RGBA"), "WEBP", lossless=True, method=0)),
)

# Camera images (HEIC via pillow-heif, AVIF via Pillow's own plugin), encoded by the same libraries.
# Encoding 40 M pixels takes x265 and aom a while: the files are cached like the others.
CAMERA_CORPUS = (
    ("heic-rgb", "image/heic", lambda: _camera(_still("RGB"), "HEIF")),
    ("heic-rgba", "image/heic", lambda: _camera(_still("RGBA"), "HEIF")),
    # 512 x 512 tiles assembled into one canvas, as iPhones write them.
    ("heic-grid-512", "image/heic", lambda: _camera(_still("RGB"), "HEIF", tile_size=512)),
    ("heic-2-images", "image/heic", lambda: _camera_collection(_frames("RGB"), "HEIF")),
    ("avif-rgb", "image/avif", lambda: _camera(_still("RGB"), "AVIF")),
    ("avif-rgba", "image/avif", lambda: _camera(_still("RGBA"), "AVIF")),
    ("avif-2-frames", "image/avif", lambda: _camera_collection(_frames("RGB"), "AVIF")),
    # x265 will not encode a picture one row high: a grid of 512 x 512 tiles (as iPhones write) holds it.
    ("heic-16384x1", "image/heic", lambda: _camera(_still("RGB", side=1).resize((16384, 1)), "HEIF", tile_size=512)),
    ("avif-16384x1", "image/avif", lambda: _camera(_still("RGB", side=1).resize((16384, 1)), "AVIF")),
    # The largest each accepts under the default MAX_DECODE_MEMORY: an iPhone's 24 MP HEIC (5712 x 4284 in
    # 512 x 512 tiles), and an AVIF of 18.75 M pixels (its estimate passes 256 MiB at about 21 M).
    ("heic-24mp-grid-512", "image/heic",
     lambda: _camera(Image.new("RGB", (5712, 4284), _COLORS["RGB"]), "HEIF", tile_size=512)),
    ("avif-5000x3750", "image/avif", lambda: _camera(Image.new("RGB", (5000, 3750), _COLORS["RGB"]), "AVIF")),
)
_CAMERA_OPTIONS = {"HEIF": {"quality": 30}, "AVIF": {"quality": 30, "speed": 10}}


def _camera(image, fmt, **options):
    _register_camera_encoders()
    return _save(image, fmt, **_CAMERA_OPTIONS[fmt], **options)


def _camera_collection(frames, fmt, **options):
    """HEIF: several top-level images (a collection); AVIF: a sequence (avis)."""
    _register_camera_encoders()
    return _save_animation(frames, fmt, **_CAMERA_OPTIONS[fmt], **options)


def _register_camera_encoders():
    sys.path.insert(0, str(ROOT))
    from imaging import images

    images.register_camera_decoders()  # pillow-heif's opener registers its encoder too


# Extreme aspect ratios, at the pixel limit: one pixel wide, Pillow holds a
# row pointer (8 bytes) per row of each image; one row high, the PNG decoder
# holds two rows and resize() weighs a 16-bit row's every pixel. The estimate
# covers them, far above the peak one row high (imaging/banded.py's band is then the
# whole row, counted as if converted): refused, like any of these at 40 M pixels.
LONG = 39_999_999
ASPECT_CORPUS = (
    ("png-palette-1x39999999", "image/png", lambda: _png_by_hand(1, LONG, 3)),
    ("png-rgba-1x39999999", "image/png", lambda: _png_by_hand(1, LONG, 6)),
    ("png-gray16-1x39999999", "image/png", lambda: _png_by_hand(1, LONG, 0, 16)),
    ("png-palette-39999999x1", "image/png", lambda: _png_by_hand(LONG, 1, 3)),
    ("png-rgb-39999999x1", "image/png", lambda: _png_by_hand(LONG, 1, 2)),
    ("png-gray16-39999999x1", "image/png", lambda: _png_by_hand(LONG, 1, 0, 16)),
    ("apng-previous-over-1x19999999", "image/png",
     lambda: _png_by_hand(1, LONG // 2, 6, frames=2, dispose=2, blend=1)),
    ("apng-previous-over-19999999x1", "image/png",
     lambda: _png_by_hand(LONG // 2, 1, 6, frames=2, dispose=2, blend=1)),
)

WARM_UP = {"image/png": "PNG", "image/gif": "GIF", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/heic": "HEIF",
           "image/avif": "AVIF"}

CHILD = r"""
import io, json, resource, sys
sys.path.insert(0, sys.argv[1])
from PIL import Image
from imaging import images
from imaging import variants

def status_kib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def warm_up(fmt):
    images.register_camera_decoders()  # libheif loaded before the measure, as in a decode sandbox
    buffer = io.BytesIO()
    Image.new("RGBA" if fmt != "JPEG" else "RGB", (64, 64)).save(buffer, fmt)
    images.verify_image(buffer.getvalue(), 10**12)

with open(sys.argv[2], "rb") as handle:
    data = handle.read()
warm_up(sys.argv[3])
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    field = "VmHWM"
except OSError:
    field = None
before = status_kib("VmRSS")
info, _still, _made = variants.verify_and_make(data, 10**12, None, "0" * 64)  # what an upload does
peak = status_kib(field) if field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"measured": (peak - before) * 1024, "estimate": images.estimate_decode_memory(data),
                  "width": info.width, "height": info.height}))
"""


def corpus_file(name, builder):
    """The corpus file's path, built on first use."""
    path = CACHE_DIR / name
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_bytes(builder())
        os.replace(temporary, path)
    return path


def measure(name, content_type, builder, in_sandbox=False):
    """{"name", "content_type", "bytes", "width", "height", "estimate", "measured"} for one corpus file,
    and with ``in_sandbox`` what an upload of it gets now ("sandbox": accepted, or why it is refused)."""
    path = corpus_file(name, builder)
    output = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), WARM_UP[content_type]],
                            check=True, capture_output=True, text=True, timeout=600).stdout
    row = {"name": name, "content_type": content_type, "bytes": path.stat().st_size, **json.loads(output)}
    if in_sandbox:
        row["sandbox"] = sandbox_outcome(path)
    return row


def sandbox_outcome(path):
    """An upload's image work on the file in a decode sandbox under the default limits: "accepted",
    "refused: estimate" (before decoding) or "refused: <cause>" (the sandbox's ceiling or deadline)."""
    sys.path.insert(0, str(ROOT))
    from config import DEFAULTS
    from imaging import images
    from sandbox import tasks

    with open(path, "rb") as spooled:
        try:
            tasks.verify_and_make(spooled.fileno(), DEFAULTS["MAX_IMAGE_PIXELS"], DEFAULTS["MAX_DECODE_MEMORY"],
                                  "0" * 64, max_file_size=DEFAULTS["MAX_FILE_SIZE"], wait=60)
        except images.InvalidImage as error:
            if "too large to decode" in str(error):
                return "refused: estimate"
            return f"refused: {error}"
    return "accepted"


def table(rows):
    lines = ["| format | file | bytes | pixels | estimate MiB | measured peak MiB | estimate / measured "
             "| an upload now (default limits) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        ratio = row["estimate"] / row["measured"] if row["measured"] > 0 else float("inf")
        lines.append(f"| {row['content_type']} | {row['name']} | {row['bytes']:,} | {row['width']}x{row['height']} "
                     f"| {row['estimate'] / MiB:.0f} | {row['measured'] / MiB:.0f} | {ratio:.2f} "
                     f"| {row.get('sandbox', '')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.decode_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated corpus names (default: all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    wanted = {name for name in args.only.split(",") if name}
    rows = [measure(*entry, in_sandbox=True) for entry in CORPUS + CAMERA_CORPUS + ASPECT_CORPUS
            if not wanted or entry[0] in wanted]
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()

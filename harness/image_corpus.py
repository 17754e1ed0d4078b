"""The hostile-image corpus's base images and the breakages bench/variants.py times too.

tests/test_image_corpus.py uploads every base, broken in many ways (the
other breakages are its own); bench/variants.py times variants against
verification over the bases and the bit-flipped copies that still decode.
"""

import io
import random
import struct

from PIL import Image

from harness.imaging import make_animated_gif, make_image, save_options


def make_animation(pillow_format, count=3, width=20, height=16):
    # Distinct colours: Pillow merges identical consecutive frames.
    frames = [Image.new("RGB", (width, height), (index * 60, 90, 255 - index * 50)) for index in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, pillow_format, **save_options(pillow_format, {}), save_all=True, append_images=frames[1:],
                   duration=40)
    return buffer.getvalue()


BASES = {
    "png": ("image/png", make_image("image/png", 48, 40)),
    "apng": ("image/png", make_animation("PNG")),
    "jpeg": ("image/jpeg", make_image("image/jpeg", 48, 40)),
    "progressive-jpeg": ("image/jpeg", make_image("image/jpeg", 48, 40, progressive=True)),
    "gif": ("image/gif", make_image("image/gif", 48, 40)),
    "animated-gif": ("image/gif", make_animated_gif(frames=4, width=24, height=20)),
    "webp": ("image/webp", make_image("image/webp", 48, 40)),
    "lossless-webp": ("image/webp", make_image("image/webp", 48, 40, lossless=True)),
    "animated-webp": ("image/webp", make_animation("WEBP")),
    "heic": ("image/heic", make_image("image/heic", 48, 40)),
    # Tiles assembled into one canvas, as iPhones write HEIC (512 x 512 tiles there).
    "heic-grid": ("image/heic", make_image("image/heic", 96, 80, tile_size=64)),
    "avif": ("image/avif", make_image("image/avif", 48, 40)),
    "animated-avif": ("image/avif", make_animation("AVIF")),
}


def bit_flips(data, seed, count=40):
    rng = random.Random(seed)
    cases = {}
    for _ in range(count):
        position, bit = rng.randrange(len(data)), rng.randrange(8)
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        cases[f"bit {bit} of byte {position}"] = bytes(flipped)
    return cases


def patched(data, offset, fmt, *values):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def jpeg_sof_offset(data):
    offset = 2
    while data[offset + 1] not in (0xC0, 0xC1, 0xC2):
        offset += 2 + struct.unpack_from(">H", data, offset + 2)[0]
    return offset


def iso_boxes(data, offset=0, end=None):
    """(type, offset of the box, offset of its payload, end) of each ISO BMFF box from ``offset``;
    meta's, iprp's and ipco's children follow their parent (a HEIC's or AVIF's header)."""
    end = len(data) if end is None else end
    while offset < end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        yield kind, offset, offset + 8, offset + size
        if kind in (b"meta", b"iprp", b"ipco"):
            yield from iso_boxes(data, offset + 8 + (4 if kind == b"meta" else 0), offset + size)
        offset += size


def iso_box(data, kind, index=0):
    """(offset of the box, offset of its payload, end) of the ``index``-th box of type ``kind``."""
    found = [(start, payload, end) for name, start, payload, end in iso_boxes(data) if name == kind]
    return found[index]

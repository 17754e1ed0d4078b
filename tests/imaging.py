"""Real images for tests, made with Pillow; the ones benchmarks use too are in harness/imaging.py."""

import io

from PIL import Image

from harness.imaging import FORMATS, save_options


def smooth_image(width, height, mode="RGB"):
    """A picture of any size made fast (gradients, no per-pixel Python), with a different colour in each corner."""
    horizontal = Image.linear_gradient("L").rotate(90).resize((width, height))
    vertical = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", [horizontal, vertical, Image.new("L", (width, height), 128)])
    return image.convert(mode) if mode != "RGB" else image


def encode(image, content_type, **options):
    buffer = io.BytesIO()
    image.save(buffer, FORMATS[content_type], **save_options(FORMATS[content_type], options))
    return buffer.getvalue()


def rgb_profile(red, green, blue):
    """A minimal ICC v2 RGB display profile with the given primaries (D50 XYZ) and linear curves."""
    import struct

    def s15f16(*values):
        return b"".join(struct.pack(">i", round(value * 65536)) for value in values)

    def xyz(values):
        return b"XYZ \0\0\0\0" + s15f16(*values)

    description = b"test profile\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(description)) + description
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)
    curve = b"curv\0\0\0\0" + struct.pack(">I", 0)  # no entries: the identity
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)),
            (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 24 + b"\0" * 4 + s15f16(0.9642, 1.0, 0.8249) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# sRGB's primaries, adapted to D50 as ICC profiles state them.
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)

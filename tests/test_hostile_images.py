"""Hostile images (issue 16): metadata an upload must ignore, and colour profiles that must not run.

Every sample is built here, by hand where Pillow would not write it: a JPEG
whose EXIF points past its block, and ICC profiles with the pipelines and
tables browsers refuse. The image work runs as an upload's does
(``variants.verify_and_make``), under the process's Pillow warning filters
(``images.pillow_warnings_as_errors``; pytest resets them after import).
"""

import io
import math
import struct
import time
import warnings
import zlib

import pytest
from PIL import Image, ImageCms

from imaging import banded, images, variants
from tests.imaging import SRGB_BLUE, SRGB_GREEN, SRGB_RED, encode, rgb_profile


@pytest.fixture(autouse=True)
def production_warning_filters():
    with warnings.catch_warnings():
        images.pillow_warnings_as_errors()
        yield


def verify_and_make(data):
    return variants.verify_and_make(data, 40_000_000, 256 * 1024 * 1024, "0" * 64)


def variant(made, name):
    return Image.open(io.BytesIO(next(m for m in made if m.name == name).data)).convert("RGB")


# --- EXIF that points past its block -----------------------------------------------------------

ORIENTATION, DESCRIPTION, MAKE, X_RESOLUTION = 0x0112, 0x010E, 0x010F, 0x011A
SHORT, ASCII, RATIONAL = 3, 2, 5


def tiff(entries, first=8, count=None):
    """A big-endian TIFF directory (EXIF's layout): entries (tag, type, count, 4 value-or-offset bytes)."""
    directory = struct.pack(">H", len(entries) if count is None else count)
    for tag, kind, values, value in entries:
        directory += struct.pack(">HHI", tag, kind, values) + value
    return b"MM\0*" + struct.pack(">I", first) + directory + struct.pack(">I", 0)


TURNED = (ORIENTATION, SHORT, 1, struct.pack(">HH", 6, 0))  # stored sideways: displayed 300 x 600
PAST_THE_BLOCK = struct.pack(">I", 5000)

# name: (the EXIF block's TIFF directory, the displayed size). What can be read
# is used, as a browser reads the orientation entry whatever the others hold.
BROKEN_EXIF = {
    "a value's offset past the block": (tiff([TURNED, (DESCRIPTION, ASCII, 100, PAST_THE_BLOCK)]), (300, 600)),
    "a count far too large": (tiff([TURNED, (MAKE, ASCII, 0x7FFFFFFF, struct.pack(">I", 26))]), (300, 600)),
    "the resolution (read on open) past the block": (tiff([TURNED, (X_RESOLUTION, RATIONAL, 1, PAST_THE_BLOCK)]),
                                                     (300, 600)),
    "more entries than the block holds": (tiff([], count=500), (600, 300)),
    "cut short before the orientation": (tiff([(DESCRIPTION, ASCII, 100, PAST_THE_BLOCK), TURNED])[:28], (600, 300)),
    "the directory past the block": (tiff([], first=5000), (600, 300)),
}


def jpeg_with(marker, payload, image=None):
    """A 600 x 300 JPEG with one more APPn segment after its SOI."""
    data = encode(image or Image.new("RGB", (600, 300), (200, 30, 90)), "image/jpeg", quality=90)
    return data[:2] + b"\xff" + marker + struct.pack(">H", len(payload) + 2) + payload + data[2:]


@pytest.mark.parametrize("exif", BROKEN_EXIF.values(), ids=BROKEN_EXIF.keys())
def test_a_jpeg_whose_exif_points_past_its_block_is_accepted_and_its_variants_made(exif):
    directory, displayed = exif
    info, still, made = verify_and_make(jpeg_with(b"\xe1", b"Exif\0\0" + directory))
    assert (info.content_type, info.width, info.height) == ("image/jpeg", 600, 300)
    assert (still.width, still.height) == displayed
    assert [m.name for m in made] == list(variants.NAMES)
    assert variant(made, "thumbnail").size == banded.fit(*displayed, 256, 256)


def test_a_jpeg_whose_mpf_index_is_broken_is_accepted_as_the_plain_jpeg_it_is():
    info, _, made = verify_and_make(jpeg_with(b"\xe2", b"MPF\0" + tiff([], first=5000)))
    assert (info.width, info.height) == (600, 300)
    assert variant(made, "thumbnail").size == (256, 128)


def noisy(width, height):
    return Image.merge("RGB", [Image.effect_noise((width, height), 60 + 20 * band).convert("L") for band in range(3)])


@pytest.mark.parametrize("damage", ["truncated", "scan overwritten"])
def test_a_jpeg_with_broken_exif_and_broken_pixels_is_still_refused(damage):
    data = jpeg_with(b"\xe1", b"Exif\0\0" + BROKEN_EXIF["a value's offset past the block"][0], noisy(600, 300))
    verify_and_make(data)  # whole, it is fine
    middle = len(data) // 2
    if damage == "truncated":
        data = data[:middle]
    else:
        data = data[:middle] + bytes(range(256)) * 16 + data[middle + 4096 :]
    with pytest.raises(images.InvalidImage):
        verify_and_make(data)


# --- ICC profiles beyond what browsers accept -----------------------------------------------------

def s15f16(*values):
    return b"".join(struct.pack(">i", round(value * 65536)) for value in values)


def icc(tags, size=None, signature=b"acsp"):
    """An ICC v4 RGB display profile: the 128-byte header, the tag table, the tags (signature, data)."""
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for name, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += name + struct.pack(">II", offset + len(body), len(data))
        body += data
    total = offset + len(body)
    header = (struct.pack(">I", total if size is None else size) + b"\0" * 4 + b"\x04\x40\0\0" + b"mntrRGB XYZ "
              + b"\0" * 12 + signature + b"\0" * 24 + b"\0" * 4 + s15f16(0.9642, 1.0, 0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


MATRIX = b"matf\0\0\0\0" + struct.pack(">HH", 3, 3) + struct.pack(">12f", 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0)


def pipeline(elements, positions=None):
    """An 'mpet' tag: its element positions (offset, size from the tag's start) then the elements.
    ``positions`` many, all pointing at the one element when ``elements`` has one."""
    count = positions or len(elements)
    offset, table, body = 16 + 8 * count, b"", b""
    for element in elements:
        table += struct.pack(">II", offset + len(body), len(element))
        body += element
    if positions:
        table = table * positions
    return b"mpet\0\0\0\0" + struct.pack(">HHI", 3, 3, count) + table + body


def curve_set(segments):
    """A 'cvst' element of three channels sharing one segmented curve of ``segments`` segments."""
    breakpoints = struct.pack(f">{segments - 1}f", *((i + 1) / segments for i in range(segments - 1)))
    segment = b"parf\0\0\0\0" + struct.pack(">HH", 0, 0) + struct.pack(">4f", 1, 1, 0, 0)  # Y = X
    curve = b"curf\0\0\0\0" + struct.pack(">HH", segments, 0) + breakpoints + segment * segments
    return b"cvst\0\0\0\0" + struct.pack(">HH", 3, 3) + struct.pack(">II", 36, len(curve)) * 3 + curve


def clut_element(grid):
    return b"clut\0\0\0\0" + struct.pack(">HH", 3, 3) + bytes(grid) + bytes(16 - len(grid))  # no data: never read


def lut16(grid, inputs=3):
    return b"mft2\0\0\0\0" + bytes((inputs, 3, grid, 0)) + s15f16(1, 0, 0, 0, 1, 0, 0, 0, 1) + struct.pack(">HH", 2, 2)


def lut_a_to_b(grid):
    clut = 32  # the CLUT right after the offsets: a grid point count per input, precision, padding
    return (b"mAB \0\0\0\0" + bytes((3, 3, 0, 0)) + struct.pack(">5I", 0, 0, 0, clut, 0)
            + bytes(grid) + bytes(16 - len(grid)) + bytes((2, 0, 0, 0)))


def patched(profile, offset, value):
    return profile[:offset] + struct.pack(">I", value) + profile[offset + 4 :]


SRGB_V4 = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
TAG = (b"desc", b"desc" + bytes(8))

# name: (profile, accepted), after Firefox's qcms and Chrome's skcms (imaging/variants.py cites the bounds).
PROFILES = {
    "sRGB (LittleCMS, v4)": (SRGB_V4, True),
    "matrix and curves (v2)": (rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE), True),
    "mpet of 16 matrices": (icc([(b"D2B0", pipeline([MATRIX] * 16))]), True),
    "mpet of 17 matrices": (icc([(b"D2B0", pipeline([MATRIX] * 17))]), False),
    "mpet of 100,000 matrices (the issue's)": (icc([(b"D2B0", pipeline([MATRIX], positions=100_000))]), False),
    "mpet of 16 curve sets of 5 segments": (icc([(b"D2B0", pipeline([curve_set(5)], positions=16))]), True),
    "mpet of a curve set of 100 segments a channel": (icc([(b"D2B0", pipeline([curve_set(100)]))]), False),
    "mpet CLUT of 33^3 points": (icc([(b"D2B0", pipeline([clut_element((33, 33, 33))]))]), True),
    "mpet CLUT of 255^3 points": (icc([(b"D2B0", pipeline([clut_element((255, 255, 255))]))]), False),
    "lut16 of 33^3 points": (icc([(b"A2B0", lut16(33))]), True),
    "lut16 of 17^4 points": (icc([(b"A2B0", lut16(17, inputs=4))]), True),
    "lut16 of 80^3 points": (icc([(b"A2B0", lut16(80))]), False),
    "lutAtoB of 33^3 points": (icc([(b"A2B0", lut_a_to_b((33, 33, 33)))]), True),
    "lutAtoB of 255 x 255 x 9 points": (icc([(b"A2B0", lut_a_to_b((255, 255, 9)))]), False),
    "over 4 MiB": (icc([TAG, (b"zzzz", bytes(4 * 1024 * 1024))]), False),
    "1025 tags": (icc([TAG] * 1025), False),
    "a tag table longer than the profile": (patched(icc([TAG]), 128, 50), False),
    "a tag past the profile's end": (patched(icc([TAG]), 132 + 8, 1000), False),
    "a size larger than the bytes": (icc([TAG], size=10_000), False),
    "no 'acsp'": (icc([TAG], signature=b"xxxx"), False),
    "shorter than a header": (SRGB_V4[:100], False),
}


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
def test_acceptable_icc_profile(profile):
    data, accepted = profile
    assert variants.acceptable_icc_profile(data) is accepted


def png_with_icc(profile, colour=(200, 30, 90)):
    """A 600 x 400 PNG whose iCCP chunk (written by hand, after IHDR) holds ``profile`` zlib-compressed."""
    data = encode(Image.new("RGB", (600, 400), colour), "image/png")
    body = b"profile\0\0" + zlib.compress(profile, 9)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return data[:33] + chunk + data[33:]


def close(pixel, expected):
    return math.dist(pixel, expected) < 8


def test_the_issues_png_with_100000_pipeline_stages_is_made_in_moments_its_profile_ignored():
    """Without the check LittleCMS takes minutes of CPU over this 3 KB file (issue 16: 271 s)."""
    profile = PROFILES["mpet of 100,000 matrices (the issue's)"][0]
    data = png_with_icc(profile)
    assert len(data) < 4096 and len(profile) > 800_000  # zlib shrinks the profile's 100,000 positions to 1.5 KB
    started = time.process_time()
    info, _, made = verify_and_make(data)
    assert time.process_time() - started < 2
    assert info.content_type == "image/png"
    assert close(variant(made, "thumbnail").getpixel((10, 10)), (200, 30, 90))  # taken as sRGB


def test_a_pipeline_within_the_bounds_is_still_applied():
    """The same identity matrices, 16 of them: LittleCMS reads the pixels as XYZ, and the colour changes."""
    _, _, made = verify_and_make(png_with_icc(PROFILES["mpet of 16 matrices"][0]))
    assert not close(variant(made, "thumbnail").getpixel((10, 10)), (200, 30, 90))


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "image/webp"])
def test_an_embedded_profile_is_still_applied_in_every_format(content_type):
    # A profile whose red is sRGB's blue: shown right, the red pixels are blue.
    swapped = rgb_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED)
    data = encode(Image.new("RGB", (600, 400), (255, 0, 0)), content_type, icc_profile=swapped)
    _, _, made = verify_and_make(data)
    red, _, blue = variant(made, "thumbnail").getpixel((10, 10))
    assert blue > 200 and red < 60, (red, blue)

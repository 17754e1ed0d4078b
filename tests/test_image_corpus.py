"""Real images broken on purpose, uploaded through the API.

Each base image (made with Pillow, in every allowed format, still and
animated) is truncated, bit-flipped, given absurd dimensions, wrapped in
other formats, and turned into the bombs a decoder fears. Every case ends
in one of two ways: 400 with a JSON error, or, where the bytes are still a
valid image, 201 and a download that gives back exactly the same bytes, and a
thumbnail and preview that are images within their boxes.
Never a 5xx, and never a decode that runs for long or eats memory: the
caps in imaging/images.py refuse those before Pillow starts. Making the variants
allocates no image larger than the preview's box: the frame is shrunk in
bands (VariantMemory below; bench/variants.py times it). The bases, and the
breakages bench/variants.py uses too, are in harness/image_corpus.py.

One app and one user per test; each test sends many cases and reports all
that went wrong at once.
"""

import functools
import io
import struct
import zipfile
import zlib

import pytest
from PIL import Image

import cli
import models
from harness.image_corpus import BASES, bit_flips, iso_box, jpeg_sof_offset, patched
from imaging import images, variants
from tests.test_files import upload, with_png_dimensions
from tests.test_hostile_input import without_disk_syncs

REFUSED = "refused"
KEPT = "kept whole"


class Uploader:
    """Sends cases as one user and sorts the answers."""

    def __init__(self, app):
        self.client = app.test_client()
        with app.app_context(), models.db.connection_context():
            user = cli.create_user("corpus", "corpus-org", lifetime_days=1)
        self.organization = user["organization_id"]
        self.auth = {"Coder-Session-Token": user["token"]}

    def outcome(self, data, content_type):
        """REFUSED (400, JSON), KEPT (201, same bytes back), or what went wrong."""
        response = upload(self.client, self.auth, data, content_type, self.organization)
        self.last = response
        if response.status_code == 400 and response.is_json and response.json.get("message"):
            return REFUSED
        if response.status_code != 201:
            return f"{response.status_code}: {response.get_data(as_text=True)[:300]}"
        download = self.client.get(f"/api/v2/chats/files/{response.json['id']}", headers=self.auth)
        if download.status_code != 200 or download.data != data:
            return f"accepted, but the download is {download.status_code} with {len(download.data)} other bytes"
        for spec in variants.VARIANTS:
            wrong = self.wrong_variant(response.json["id"], spec, images.sniff(data) in images.CAMERA_TYPES)
            if wrong:
                return f"accepted, but its {spec.name} {wrong}"
        return KEPT

    def wrong_variant(self, file_id, spec, camera=False):
        variant = self.client.get(f"/api/v2/chats/files/{file_id}/{spec.name}", headers=self.auth)
        if variant.status_code != 200:
            return f"is {variant.status_code}"
        if camera and variant.mimetype != "image/webp":  # browsers and models may not read the original
            return f"is {variant.mimetype}"
        try:
            with Image.open(io.BytesIO(variant.data)) as image:
                image.load()
                width, height = image.size
        except Exception as error:
            return f"does not decode: {error}"
        if not spec.original_if_fits and (width > spec.max_width or height > spec.max_height):
            return f"is {width}x{height}"
        return None

    def message(self, data, content_type):
        return upload(self.client, self.auth, data, content_type, self.organization).json.get("message")


class VariantMemory:
    """Records the size of every image Pillow makes while a first frame becomes a variant still."""

    def __init__(self, monkeypatch):
        self.made = None  # a list while variants.still_of runs
        self.problems = []
        self.larger_than_box = []  # of the last still made
        real_new, real_method, real_still_of = Image.new, Image.Image._new, variants.still_of

        def new(*args, **kwargs):
            return self._record(real_new(*args, **kwargs))

        def method(image, core):
            return self._record(real_method(image, core))

        def still_of(frame, size):
            self.made = []
            try:
                return real_still_of(frame, size)
            finally:
                self._check(frame, self.made)
                self.made = None

        monkeypatch.setattr(Image, "new", new)
        monkeypatch.setattr(Image.Image, "_new", method)
        monkeypatch.setattr(variants, "still_of", still_of)

    def _record(self, image):
        if self.made is not None:
            self.made.append(image.size)
        return image

    def _check(self, frame, made):
        decoded = frame.size[0] * frame.size[1]
        larger_than_frame = [size for size in made if size[0] * size[1] > decoded]
        self.larger_than_box = [size for size in made if size[0] * size[1] > BOX_PIXELS]
        if larger_than_frame or self.larger_than_box:
            self.problems.append(f"frame {frame.size}: made {made}")


BOX_PIXELS = variants.WORKING_BOX[0] * variants.WORKING_BOX[1]


@pytest.fixture
def uploader(sqlite_app, monkeypatch):
    sqlite_app.config["PROPAGATE_EXCEPTIONS"] = False
    memory = VariantMemory(monkeypatch)
    with without_disk_syncs(sqlite_app, monkeypatch):
        yield Uploader(sqlite_app)
    assert memory.problems == []


def assert_outcomes(uploader, cases, content_type, allowed):
    """Send every case; fail listing each whose outcome is not in ``allowed``."""
    wrong = {}
    for name, data in cases.items():
        result = uploader.outcome(data, content_type)
        if result not in allowed:
            wrong[name] = result
    assert wrong == {}


# --- truncation and bit flips ------------------------------------------------


def truncations(data, count=30):
    """``count`` cut points spread over the file, always including one byte short."""
    offsets = {len(data) * index // count for index in range(count)} | {len(data) - 1}
    return {f"first {offset} of {len(data)} bytes": data[:offset] for offset in sorted(offsets)}


@pytest.mark.parametrize("base", sorted(BASES))
def test_truncated_image_is_refused(uploader, base):
    content_type, data = BASES[base]
    assert_outcomes(uploader, truncations(data), content_type, {REFUSED})


@pytest.mark.parametrize("base", sorted(BASES))
def test_bit_flipped_image_is_refused_or_kept_whole(uploader, base):
    content_type, data = BASES[base]
    assert_outcomes(uploader, bit_flips(data, seed=base), content_type, {REFUSED, KEPT})


@pytest.mark.parametrize("base", sorted(BASES))
def test_unbroken_base_image_is_kept_whole(uploader, base):
    content_type, data = BASES[base]
    assert uploader.outcome(data, content_type) == KEPT


# --- absurd dimensions ---------------------------------------------------------


def gif_blocks(data):
    """Offsets of the image descriptors of a well-formed GIF."""
    offset = 13 + gif_color_table_size(data[10])
    descriptors = []
    while data[offset] != 0x3B:
        if data[offset] == 0x2C:
            descriptors.append(offset)
            offset += 10 + gif_color_table_size(data[offset + 9]) + 1
        else:
            offset += 2
        while data[offset]:
            offset += data[offset] + 1
        offset += 1
    return descriptors


def gif_color_table_size(flags):
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def webp_chunk(data, fourcc):
    """Offset of the payload of the first chunk named ``fourcc``."""
    offset = 12
    while data[offset : offset + 4] != fourcc:
        (size,) = struct.unpack_from("<I", data, offset + 4)
        offset += 8 + size + size % 2
    return offset + 8


def huge_dimensions():
    png = BASES["png"][1]
    gif, animated = BASES["gif"][1], BASES["animated-gif"][1]
    jpeg, progressive = BASES["jpeg"][1], BASES["progressive-jpeg"][1]
    lossy, lossless, animated_webp = BASES["webp"][1], BASES["lossless-webp"][1], BASES["animated-webp"][1]
    second_frame = gif_blocks(animated)[1]
    vp8, vp8l, vp8x = webp_chunk(lossy, b"VP8 "), webp_chunk(lossless, b"VP8L"), webp_chunk(animated_webp, b"VP8X")
    return {
        "png 100000x100000": ("image/png", with_png_dimensions(png, 100_000, 100_000)),
        "png 2^31-1 x 2^31-1": ("image/png", with_png_dimensions(png, 2**31 - 1, 2**31 - 1)),
        "png 4294967295 x 1": ("image/png", with_png_dimensions(png, 2**32 - 1, 1)),
        "png 0x0": ("image/png", with_png_dimensions(png, 0, 0)),
        "gif screen 65535x65535": ("image/gif", patched(gif, 6, "<HH", 65535, 65535)),
        "gif frame 65535x65535": ("image/gif", patched(gif, gif_blocks(gif)[0] + 5, "<HH", 65535, 65535)),
        "gif second frame grows the canvas to 65535x65535": (
            "image/gif", patched(animated, second_frame + 5, "<HH", 65535, 65535)
        ),
        "gif second frame placed at 65000,65000": (
            "image/gif", patched(animated, second_frame + 1, "<HH", 65000, 65000)
        ),
        "jpeg 65535x65535": ("image/jpeg", patched(jpeg, jpeg_sof_offset(jpeg) + 5, ">HH", 65535, 65535)),
        "jpeg 0 lines": ("image/jpeg", patched(jpeg, jpeg_sof_offset(jpeg) + 5, ">H", 0)),
        "progressive jpeg 65535x65535": (
            "image/jpeg", patched(progressive, jpeg_sof_offset(progressive) + 5, ">HH", 65535, 65535)
        ),
        "webp VP8 16383x16383": ("image/webp", patched(lossy, vp8 + 6, "<HH", 0x3FFF, 0x3FFF)),
        "webp VP8L 16384x16384": ("image/webp", patched(lossless, vp8l + 1, "<I", 0x3FFF | 0x3FFF << 14)),
        # VP8X: 1 byte of flags, 3 reserved, then canvas width - 1 and height - 1 in 24 bits each.
        "webp VP8X canvas 16777216x16777216": (
            "image/webp", animated_webp[: vp8x + 4] + b"\xff" * 6 + animated_webp[vp8x + 10 :]
        ),
    }


@pytest.mark.parametrize("case", sorted(huge_dimensions()))
def test_absurd_dimensions_are_refused(uploader, case):
    content_type, data = huge_dimensions()[case]
    assert uploader.outcome(data, content_type) == REFUSED


def test_dimensions_in_budget_without_the_pixels_to_fill_them(uploader):
    """6000x6000 fits the pixel budget, but the files hold the data of 48x40.

    zlib tells Pillow that the PNG's data ends early: refused. libjpeg fills
    a JPEG's missing data with grey and only warns, which Pillow does not
    pass on: kept, and shown grey by browsers too.
    """
    png, jpeg = BASES["png"][1], BASES["jpeg"][1]
    assert uploader.outcome(with_png_dimensions(png, 6000, 6000), "image/png") == REFUSED
    assert uploader.outcome(patched(jpeg, jpeg_sof_offset(jpeg) + 5, ">HH", 6000, 6000), "image/jpeg") == KEPT


# --- other formats around or instead of an image --------------------------------

HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'><script>alert(2)</script></svg>"


def zip_file():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", HTML)
    return buffer.getvalue()


WRAPPERS = {"html": HTML, "zip": zip_file(), "pdf": PDF, "svg": SVG}


@pytest.mark.parametrize("base", sorted(BASES))
def test_image_after_another_format_is_refused_as_unsupported(uploader, base):
    content_type, data = BASES[base]
    for name, other in WRAPPERS.items():
        assert uploader.message(other + data, content_type) == "Unsupported file type.", name


@pytest.mark.parametrize("base", sorted(BASES))
def test_image_followed_by_another_format_is_refused(uploader, base):
    """A polyglot; except after a JPEG, whose end may carry camera data, where the bytes are kept whole."""
    content_type, data = BASES[base]
    allowed = {REFUSED, KEPT} if content_type == "image/jpeg" else {REFUSED}
    cases = {name: data + other for name, other in WRAPPERS.items()}
    cases["zeros"] = data + b"\0" * 64
    assert_outcomes(uploader, cases, content_type, allowed)


def test_jpeg_carrying_further_images_is_kept_whole(uploader):
    """MPF, as cameras write gain maps and stereo pairs: a second JPEG after the first one's end."""
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 200, 10))
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    assert uploader.outcome(buffer.getvalue(), "image/jpeg") == KEPT


@pytest.mark.parametrize("content_type", ["image/png", "image/svg+xml", "image/gif"])
def test_svg_is_refused_whatever_it_is_declared_as(uploader, content_type):
    assert uploader.message(SVG, content_type) == "Unsupported file type."
    assert uploader.message(b'<?xml version="1.0"?>\n' + SVG, content_type) == "Unsupported file type."


# --- bombs ------------------------------------------------------------------------


def gif_with_frames(count, width, height):
    """A GIF of ``count`` one-pixel frames on a ``width`` x ``height`` canvas: 15 bytes a frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    one_pixel = b"\x02\x02\x44\x01\x00"  # LZW code size 2; clear, index 0, end
    return header + (descriptor + one_pixel) * count + b"\x3b"


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_chunk(png, chunk, after_idat=False):
    """Insert a chunk right after IHDR, or right before IEND."""
    at = len(png) - 12 if after_idat else 33
    return png[:at] + chunk + png[at:]


def zlib_bomb(size=64 * 1024 * 1024):
    return zlib.compress(b"\0" * size, 9)  # 64 MiB of zeros in about 64 KiB


def jpeg_with_extra_scans(jpeg, count):
    """A progressive JPEG with ``count`` more scans: copies of its last scan header, without data."""
    last_scan = jpeg.rindex(b"\xff\xda")
    header = jpeg[last_scan : last_scan + 2 + struct.unpack_from(">H", jpeg, last_scan + 2)[0]]
    return jpeg[:-2] + header * count + jpeg[-2:]


@functools.cache
def bombs():
    png = BASES["png"][1]
    bomb = zlib_bomb()
    jpeg = BASES["progressive-jpeg"][1]
    return {
        "gif: 30 frames of a 4000x4000 canvas": ("image/gif", gif_with_frames(30, 4000, 4000)),
        "png: zTXt inflating to 64 MiB": ("image/png", png_with_chunk(png, png_chunk(b"zTXt", b"Comment\0\0" + bomb))),
        "png: zTXt bomb after the pixels": (
            "image/png", png_with_chunk(png, png_chunk(b"zTXt", b"Comment\0\0" + bomb), after_idat=True)
        ),
        "png: compressed iTXt inflating to 64 MiB": (
            "image/png", png_with_chunk(png, png_chunk(b"iTXt", b"Comment\0\x01\0\0\0" + bomb))
        ),
        "png: iCCP inflating to 64 MiB": ("image/png", png_with_chunk(png, png_chunk(b"iCCP", b"icc\0\0" + bomb))),
        "jpeg: one more progressive scan than the scan cap": (
            "image/jpeg", jpeg_with_extra_scans(jpeg, images.MAX_JPEG_SCANS + 1 - jpeg.count(b"\xff\xda"))
        ),
    }


@pytest.mark.parametrize("case", sorted(bombs()))
def test_bomb_is_refused(uploader, case):
    content_type, data = bombs()[case]
    assert uploader.outcome(data, content_type) == REFUSED


# --- structure caps: many small pieces, each costing Pillow a Python call ---------


def gif_with_comment(gif, sub_blocks):
    """A comment extension of ``sub_blocks`` one-byte sub-blocks before the first image."""
    at = 13 + gif_color_table_size(gif[10])
    return gif[:at] + b"\x21\xfe" + b"\x01X" * sub_blocks + b"\x00" + gif[at:]


def jpeg_with_comments(jpeg, count):
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def png_with_empty_chunks(png, count):
    return png_with_chunk(png, png_chunk(b"zzZz", b"") * count)


def structures(past):
    """A case for each structure cap: ``past`` it by one piece, or else just below it."""
    png, gif = BASES["png"][1], BASES["gif"][1]
    jpeg, progressive = BASES["jpeg"][1], BASES["progressive-jpeg"][1]
    own_scans = progressive.count(b"\xff\xda")

    def pieces(cap):
        return cap + 1 if past else cap - 50  # room for the image's own pieces

    return {
        "png chunks": ("image/png", png_with_empty_chunks(png, pieces(images.MAX_PNG_CHUNKS))),
        "gif blocks": ("image/gif", gif_with_comment(gif, pieces(images.MAX_GIF_BLOCKS))),
        "jpeg markers": ("image/jpeg", jpeg_with_comments(jpeg, pieces(images.MAX_JPEG_MARKERS))),
        "jpeg scans": ("image/jpeg", jpeg_with_extra_scans(progressive, images.MAX_JPEG_SCANS - own_scans + past)),
        "frames": ("image/gif", gif_with_frames(images.MAX_FRAMES + past, 1, 1)),
    }


@pytest.mark.parametrize("case", sorted(structures(past=True)))
def test_one_piece_past_a_structure_cap_is_refused(uploader, case):
    content_type, data = structures(past=True)[case]
    assert uploader.outcome(data, content_type) == REFUSED


@pytest.mark.parametrize("case", sorted(structures(past=False)))
def test_image_up_to_a_structure_cap_is_kept_whole(uploader, case):
    content_type, data = structures(past=False)[case]
    assert uploader.outcome(data, content_type) == KEPT


# --- camera images (HEIC/HEIF, AVIF): brands, grids, sequences, strips --------------------------

MiB = 1024 * 1024


def with_brands(data, major, *compatible):
    """``data`` with its ftyp's major brand and its first compatible brands replaced (same length)."""
    out = bytearray(data)
    out[8:12] = major
    for index, brand in enumerate(compatible):
        out[16 + 4 * index : 20 + 4 * index] = brand
    return bytes(out)


def ispe_patched(data, index, width, height):
    _, payload, _ = iso_box(data, b"ispe", index)
    return patched(data, payload + 4, ">II", width, height)


def grid_patched(data, width, height):
    """heic-grid's grid descriptor (in its idat: version, flags, rows - 1, columns - 1, 16-bit width and height)."""
    _, payload, _ = iso_box(data, b"idat")
    return patched(data, payload + 4, ">HH", width, height)


def camera_cases():
    heic, grid, avif = BASES["heic"][1], BASES["heic-grid"][1], BASES["avif"][1]
    return {
        # The brands say one codec, the items hold another: the decoder the brand names fails on them.
        "heic bytes branded avif": ("image/avif", with_brands(heic, b"avif", b"avif")),
        "avif bytes branded heic": ("image/heic", with_brands(avif, b"heic", b"heic", b"heic")),
        # The grid's ispe says 96 x 80; its descriptor says 60000 x 60000 (3.6 G pixels of canvas).
        "grid descriptor claiming 60000x60000": ("image/heic", grid_patched(grid, 60000, 60000)),
        # Honest grid size, but each of its tiles claims 16384 x 16384 (the decoder allocates a tile at that).
        "grid tiles claiming 16384x16384": ("image/heic", ispe_patched(grid, 1, 16384, 16384)),
        "heic ispe 100000x100000": ("image/heic", ispe_patched(heic, 0, 100_000, 100_000)),
        "avif ispe 65535x65535": ("image/avif", ispe_patched(avif, 0, 65535, 65535)),
        "heic ispe 0x0": ("image/heic", ispe_patched(heic, 0, 0, 0)),
        "heic without a meta box": ("image/heic", heic[:28] + heic[28 + iso_box(heic, b"meta")[2] - 28 - 12 :]),
        "heic whose box sizes are 0 (to the end)": ("image/heic", patched(heic, iso_box(heic, b"mdat")[0], ">I", 0)),
        "heic with a 64-bit box size past the end": (
            "image/heic", heic[: iso_box(heic, b"mdat")[0]] + struct.pack(">I4sQ", 1, b"free", 2**63)
        ),
    }


@pytest.mark.parametrize("case", sorted(camera_cases()))
def test_a_hostile_camera_image_is_refused(uploader, case):
    content_type, data = camera_cases()[case]
    assert uploader.outcome(data, content_type) == REFUSED


@pytest.mark.parametrize("case", ["grid descriptor claiming 60000x60000", "grid tiles claiming 16384x16384",
                                  "heic ispe 100000x100000", "avif ispe 65535x65535"])
def test_a_camera_image_claiming_a_huge_canvas_is_refused_by_the_estimate_before_decoding(uploader, case):
    """Without the walk's sizes, libheif would be left to allocate (or refuse) the canvas itself."""
    content_type, data = camera_cases()[case]
    assert uploader.outcome(data, content_type) == REFUSED
    assert uploader.last.json["detail"].startswith("The image is too large to decode"), uploader.last.json


def with_item_type(data, old, new):
    """``data`` with its infe entries of type ``old`` given type ``new``."""
    _, payload, end = iso_box(data, b"iinf")
    return data[:payload] + data[payload:end].replace(b"\0" + old, b"\0" + new) + data[end:]


@pytest.mark.parametrize("content_type, base, item", [
    ("image/heic", "heic", b"unci"),  # libheif's own uncompressed codec
    ("image/heic", "heic", b"av01"),  # AV1 in a HEIC
    ("image/heif", "heic", b"j2k1"),  # JPEG 2000 in a generic HEIF (major brand mif1)
    ("image/avif", "avif", b"hvc1"),  # HEVC in an AVIF
])
def test_an_item_coded_otherwise_than_its_brand_says_is_refused_before_any_decoder(uploader, content_type, base,
                                                                                   item):
    data = with_item_type(BASES[base][1], b"av01" if base == "avif" else b"hvc1", item)
    if content_type == "image/heif":
        data = with_brands(data, b"mif1", b"mif1", b"miaf")
    assert uploader.outcome(data, content_type) == REFUSED
    assert "which its brand does not announce" in uploader.last.json["detail"], uploader.last.json


@pytest.mark.parametrize("major", [b"mp42", b"isom", b"crx ", b"jp2 "])
def test_an_iso_media_file_of_another_brand_is_not_a_camera_image(uploader, major):
    """An MP4 video, a raw photo, a JPEG 2000: ftyp alone does not make a HEIC."""
    data = with_brands(BASES["heic"][1], major, major, major)
    assert uploader.message(data, "image/heic") == "Unsupported file type."


def test_a_camera_image_over_the_pixel_limit_is_refused_before_decoding():
    """Sizes under the memory estimate's reach (no limit given), over the pixel limit: refused by its count."""
    data = ispe_patched(BASES["heic"][1], 0, 8000, 6000)  # 48 M pixels
    with pytest.raises(images.InvalidImage, match="more than 40000000 pixels"):
        images.verify_image(data, 40_000_000)


@pytest.mark.parametrize("base", ["heic", "avif"])
def test_a_camera_image_followed_by_a_box_that_holds_nothing_valid_is_refused(uploader, base):
    """A ZIP or HTML appended is no box (the polyglot test above); one wrapped in a box that claims
    more bytes than follow is a truncated file."""
    content_type, data = BASES[base]
    assert uploader.outcome(data + struct.pack(">I4s", 4096, b"free") + b"PK\x03\x04", content_type) == REFUSED


def test_a_jpeg_is_counted_at_its_full_size_though_it_decodes_scaled_down():
    """The decode is drafted to about the preview's scale; the pixel limit is the header's width x height."""
    buffer = io.BytesIO()
    Image.new("L", (7000, 6000)).save(buffer, "JPEG")  # 42 Mpx; far fewer once drafted
    with pytest.raises(images.InvalidImage, match="more than 40000000 pixels"):
        images.verify_image(buffer.getvalue(), 40_000_000)

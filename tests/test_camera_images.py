"""Camera images (issue 19): HEIC/HEIF and AVIF through the same pipeline as web images.

Every sample is made here with the decoders' own encoders (pillow-heif's
x265, Pillow's aom). What is checked: the brands decide the stored type
within the one image family, orientation is applied exactly once (libheif
applies a HEIC's irot/imir itself and resets its EXIF orientation; Pillow
hands an AVIF's as EXIF), colour profiles become sRGB, metadata stays
behind, the variants are always WebP, an AVIF sequence is decoded frame by
frame while a HEIF's several images are a collection shown by its primary
one, and the decoders are loaded only where images are decoded. The hostile
cases (truncated, bit flips, polyglots, grids, brands, bombs) are in
tests/test_image_corpus.py with the other formats'.
"""

import io
import subprocess
import sys
import warnings

import pytest
from PIL import Image

import cli
import models
from harness.image_corpus import BASES, iso_box
from imaging import images, variants
from harness.imaging import save_options
from tests.imaging import SRGB_BLUE, SRGB_GREEN, SRGB_RED, encode, rgb_profile
from tests.test_files import upload
from tests.test_image_corpus import with_brands
from tests.test_variants import fetch, info, opened

CAMERA = ["image/heic", "image/avif"]
FILES = "/api/v2/chats/files"


@pytest.fixture(autouse=True)
def production_warning_filters():
    with warnings.catch_warnings():
        images.pillow_warnings_as_errors()
        yield


@pytest.fixture
def app(sqlite_app):
    return sqlite_app


@pytest.fixture
def user(app):
    with app.app_context(), models.db.connection_context():
        return cli.create_user("alice", "acme", lifetime_days=1)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth(user):
    return {"Coder-Session-Token": user["token"]}


def stored(client, auth, user, data, declared):
    """The upload's answer, and the Content-Type its download is served with."""
    response = upload(client, auth, data, declared, user["organization_id"])
    assert response.status_code == 201, response.json
    file_id = response.json["id"]
    return file_id, client.get(f"{FILES}/{file_id}", headers=auth).headers["Content-Type"]


# --- what the bytes are ---------------------------------------------------------------------------


@pytest.mark.parametrize("major, compatible, expected", [
    (b"heic", [b"mif1", b"heic"], "image/heic"),
    (b"heix", [b"mif1"], "image/heic"),
    (b"hevc", [b"msf1"], "image/heic"),  # a HEVC image sequence
    (b"mif1", [b"heic", b"miaf"], "image/heic"),  # the container brand first, the codec among the compatible
    (b"mif1", [b"miaf", b"MiHB"], "image/heif"),  # no codec named: the generic container
    (b"msf1", [b"iso8"], "image/heif"),
    (b"avif", [b"mif1", b"miaf"], "image/avif"),
    (b"avis", [b"msf1"], "image/avif"),
    (b"mif1", [b"avif", b"miaf"], "image/avif"),
    (b"msf1", [b"avis"], "image/avif"),
    (b"mp42", [b"isom", b"avc1"], None),  # an MP4 video
    (b"isom", [b"avif"], None),  # its major brand says what it is; Pillow's and libheif's plugins agree
    (b"crx ", [b"isom"], None),  # a Canon raw photo
])
def test_the_ftyp_brands_decide_the_camera_type(major, compatible, expected):
    ftyp = b"ftyp" + major + b"\0\0\0\0" + b"".join(compatible)
    assert images.sniff((len(ftyp) + 4).to_bytes(4, "big") + ftyp + b"\0" * 16) == expected


@pytest.mark.parametrize("declared, data, expected", [
    ("image/png", BASES["avif"][1], "image/avif"),  # web and camera images are one family for detection
    ("image/heic", BASES["jpeg"][1], "image/jpeg"),
    ("image/jpeg", BASES["heic"][1], "image/heic"),
    ("image/heif", BASES["heic"][1], "image/heic"),  # HEVC-coded: image/heic whatever it was declared
    ("image/heic", with_brands(BASES["heic"][1], b"mif1", b"mif1", b"miaf"), "image/heif"),
    ("image/avif", BASES["animated-avif"][1], "image/avif"),
])
def test_the_stored_type_is_the_detected_one(client, auth, user, declared, data, expected):
    _, served = stored(client, auth, user, data, declared)
    assert served == expected


def test_the_camera_types_are_allowed_after_the_web_ones():
    assert images.ALLOWED_TYPES[:4] == ("image/png", "image/jpeg", "image/gif", "image/webp")
    assert images.ALLOWED_TYPES[4:7] == ("image/heic", "image/heif", "image/avif")


# --- the same pipeline: orientation, colour, metadata, always WebP ----------------------------------


def quadrants(width, height):
    """Red, blue on top; green, white below: how it looks upright."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    image.paste((0, 0, 255), (width // 2, 0, width, height // 2))
    image.paste((0, 255, 0), (0, height // 2, width // 2, height))
    return image


def sideways(content_type):
    """A photo stored turned, with EXIF orientation 6: displayed 2000 x 1000 like quadrants(2000, 1000).

    pillow-heif writes the orientation as the HEIC's irot/imir (and EXIF 1); Pillow writes an AVIF's as
    irot/imir and keeps the EXIF as given."""
    exif = Image.Exif()
    exif[variants.ORIENTATION_TAG] = 6
    stored_turned = quadrants(2000, 1000).transpose(Image.Transpose.ROTATE_90)  # what orientation 6 undoes
    return encode(stored_turned, content_type, exif=exif.tobytes(), quality=90)


def assert_upright(image):
    image = image.convert("RGB")
    width, height = image.size
    expected = {(width // 4, height // 4): (255, 0, 0), (3 * width // 4, height // 4): (0, 0, 255),
                (width // 4, 3 * height // 4): (0, 255, 0), (3 * width // 4, 3 * height // 4): (255, 255, 255)}
    for point, colour in expected.items():
        pixel = image.getpixel(point)
        assert all(abs(a - b) < 50 for a, b in zip(pixel, colour)), (point, pixel, colour)


@pytest.mark.parametrize("content_type", CAMERA)
def test_orientation_is_applied_once(client, auth, user, content_type):
    """libheif turns a HEIC by its irot/imir while decoding and pillow-heif sets its EXIF orientation to 1;
    Pillow leaves an AVIF's pixels as stored and reports the turn as EXIF orientation. Either way the
    variants are upright, not turned a second time."""
    file_id, _ = stored(client, auth, user, sideways(content_type), content_type)
    described = info(client, auth, file_id)
    assert (described["width"], described["height"]) == (2000, 1000)
    for variant, size in (("thumbnail", (256, 128)), ("preview", (1280, 640))):
        image = opened(fetch(client, auth, file_id, variant))
        assert image.size == size
        assert_upright(image)


XMP_TURNED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
              b'</x:xmpmeta>')


def test_an_avif_xmp_orientation_turns_nothing(client, auth, user):
    """Only the container's irot/imir turn an AVIF (browsers ignore XMP there); Pillow's getexif() would
    take its XMP tiff:Orientation for an EXIF one. (pillow-heif writes a HEIC's as irot: it turns it.)"""
    data = encode(quadrants(2000, 1000), "image/avif", xmp=XMP_TURNED, quality=90)
    assert b"irot" not in data
    file_id, _ = stored(client, auth, user, data, "image/avif")
    assert (info(client, auth, file_id)["width"], info(client, auth, file_id)["height"]) == (2000, 1000)
    assert_upright(opened(fetch(client, auth, file_id, "thumbnail")))


@pytest.mark.parametrize("content_type", CAMERA)
def test_an_embedded_colour_profile_is_converted_to_srgb(client, auth, user, content_type):
    swapped = rgb_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED)  # its red is sRGB's blue
    data = encode(Image.new("RGB", (1600, 1200), (255, 0, 0)), content_type, icc_profile=swapped, quality=90)
    file_id, _ = stored(client, auth, user, data, content_type)
    for variant in variants.NAMES:
        image = opened(fetch(client, auth, file_id, variant))
        assert "icc_profile" not in image.info
        red, _, blue = image.convert("RGB").getpixel((10, 10))
        assert blue > 200 and red < 60, (variant, red, blue)


SECRET = "SECRET-52.5163N-13.3777E"


@pytest.mark.parametrize("content_type", CAMERA)
def test_no_metadata_is_carried_over_and_the_variants_are_webp_even_when_the_original_fits(
        client, auth, user, content_type):
    exif = Image.Exif()
    exif[0x010E] = SECRET  # ImageDescription
    exif.get_ifd(0x8825)[2] = (52.0, 30.0, 58.68)  # GPSLatitude
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description about="{SECRET}"/></x:xmpmeta>'.encode()
    data = encode(quadrants(300, 200), content_type, exif=exif.tobytes(), xmp=xmp)  # fits the preview's box
    assert SECRET.encode() in data
    file_id, _ = stored(client, auth, user, data, content_type)
    described = info(client, auth, file_id)
    assert described["preview"] == {"width": 300, "height": 200, "content_type": "image/webp"}
    for variant in variants.NAMES:
        response = fetch(client, auth, file_id, variant)
        assert response.headers["Content-Type"] == "image/webp"
        assert response.headers["Content-Disposition"].endswith('.webp"') or "filename" not in \
            response.headers["Content-Disposition"]
        assert SECRET.encode() not in response.data
        image = opened(response)
        assert image.format == "WEBP"
        assert dict(image.getexif()) == {}
        assert not {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile"} & set(image.info)


@pytest.mark.parametrize("content_type", CAMERA)
def test_transparency_is_kept(client, auth, user, content_type):
    image = Image.new("RGBA", (1600, 800), (200, 30, 90, 255))
    image.paste((0, 0, 0, 0), (0, 0, 800, 800))
    file_id, _ = stored(client, auth, user, encode(image, content_type, quality=90), content_type)
    thumbnail = opened(fetch(client, auth, file_id, "thumbnail"))
    assert thumbnail.mode == "RGBA"
    assert thumbnail.getpixel((32, 64))[3] < 10 and thumbnail.getpixel((224, 64))[3] > 245


# --- several frames or images ------------------------------------------------------------------------


def sequence(pillow_format, colours, size=(320, 240), **options):
    frames = [Image.new("RGB", size, colour) for colour in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, pillow_format, save_all=True, append_images=frames[1:], duration=100,
                   **save_options(pillow_format, options))
    return buffer.getvalue()


COLOURS = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]


def test_an_avif_sequence_is_decoded_frame_by_frame_and_its_variants_are_webp_stills(client, auth, user):
    data = sequence("AVIF", COLOURS)
    file_id, served = stored(client, auth, user, data, "image/avif")
    described = info(client, auth, file_id)
    assert (served, described["animated"]) == ("image/avif", True)
    assert described["preview"]["content_type"] == "image/webp"  # not the original, though animated
    for variant in variants.NAMES:
        image = opened(fetch(client, auth, file_id, variant))
        assert (image.format, getattr(image, "n_frames", 1)) == ("WEBP", 1)
        red, green, _ = image.convert("RGB").getpixel((5, 5))
        assert red > 180 and green < 60  # the first frame


def test_every_frame_of_an_avif_sequence_counts_against_the_pixel_limit():
    """Each frame is decoded: three frames of 320 x 240 are over a limit two of them fit in."""
    data = sequence("AVIF", COLOURS)
    assert images.verify_image(data, 3 * 320 * 240).animated is True
    with pytest.raises(images.InvalidImage, match="more than 153600 pixels"):
        images.verify_image(data, 2 * 320 * 240)


def test_a_heif_collection_is_shown_by_its_primary_image_and_every_image_is_decoded(client, auth, user):
    """Several top-level images (a burst): not an animation; the variants show the primary one."""
    data = sequence("HEIF", COLOURS, primary_index=1)
    file_id, served = stored(client, auth, user, data, "image/heic")
    described = info(client, auth, file_id)
    assert (served, described["animated"]) == ("image/heic", False)
    _, green, _ = opened(fetch(client, auth, file_id, "thumbnail")).convert("RGB").getpixel((5, 5))
    assert green > 180
    with pytest.raises(images.InvalidImage, match="more than 153600 pixels"):
        images.verify_image(data, 2 * 320 * 240)


def test_a_heif_sequence_is_treated_by_its_primary_image_and_a_broken_track_is_refused(client, auth, user):
    """pillow-heif reads image items, not tracks: a file branded as a sequence shows its primary image.
    libheif still parses the track's boxes: one that is not a track is an invalid file."""
    data = with_brands(BASES["heic"][1], b"msf1", b"hevs")
    file_id, served = stored(client, auth, user, data, "image/heif")
    assert (served, info(client, auth, file_id)["animated"]) == ("image/heic", False)
    moov = (8 + 100).to_bytes(4, "big") + b"moov" + bytes(range(100))
    response = upload(client, auth, data + moov, "image/heic", user["organization_id"])
    assert (response.status_code, response.json["message"]) == (400, "Invalid image file.")


# --- extreme shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type, options", [
    ("image/avif", {}),
    ("image/heic", {"tile_size": 256}),  # x265 will not encode one row: a grid of tiles holds it
])
def test_a_one_pixel_high_strip_is_kept_and_its_variants_made(client, auth, user, content_type, options):
    data = encode(Image.new("RGB", (16384, 1), (30, 160, 90)), content_type, quality=50, **options)
    file_id, _ = stored(client, auth, user, data, content_type)
    described = info(client, auth, file_id)
    assert (described["width"], described["height"]) == (16384, 1)
    assert (described["thumbnail"]["width"], described["thumbnail"]["height"]) == (256, 1)
    assert opened(fetch(client, auth, file_id, "preview")).size == (1280, 1)


def test_a_grid_is_estimated_at_its_canvas_not_its_first_tile():
    """The walk reads the grid's descriptor: the canvas the decoder assembles the tiles into."""
    from imaging import isobmff

    data = BASES["heic-grid"][1]
    sizes = isobmff.walk(data)
    assert (sizes.canvas, sizes.grid, sizes.item_types) == ((96, 80), True, {b"grid", b"hvc1"})  # as its ispe
    _, payload, _ = iso_box(data, b"idat")
    grown = bytearray(data)
    grown[payload + 4 : payload + 8] = (4000).to_bytes(2, "big") + (3000).to_bytes(2, "big")
    assert (isobmff.walk(bytes(grown)).canvas, isobmff.walk(bytes(grown)).grid) == ((4000, 3000), True)
    assert images.estimate_decode_memory(bytes(grown)) > 4000 * 3000 * 8


# --- where the decoders are loaded ----------------------------------------------------------------------

CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
{body}
"""


def run_python(body):
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", CHECK.format(body=body), root], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_serving_process_does_not_load_libheif_and_the_decode_sandbox_does():
    """The app reads ALLOWED_TYPES but decodes nothing; the sandbox's task module registers the decoders
    at import, before its memory ceiling (their libraries count in its idle size)."""
    serving = run_python("import wsgi; from PIL import Image; "
                         "print('pillow_heif' in sys.modules, 'HEIF' in Image.OPEN)")
    assert serving == ["False", "False"]
    sandbox = run_python("import sandbox.tasks; sandbox.tasks.prepare(); "
                         "from PIL import Image, AvifImagePlugin; import pillow_heif; "
                         "print('HEIF' in Image.OPEN, pillow_heif.options.DECODE_THREADS, "
                         "AvifImagePlugin.DEFAULT_MAX_THREADS, pillow_heif.options.DISABLE_SECURITY_LIMITS, "
                         "pillow_heif.options.THUMBNAILS)")
    assert sandbox == ["True", "1", "1", "False", "False"]


@pytest.mark.parametrize("content_type, believed", [("image/png", True), ("image/heic", False),
                                                     ("image/avif", False)])
def test_a_sandbox_claiming_a_camera_original_as_its_own_preview_is_not_believed(content_type, believed):
    """A preview that is the original is a web image's only: a taken-over decoder cannot make the service
    serve a HEIC or AVIF where a WebP is promised."""
    from sandbox import tasks as sandboxed

    answer = {"info": {"content_type": content_type, "width": 300, "height": 200, "animated": False},
              "still": {"width": 300, "height": 200},
              "made": [[{"name": "preview", "content_type": content_type, "width": 300, "height": 200}, None]]}
    if believed:
        _, _, made = sandboxed._image_results(answer, [], 1000, "0" * 64)
        assert made[0].original
    else:
        with pytest.raises(ValueError):
            sandboxed._image_results(answer, [], 1000, "0" * 64)

"""Decoder memory: the estimate covers the measured peak for every file of the hostile corpus,
an image over MAX_DECODE_MEMORY is refused before decoding, and waiting for a decode slot is bounded.

The corpus files are as large as the pixel limit allows and built once into
var/bench/decode-corpus (bench/decode_memory.py, which prints the table).
Each measurement is a fresh subprocess; memory, not time, is asserted.
"""

import contextlib
import io
import mmap

import pytest
from PIL import Image

from bench.decode_memory import ASPECT_CORPUS, CORPUS, _camera, _camera_collection, _gif_by_hand, corpus_file, measure
from imaging import images
from sandbox import tasks as sandboxed
from tests.conftest import _create_user, make_app
from tests.single_backend import database_url, storage_config  # noqa: F401 (fixtures)
from tests.test_files import assert_error, object_count, row_count, upload

MiB = 1024 * 1024


@pytest.mark.parametrize("entry", CORPUS, ids=[entry[0] for entry in CORPUS])
def test_estimate_covers_the_measured_peak_and_is_not_far_above_it(entry):
    row = measure(*entry)
    assert row["estimate"] >= row["measured"], row
    # Generous: the estimate may not refuse an image for want of precision (APNG without disposal: 2x).
    assert row["estimate"] <= 3 * row["measured"] + images.DECODE_BASE_MEMORY, row


@pytest.mark.parametrize("entry", ASPECT_CORPUS, ids=[entry[0] for entry in ASPECT_CORPUS])
def test_estimate_covers_the_measured_peak_of_extreme_aspect_ratios(entry):
    """One pixel wide: a row pointer per row of every image Pillow holds (8 bytes, for 1 byte of palette
    pixel); one row high: the PNG decoder's two rows and resize()'s weights. Over, not near: no upper bound."""
    row = measure(*entry)
    assert row["estimate"] >= row["measured"], row


def _camera_frames(count, size=(1600, 1200)):
    return [Image.new("RGB", size, (40 * index, 200 - 40 * index, 90)) for index in range(count)]


# Camera images of a few megapixels: at 40 M pixels (bench/decode_memory.py's CAMERA_CORPUS, in
# docs/PERFORMANCE.md) x265 and aom take most of a minute to write each.
FAST_HEIF = {"enc_params": {"preset": "ultrafast"}}
CAMERA_SAMPLES = (
    ("test-heic-3mp", "image/heic", lambda: _camera(Image.new("RGB", (2000, 1500), (200, 30, 90)), "HEIF",
                                                    **FAST_HEIF)),
    ("test-heic-3mp-rgba-grid", "image/heic",
     lambda: _camera(Image.new("RGBA", (2000, 1500), (200, 30, 90, 128)), "HEIF", tile_size=256, **FAST_HEIF)),
    # Several images, large enough that what is kept of each (and an AVIF's reference frames) shows.
    ("test-heic-4-images", "image/heic",
     lambda: _camera_collection(_camera_frames(4, (3000, 2000)), "HEIF", **FAST_HEIF)),
    ("test-avif-3mp-rgba", "image/avif", lambda: _camera(Image.new("RGBA", (2000, 1500), (200, 30, 90, 128)), "AVIF")),
    ("test-avif-4-frames", "image/avif", lambda: _camera_collection(_camera_frames(4, (3000, 2000)), "AVIF")),
)


@pytest.mark.parametrize("entry", CAMERA_SAMPLES, ids=[entry[0] for entry in CAMERA_SAMPLES])
def test_estimate_covers_the_measured_peak_of_camera_images(entry):
    """HEIC (pillow-heif keeps every image it decoded) and AVIF (a sequence holds reference frames)."""
    row = measure(*entry)
    assert row["estimate"] >= row["measured"], row
    assert row["estimate"] <= 3 * row["measured"] + images.DECODE_BASE_MEMORY, row


# Issue 16: a GIF whose second frame grows its 10 x 10 screen to 6320 x 6320 (+495 MiB), and a
# 1 x 39,999,999 palette PNG (+354 MiB), both under the pixel limit, were estimated from their headers.
@pytest.mark.parametrize("name", ["gif-frame-past-the-screen", "png-palette-1x39999999"])
def test_the_issues_grown_gif_and_one_pixel_wide_png_are_refused_before_decoding(client, auth, user, app, name):
    name, content_type, builder = next(entry for entry in CORPUS + ASPECT_CORPUS if entry[0] == name)
    data = corpus_file(name, builder).read_bytes()
    response = upload(client, auth, data, content_type, organization=user["organization_id"])
    assert_error(response, 400, "Invalid image file.")
    assert "too large to decode" in response.json["detail"]
    assert row_count(app) == 0
    assert object_count(app) == 0


def small_screen_large_frame():
    """A 10 x 10 screen and a 1200 x 900 frame at (1200, 900): Pillow decodes a 2400 x 1800 canvas."""
    return _gif_by_hand((10, 10), [(0, 0, 10, 10), (1200, 900, 1200, 900)])


def test_a_gif_frame_past_its_screen_is_counted_at_the_canvas_it_grows_and_accepted_when_small(client, auth, user):
    row = measure("gif-frame-past-a-small-screen", "image/gif", small_screen_large_frame)
    assert row["estimate"] >= row["measured"], row
    response = upload(client, auth, small_screen_large_frame(), "image/gif", organization=user["organization_id"])
    assert response.status_code == 201, response.json


def noise_image(content_type, side):
    grey = Image.effect_noise((side, side), 90).convert("L")
    image = Image.merge("RGB", [grey, grey.transpose(Image.Transpose.ROTATE_90),
                                grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if content_type == "image/png" else "GIF")
    return buffer.getvalue()


def mapped_kib(path):
    """The resident size of this process's mapping of ``path`` (/proc/self/smaps)."""
    with open("/proc/self/smaps") as smaps:
        lines = iter(smaps)
        for line in lines:
            if line.rstrip().endswith(str(path)):
                return next(int(field.split()[1]) for field in lines if field.startswith("Rss:"))
    raise AssertionError(f"{path} is not mapped")


@pytest.mark.parametrize(("content_type", "side"), [("image/png", 1400), ("image/gif", 2200)])  # a GIF's decode
def test_a_decode_over_a_mapped_file_keeps_only_a_window_of_its_pages(tmp_path, content_type, side):  # reads twice
    """RSS counts a mapping's pages once read: a decode drops those it has read (images.forget_pages),
    so an upload's body costs a window of its file, not all of it."""
    path = tmp_path / "upload"
    path.write_bytes(noise_image(content_type, side))
    resident = []
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        assert len(mapping) > 4 * images.FORGET_STEP
        images.verify_image(mapping, 10**8, on_first_frame=lambda image, size: resident.append(mapped_kib(path)))
        resident.append(mapped_kib(path))
    # One step of reading, Pillow's read block and the kernel's fault-around.
    assert max(resident) * 1024 <= images.FORGET_STEP + 512 * 1024, resident


def webp_lossless(side):
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (1, 2, 3)).save(buffer, "WEBP", lossless=True, method=0)
    return buffer.getvalue()


def _webp(size, **options):
    buffer = io.BytesIO()
    frames = [Image.new("RGBA", size, (1, 2, 3, 128)), Image.new("RGBA", size, (3, 2, 1, 255))]
    frames[0].save(buffer, "WEBP", save_all=options.pop("animated", False), append_images=frames[1:], **options)
    return buffer.getvalue()


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 80}, {"quality": 80, "exif": b"Exif\0\0"},
                                     {"animated": True, "lossless": True}],
                         ids=["VP8L", "VP8", "VP8X still", "VP8X animation"])
@pytest.mark.parametrize("size", [(1, 1), (317, 2), (16383, 3)])
def test_the_webp_size_read_before_opening_is_the_one_pillow_opens(options, size):
    """Pillow's WebP open already allocates libwebp's canvases, so the estimate reads the size first."""
    data = _webp(size, **options)
    with Image.open(io.BytesIO(data)) as image:
        assert images._webp_canvas_size(data) == image.size == size


def test_the_issues_tiny_lossless_webp_is_refused_before_decoding(client, auth, user, app):
    name, content_type, builder = next(entry for entry in CORPUS if entry[0] == "webp-lossless")
    data = corpus_file(name, builder).read_bytes()  # 6320 x 6320 in a few bytes: under the pixel limit
    response = upload(client, auth, data, content_type, organization=user["organization_id"])
    assert_error(response, 400, "Invalid image file.")
    assert "too large to decode" in response.json["detail"]
    assert row_count(app) == 0
    assert object_count(app) == 0


@pytest.mark.parametrize(("side", "status"), [(256, 201), (2000, 400)])
def test_max_decode_memory_is_the_setting(tmp_path, database_url, storage_config, side, status):
    app = make_app(database_url, storage_config, tmp_path, MAX_DECODE_MEMORY=40 * MiB)
    account = _create_user(app, "carol", "acme")
    response = upload(app.test_client(), {"Coder-Session-Token": account["token"]}, webp_lossless(side),
                      "image/webp", organization=account["organization_id"])
    assert response.status_code == status, response.json


def test_waiting_for_a_decode_slot_is_bounded_with_a_503(tmp_path, database_url, storage_config):
    app = make_app(database_url, storage_config, tmp_path, DECODE_WAIT_TIMEOUT=0)
    account = _create_user(app, "carol", "acme")
    data = webp_lossless(16)
    decode = sandboxed.decode_pool(app.config["MAX_DECODE_MEMORY"], app.config["MAX_FILE_SIZE"])
    with contextlib.ExitStack() as busy:
        for _ in range(decode.size):  # every decode sandbox busy decoding
            busy.enter_context(decode.held(wait=10))
        response = upload(app.test_client(), {"Coder-Session-Token": account["token"]}, data, "image/webp",
                          organization=account["organization_id"])
    assert_error(response, 503, "Too many uploads in progress.")
    assert response.headers["Retry-After"]

"""Thumbnails, previews, /info and DELETE, on every database and storage backend."""

import hashlib
import io
import json
import threading
import uuid

import pytest
from PIL import Image

import cli
import models
from harness.image_corpus import make_animation
from harness.imaging import make_animated_gif, make_image
from imaging import images, variants
from jobs import generate_variants
from storage import StorageError, get_storage, object_key, variant_key
from tests.imaging import (
    SRGB_BLUE,
    SRGB_GREEN,
    SRGB_RED,
    encode,
    rgb_profile,
    smooth_image,
)
from tests.test_files import assert_error, upload
from tests.test_image_corpus import VariantMemory

FILES = "/api/v2/chats/files"


def uploaded(client, auth, user, data, content_type, name=None):
    headers = {"Content-Disposition": f'attachment; filename="{name}"'} if name else None
    response = upload(client, auth, data, content_type, user["organization_id"], headers=headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def fetch(client, auth, file_id, variant):
    response = client.get(f"{FILES}/{file_id}/{variant}", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def opened(response):
    return Image.open(io.BytesIO(response.data))


def info(client, auth, file_id):
    response = client.get(f"{FILES}/{file_id}/info", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def variant_keys(app):
    with app.app_context():
        return sorted(key for key, _ in get_storage().iter_objects(app.config["VARIANTS_PREFIX"]))


def head_object(app, key):
    with app.app_context():
        return get_storage().head(key)


# --- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, thumbnail, preview",
    [
        ((2000, 1000), (256, 128), (1280, 640)),
        ((1000, 3000), (85, 256), (427, 1280)),
        ((300, 200), (256, 171), None),  # already fits the preview: the original serves
        ((100, 50), (100, 50), None),  # never scaled up
        ((1, 1), (1, 1), None),
        ((1, 3000), (1, 256), (1, 1280)),
    ],
)
def test_variants_fit_their_boxes_keeping_aspect_never_scaled_up(client, auth, user, size, thumbnail, preview):
    data = encode(smooth_image(*size), "image/png")
    file_id = uploaded(client, auth, user, data, "image/png")
    assert opened(fetch(client, auth, file_id, "thumbnail")).size == thumbnail
    got = fetch(client, auth, file_id, "preview")
    if preview is None:
        assert got.data == data
    else:
        assert opened(got).size == preview
    described = info(client, auth, file_id)
    assert (described["thumbnail"]["width"], described["thumbnail"]["height"]) == thumbnail
    assert (described["preview"]["width"], described["preview"]["height"]) == (preview or size)


def test_variant_boxes_are_the_specs():
    assert [(spec.name, spec.max_width, spec.max_height) for spec in variants.VARIANTS] == [
        ("thumbnail", 256, 256), ("preview", 1280, 1280)]
    assert images.DRAFT_BOUND == max(variants.WORKING_BOX)  # the JPEG decode covers the largest variant


@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (2600, 100), (1281, 9), (20000, 3), (640, 480), (7, 7)])
def test_jpeg_draft_size_is_the_size_the_decoder_hands_over(size):
    data = encode(Image.new("RGB", size, (10, 20, 30)), "image/jpeg")
    seen = []
    images.verify_image(data, 10**9, on_first_frame=lambda frame, _size: seen.append(frame.size))
    assert seen == [images.jpeg_draft_size(*size)]
    assert max(seen[0]) >= min(1280, max(size))  # still covers the preview


# --- orientation ------------------------------------------------------------------


def quadrants(width, height):
    """Upright: red top-left, green top-right, blue bottom-left, white bottom-right."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    image.paste((0, 255, 0), (width // 2, 0, width, height // 2))
    image.paste((0, 0, 255), (0, height // 2, width // 2, height))
    return image


# How a camera stores an upright picture for each orientation value: the inverse of variants.UPRIGHT.
STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
          7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def oriented_jpeg(orientation, width, height):
    upright = quadrants(width, height)
    stored = upright.transpose(STORED[orientation]) if STORED[orientation] is not None else upright
    exif = Image.Exif()
    exif[variants.ORIENTATION_TAG] = orientation
    return encode(stored, "image/jpeg", exif=exif.tobytes(), quality=95)


def assert_upright(image):
    width, height = image.size
    corners = {"top-left": (width // 4, height // 4), "top-right": (3 * width // 4, height // 4),
               "bottom-left": (width // 4, 3 * height // 4), "bottom-right": (3 * width // 4, 3 * height // 4)}
    expected = {"top-left": (255, 0, 0), "top-right": (0, 255, 0), "bottom-left": (0, 0, 255),
                "bottom-right": (255, 255, 255)}
    for corner, point in corners.items():
        pixel = image.convert("RGB").getpixel(point)
        assert all(abs(a - b) < 40 for a, b in zip(pixel, expected[corner])), (corner, pixel)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_variants_are_upright_and_dimensions_are_as_displayed(app, client, auth, user, orientation):
    data = oriented_jpeg(orientation, 2000, 1000)  # displayed 2000 x 1000 whatever the orientation
    file_id = uploaded(client, auth, user, data, "image/jpeg")
    described = info(client, auth, file_id)
    assert (described["width"], described["height"]) == (2000, 1000)
    for variant, size in (("thumbnail", (256, 128)), ("preview", (1280, 640))):
        image = opened(fetch(client, auth, file_id, variant))
        assert image.size == size
        assert_upright(image)
    with app.app_context(), models.db.connection_context():
        row = models.ChatFile.get_by_id(file_id)
        assert (row.width, row.height) == (2000, 1000)
    metadata = head_object(app, object_key(app.config["S3_PREFIX"], user["organization_id"], file_id)).metadata
    assert (metadata["width"], metadata["height"]) == ("2000", "1000")


@pytest.mark.filterwarnings("error")  # as in production (imaging/images.py): Pillow's warnings are errors
@pytest.mark.parametrize("content_type", ["image/png", "image/webp"])  # a JPEG's EXIF is checked when verified
def test_a_malformed_exif_block_is_ignored(client, auth, user, content_type):
    image = quadrants(600, 300)
    data = encode(image, content_type, exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff garbage")
    file_id = uploaded(client, auth, user, data, content_type)
    assert (info(client, auth, file_id)["width"], info(client, auth, file_id)["height"]) == (600, 300)
    assert_upright(opened(fetch(client, auth, file_id, "thumbnail")))


# --- what is not carried over, and colour ---------------------------------------------

SECRET = "SECRET-52.5163N-13.3777E"


def with_metadata(content_type):
    exif = Image.Exif()
    exif[0x010E] = SECRET  # ImageDescription
    exif.get_ifd(0x8825)[2] = (52.0, 30.0, 58.68)  # GPSLatitude
    exif.get_ifd(0x8825)[1] = "N"
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description about="{SECRET}"/></x:xmpmeta>'.encode()
    image = smooth_image(2000, 1500)
    if content_type == "image/png":
        from PIL import PngImagePlugin

        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", SECRET)
        text.add_itxt("XML:com.adobe.xmp", xmp.decode())
        return encode(image, content_type, exif=exif.tobytes(), pnginfo=text)
    return encode(image, content_type, exif=exif.tobytes(), xmp=xmp)


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "image/webp"])
def test_no_metadata_is_carried_over(client, auth, user, content_type):
    data = with_metadata(content_type)
    assert SECRET.encode() in data
    file_id = uploaded(client, auth, user, data, content_type)
    for variant in variants.NAMES:
        response = fetch(client, auth, file_id, variant)
        assert SECRET.encode() not in response.data
        image = opened(response)
        assert dict(image.getexif()) == {}
        assert not {"exif", "xmp", "XML:com.adobe.xmp", "Comment", "icc_profile"} & set(image.info)


def test_an_embedded_colour_profile_is_converted_to_srgb(client, auth, user):
    # A profile whose red is sRGB's blue: shown right, the red pixels are blue.
    swapped = rgb_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED)
    data = encode(Image.new("RGB", (1600, 1200), (255, 0, 0)), "image/jpeg", icc_profile=swapped, quality=95)
    file_id = uploaded(client, auth, user, data, "image/jpeg")
    for variant in variants.NAMES:
        image = opened(fetch(client, auth, file_id, variant))
        assert "icc_profile" not in image.info
        red, green, blue = image.convert("RGB").getpixel((10, 10))
        assert blue > 200 and red < 60, (variant, (red, green, blue))


def test_an_unusable_colour_profile_is_ignored(client, auth, user):
    data = encode(Image.new("RGB", (1600, 1200), (255, 0, 0)), "image/png", icc_profile=b"not a profile" * 20)
    file_id = uploaded(client, auth, user, data, "image/png")
    red, _, blue = opened(fetch(client, auth, file_id, "preview")).convert("RGB").getpixel((10, 10))
    assert red > 200 and blue < 60


# --- transparency, animation, every format --------------------------------------------


def half_transparent(width, height):
    image = smooth_image(width, height, "RGBA")
    image.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    return image


@pytest.mark.parametrize("content_type", ["image/png", "image/webp", "image/gif"])
def test_transparency_is_kept(client, auth, user, content_type):
    image = half_transparent(1600, 800)
    if content_type == "image/gif":
        image = image.convert("RGB").quantize(255)
        image.paste(255, (0, 0, 800, 800))
        data = encode(image, content_type, transparency=255)
    else:
        data = encode(image, content_type, **({"lossless": True} if content_type == "image/webp" else {}))
    file_id = uploaded(client, auth, user, data, content_type)
    for variant in variants.NAMES:
        image = opened(fetch(client, auth, file_id, variant))
        assert image.mode == "RGBA"
        width, height = image.size
        assert image.getpixel((width // 8, height // 2))[3] == 0
        assert image.getpixel((7 * width // 8, height // 2))[3] == 255


def test_an_opaque_alpha_channel_is_dropped(client, auth, user):
    file_id = uploaded(client, auth, user, encode(smooth_image(1600, 800, "RGBA"), "image/png"), "image/png")
    assert opened(fetch(client, auth, file_id, "thumbnail")).mode == "RGB"


ANIMATIONS = {
    "gif": ("image/gif", lambda: make_animated_gif(frames=3, width=1600, height=900)),
    "apng": ("image/png", lambda: make_animation("PNG", count=3, width=1600, height=900)),
    "webp": ("image/webp", lambda: make_animation("WEBP", count=3, width=1600, height=900)),
}


@pytest.mark.parametrize("kind", sorted(ANIMATIONS))
def test_an_animated_original_is_its_own_preview_and_its_thumbnail_a_still(app, client, auth, user, kind):
    content_type, make = ANIMATIONS[kind]
    data = make()
    file_id = uploaded(client, auth, user, data, content_type, name="dance.gif")
    described = info(client, auth, file_id)
    assert described["animated"] is True
    assert described["preview"] == {"width": 1600, "height": 900, "content_type": content_type}
    preview = fetch(client, auth, file_id, "preview")
    assert (preview.data, preview.headers["Content-Type"]) == (data, content_type)
    assert preview.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert preview.headers["Content-Disposition"] == 'inline; filename="dance.gif"'
    thumbnail = opened(fetch(client, auth, file_id, "thumbnail"))
    assert (thumbnail.size, getattr(thumbnail, "n_frames", 1)) == ((256, 144), 1)
    assert variant_keys(app) == [variant_key(app.config["VARIANTS_PREFIX"], user["organization_id"], file_id,
                                             "thumbnail")]  # the preview is not stored twice


# Every mode each format can store (a JPEG has no palette, alpha or 16 bits; PNG and GIF no CMYK).
FORMAT_MODES = [(content_type, mode)
                for content_type in ("image/png", "image/jpeg", "image/gif", "image/webp")
                for mode in ("RGB", "L", "P", "CMYK", "LA", "I;16")
                if (content_type, mode) not in {("image/jpeg", "P"), ("image/jpeg", "LA"), ("image/jpeg", "I;16"),
                                                ("image/png", "CMYK"), ("image/gif", "CMYK")}]


@pytest.mark.parametrize(("content_type", "mode"), FORMAT_MODES)
def test_variants_of_every_format_and_mode(sqlite_app, content_type, mode):
    image = smooth_image(1600, 1200, "RGB")
    image = image.convert(mode) if mode != "I;16" else image.convert("I").point(lambda v: v * 256).convert("I;16")
    data = encode(image, content_type)
    client = sqlite_app.test_client()
    with sqlite_app.app_context(), models.db.connection_context():
        user = cli.create_user("alice", "acme", lifetime_days=1)
    auth = {"Coder-Session-Token": user["token"]}
    file_id = uploaded(client, auth, user, data, content_type)
    for variant, size in (("thumbnail", (256, 192)), ("preview", (1280, 960))):
        response = fetch(client, auth, file_id, variant)
        assert response.headers["Content-Type"] == "image/webp"
        got = opened(response)
        got.load()
        assert got.size == size
        assert got.mode == "RGB" or (got.mode == "RGBA" and mode in ("LA",))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_variants_make_no_full_size_copy_of_the_frame(sqlite_app, monkeypatch, mode):
    """Orientation, colour profile and alpha are all dealt with at the preview's size, and the
    shrink goes band by band: no image larger than the preview's box is made, not even the RGB(A)
    one Pillow needs to resample a palette or the premultiplied one for alpha (imaging/banded.py)."""
    memory = VariantMemory(monkeypatch)
    exif = Image.Exif()
    exif[variants.ORIENTATION_TAG] = 6
    image = half_transparent(3000, 2000).convert(mode) if mode != "P" else smooth_image(3000, 2000).quantize(64)
    data = encode(image, "image/png", exif=exif.tobytes(),
                  icc_profile=rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE) if mode != "L" else None)
    first_frame = variants.FirstFrame()
    images.verify_image(data, 10**8, on_first_frame=first_frame)
    assert (first_frame.still.width, first_frame.still.height) == (2000, 3000)
    assert memory.larger_than_box == []
    assert memory.problems == []


def test_the_still_handed_back_holds_no_pixels():
    """The upload view keeps the still through its storage writes: only its sizes, not the 1280 px image."""
    data = encode(smooth_image(2000, 1500), "image/png")
    info, still, made = variants.verify_and_make(data, 10**8, None, hashlib.sha256(data).hexdigest())
    assert (still.image, still.width, still.height) == (None, 2000, 1500)
    assert [variant.name for variant in made] == list(variants.NAMES)


# --- headers, auth, layout ----------------------------------------------------------


@pytest.fixture
def photo(client, auth, user):
    data = encode(smooth_image(2000, 1500), "image/jpeg")
    return uploaded(client, auth, user, data, "image/jpeg", name="beach.jpeg"), data


@pytest.mark.parametrize("variant", variants.NAMES)
def test_variant_headers_etag_304_and_head(app, client, auth, photo, variant, monkeypatch):
    file_id, _ = photo
    response = fetch(client, auth, file_id, variant)
    sha256 = hashlib.sha256(response.data).hexdigest()
    expected = {
        "Content-Type": "image/webp",
        "Content-Length": str(len(response.data)),
        "Content-Disposition": 'inline; filename="beach.webp"',
        "Cache-Control": "private, max-age=31536000, immutable",
        "ETag": f'"{sha256}"',
        "X-Content-Type-Options": "nosniff",
    }
    assert {name: response.headers.get(name) for name in expected} == expected

    monkeypatch.setattr(app.extensions["storage"], "open", lambda *a: pytest.fail("storage read"))
    head = client.head(f"{FILES}/{file_id}/{variant}", headers=auth)
    assert (head.status_code, head.data) == (200, b"")
    assert {name: head.headers.get(name) for name in expected} == expected
    for method in (client.get, client.head):
        not_modified = method(f"{FILES}/{file_id}/{variant}", headers={**auth, "If-None-Match": f'"{sha256}"'})
        assert (not_modified.status_code, not_modified.data) == (304, b"")
        assert not_modified.headers["ETag"] == f'"{sha256}"'


@pytest.mark.parametrize("path", ["thumbnail", "preview", "info"])
def test_variants_and_info_answer_like_the_original_to_strangers(client, auth, other_user, photo, path):
    file_id, _ = photo
    assert_error(client.get(f"{FILES}/{file_id}/{path}"), 401)
    assert_error(client.get(f"{FILES}/not-a-uuid/{path}", headers=auth), 400, "Invalid file ID.")
    assert_error(client.get(f"{FILES}/{uuid.uuid4()}/{path}", headers=auth), 404)
    assert_error(client.get(f"{FILES}/{file_id}/{path}", headers={"Coder-Session-Token": other_user["token"]}), 404)


def test_info_describes_the_file_and_its_variants(client, auth, user, photo):
    file_id, data = photo
    described = info(client, auth, file_id)
    assert described.pop("created_at").endswith("Z")
    assert described == {
        "id": file_id,
        "organization_id": user["organization_id"],
        "name": "beach.jpeg",
        "content_type": "image/jpeg",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": 2000,
        "height": 1500,
        "animated": False,
        "thumbnail": {"width": 256, "height": 192, "content_type": "image/webp"},
        "preview": {"width": 1280, "height": 960, "content_type": "image/webp"},
    }


def test_variants_are_stored_apart_with_their_own_type_and_metadata(app, client, auth, user, photo):
    file_id, _ = photo
    prefix = app.config["VARIANTS_PREFIX"]
    assert prefix == "chat-file-variants/"
    assert variant_keys(app) == [variant_key(prefix, user["organization_id"], file_id, name)
                                 for name in ("preview", "thumbnail")]
    with app.app_context():
        originals = [key for key, _ in get_storage().iter_objects(app.config["S3_PREFIX"])]
    assert originals == [object_key(app.config["S3_PREFIX"], user["organization_id"], file_id)]
    for name, size in (("thumbnail", (256, 192)), ("preview", (1280, 960))):
        body = fetch(client, auth, file_id, name).data
        stored = head_object(app, variant_key(prefix, user["organization_id"], file_id, name))
        assert (stored.content_type, stored.size) == ("image/webp", len(body))
        assert stored.metadata == {"file-id": file_id, "variant": name, "sha256": hashlib.sha256(body).hexdigest(),
                                   "width": str(size[0]), "height": str(size[1])}


def test_variants_prefix_is_configurable(tmp_path):
    from tests.conftest import make_app

    app = make_app(f"sqlite:///{tmp_path}/db.sqlite", {"LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}, tmp_path,
                   VARIANTS_PREFIX="derived/")
    client = app.test_client()
    with app.app_context(), models.db.connection_context():
        user = cli.create_user("alice", "acme", lifetime_days=1)
    file_id = uploaded(client, {"Coder-Session-Token": user["token"]}, user, make_image(), "image/png")
    assert variant_keys(app) == [f"derived/{user['organization_id']}/{file_id}/thumbnail"]
    models.close_all_connections()


@pytest.mark.parametrize("prefix", ["chat-files/", "/abs/", "a/../b/"])
def test_a_variants_prefix_clashing_with_the_originals_or_escaping_is_refused_at_start_up(prefix):
    import config

    with pytest.raises(config.ConfigError, match="VARIANTS_PREFIX"):
        config.load({"VARIANTS_PREFIX": prefix})


def test_a_variant_that_cannot_be_stored_fails_the_upload_leaving_nothing(app, client, auth, user, monkeypatch):
    store = app.extensions["storage"]
    real_put = store.put

    def put(key, *args):
        if key.startswith(app.config["VARIANTS_PREFIX"]) and key.endswith("/preview"):
            raise StorageError("unreachable")
        return real_put(key, *args)

    monkeypatch.setattr(store, "put", put)
    response = upload(client, auth, encode(smooth_image(2000, 1500), "image/jpeg"), "image/jpeg",
                      user["organization_id"])
    assert_error(response, 500, "Failed to save chat file.")
    with app.app_context(), models.db.connection_context():
        assert models.ChatFile.select().count() == 0
    with app.app_context():
        assert list(get_storage().iter_objects()) == []


# --- delete -------------------------------------------------------------------------


def all_paths(file_id):
    return [f"{FILES}/{file_id}", f"{FILES}/{file_id}/thumbnail", f"{FILES}/{file_id}/preview",
            f"{FILES}/{file_id}/info"]


def test_the_uploader_deletes_a_file_and_its_variants(app, client, auth, photo):
    file_id, _ = photo
    assert all(client.get(path, headers=auth).status_code == 200 for path in all_paths(file_id))
    response = client.delete(f"{FILES}/{file_id}", headers=auth)
    assert (response.status_code, response.data) == (204, b"")
    for path in all_paths(file_id):
        assert_error(client.get(path, headers=auth), 404)
    with app.app_context(), models.db.connection_context():
        assert models.ChatFile.select().count() == 0
        assert models.ChatFileVariant.select().count() == 0
    with app.app_context():
        assert list(get_storage().iter_objects()) == []
    assert_error(client.delete(f"{FILES}/{file_id}", headers=auth), 404)


def test_another_user_cannot_delete_a_file(client, auth, other_user, photo):
    file_id, _ = photo
    assert_error(client.delete(f"{FILES}/{file_id}", headers={"Coder-Session-Token": other_user["token"]}), 404)
    assert all(client.get(path, headers=auth).status_code == 200 for path in all_paths(file_id))


def test_delete_checks_token_and_id(client, auth):
    assert_error(client.delete(f"{FILES}/{uuid.uuid4()}"), 401)
    assert_error(client.delete(f"{FILES}/not-a-uuid", headers=auth), 400, "Invalid file ID.")
    assert_error(client.delete(f"{FILES}/{uuid.uuid4()}", headers=auth), 404)


def test_a_storage_failure_while_deleting_still_answers_204_and_gc_finishes(app, client, auth, photo, monkeypatch):
    file_id, _ = photo

    def broken_delete(key):
        raise StorageError("unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(app.extensions["storage"], "delete", broken_delete)
        assert client.delete(f"{FILES}/{file_id}", headers=auth).status_code == 204
    for path in all_paths(file_id):
        assert_error(client.get(path, headers=auth), 404)
    with app.app_context():
        assert len(list(get_storage().iter_objects())) == 3  # the original and two variants, rowless now

    result = app.test_cli_runner().invoke(args=["gc-storage", "--older-than", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["deleted"]) == 3
    with app.app_context():
        assert list(get_storage().iter_objects()) == []


# --- gc-storage and variants --------------------------------------------------------


def test_gc_removes_orphaned_variants_after_the_grace_period_and_never_a_live_one(app, client, auth, user, photo):
    live_file, _ = photo
    prefix = app.config["VARIANTS_PREFIX"]
    orphan = variant_key(prefix, user["organization_id"], uuid.uuid4(), "thumbnail")
    foreign = [f"{prefix}{user['organization_id']}/{uuid.uuid4()}/poster", f"{prefix}notes.txt"]
    with app.app_context():
        for key in [orphan, *foreign]:
            get_storage().put(key, b"x", "image/webp", {})

    def gc(*args):
        result = app.test_cli_runner().invoke(args=["gc-storage", "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert gc()["deleted"] == []  # younger than the grace period
    swept = gc("--older-than", "0")
    assert swept["deleted"] == [orphan]
    assert sorted(swept["unrecognized"]) == sorted(foreign)
    assert variant_keys(app) == sorted([*foreign, *(variant_key(prefix, user["organization_id"], live_file, name)
                                                    for name in variants.NAMES)])
    assert all(client.get(path, headers=auth).status_code == 200 for path in all_paths(live_file))


# --- generate-variants ---------------------------------------------------------------


def forget_variants(app, file_ids, rows=True, objects=True):
    """Make files look as if uploaded before variants existed."""
    with app.app_context(), models.db.connection_context():
        for row in models.ChatFile.select().where(models.ChatFile.id.in_(file_ids)):
            for name in variants.NAMES:
                if objects:
                    get_storage().delete(variant_key(app.config["VARIANTS_PREFIX"], row.organization_id, row.id, name))
            if rows:
                models.ChatFileVariant.delete().where(models.ChatFileVariant.file == row.id).execute()


def backfill(app, *args):
    result = app.test_cli_runner().invoke(args=["generate-variants", "--json", *args])
    return result, json.loads(result.output.splitlines()[0]) if result.output.startswith("{") else None


def test_generate_variants_backfills_old_files_and_is_idempotent(app, client, auth, user):
    photo_id = uploaded(client, auth, user, oriented_jpeg(6, 2000, 1000), "image/jpeg")
    gif_id = uploaded(client, auth, user, make_animated_gif(frames=3, width=40, height=30), "image/gif")
    forget_variants(app, [photo_id, gif_id])
    with app.app_context(), models.db.connection_context():  # as version 1 stored them: sensor size, not animated
        models.ChatFile.update(width=1000, height=2000).where(models.ChatFile.id == photo_id).execute()
        models.ChatFile.update(animated=False).where(models.ChatFile.id == gif_id).execute()
    assert_error(client.get(f"{FILES}/{photo_id}/thumbnail", headers=auth), 404)

    result, summary = backfill(app)
    assert result.exit_code == 0, result.output
    assert summary == {"files": 2, "complete": 0, "generated": 2, "variants_stored": 3, "no_variants": 0, "skipped": 0,
                       "failed": []}
    assert "\r" not in result.output  # no progress line when stdout is not a terminal
    photo = info(client, auth, photo_id)
    assert (photo["width"], photo["height"], photo["preview"]["width"]) == (2000, 1000, 1280)
    assert_upright(opened(fetch(client, auth, photo_id, "preview")))
    assert info(client, auth, gif_id)["animated"] is True

    _, again = backfill(app)
    assert again == {"files": 2, "complete": 2, "generated": 0, "variants_stored": 0, "no_variants": 0, "skipped": 0,
                     "failed": []}


def test_generate_variants_remakes_a_variant_whose_object_is_missing_whatever_the_database_says(app, client, auth,
                                                                                              photo):
    file_id, _ = photo
    forget_variants(app, [file_id], rows=False)
    _, summary = backfill(app)
    assert (summary["generated"], summary["variants_stored"]) == (1, 2)
    assert opened(fetch(client, auth, file_id, "thumbnail")).size == (256, 192)


class SimulatedKill(BaseException):
    """Like the process dying: not an Exception, so nothing cleans up after it."""


def test_generate_variants_resumes_after_a_kill(app, client, auth, user, monkeypatch):
    file_ids = [uploaded(client, auth, user, encode(smooth_image(1400 + n, 1000), "image/png"), "image/png")
                for n in range(3)]
    forget_variants(app, file_ids)
    recorded = []
    real_record = generate_variants.record_variants

    def record_then_die(file_id, made):
        if len(recorded) == 1:
            raise SimulatedKill()  # the second file's objects are stored, its rows never written
        recorded.append(file_id)
        real_record(file_id, made)

    with monkeypatch.context() as patch:
        patch.setattr(generate_variants, "record_variants", record_then_die)
        with app.app_context(), models.db.connection_context(), pytest.raises(SimulatedKill):
            generate_variants.generate_missing(get_storage())

    _, summary = backfill(app)
    assert summary == {"files": 3, "complete": 1, "generated": 2, "variants_stored": 4, "no_variants": 0, "skipped": 0,
                       "failed": []}
    for file_id in file_ids:
        assert opened(fetch(client, auth, file_id, "preview")).width == 1280
    with app.app_context(), models.db.connection_context():
        assert models.ChatFileVariant.select().count() == 6


def test_generate_variants_reports_a_file_whose_original_is_gone_and_goes_on(app, client, auth, user):
    lost, kept = (uploaded(client, auth, user, make_image(), "image/png") for _ in range(2))
    forget_variants(app, [lost, kept])
    with app.app_context():
        get_storage().delete(object_key(app.config["S3_PREFIX"], user["organization_id"], lost))
    result, summary = backfill(app)
    assert result.exit_code == 1
    assert summary["failed"] == [{"id": lost, "error": "The original is missing from storage."}]
    assert summary["generated"] == 1
    assert fetch(client, auth, kept, "thumbnail").status_code == 200


def test_generate_variants_shows_a_progress_line_on_a_terminal(app, client, auth, user, monkeypatch):
    uploaded(client, auth, user, make_image(), "image/png")
    monkeypatch.setattr(cli, "stdout_is_terminal", lambda: True)
    result = app.test_cli_runner().invoke(args=["generate-variants"])
    assert result.exit_code == 0, result.output
    assert "\r1/1 files checked, 0 given variants" in result.output
    assert result.output.endswith("Checked 1 files: 1 already complete, 0 given their missing variants "
                                  "(0 objects stored).\n")


def test_generate_variants_passes_over_a_file_deleted_while_it_works(app, client, auth, photo, monkeypatch):
    file_id, _ = photo
    forget_variants(app, [file_id])
    real_store = generate_variants.store_variants

    def store_then_delete(*args):
        written = real_store(*args)
        # Another request (its own thread and connection) deletes the file meanwhile.
        statuses = []
        deleter = threading.Thread(target=lambda: statuses.append(
            client.delete(f"{FILES}/{file_id}", headers=auth).status_code))
        deleter.start()
        deleter.join(timeout=30)
        assert statuses == [204]
        return written

    monkeypatch.setattr(generate_variants, "store_variants", store_then_delete)
    result, summary = backfill(app)
    assert summary is not None, result.output
    assert result.exit_code == 0, result.output
    assert (summary["generated"], summary["skipped"], summary["failed"]) == (0, 1, [])
    assert len(variant_keys(app)) <= 2  # whatever the delete missed, gc-storage removes
    result = app.test_cli_runner().invoke(args=["gc-storage", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert variant_keys(app) == []


def on_another_thread(action):
    """action() on a thread of its own (its own database connection), as another request runs it."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(action()))
    worker.start()
    worker.join(timeout=30)
    assert outcome, "the action failed on its thread"
    return outcome[0]


def delete_row(app, file_id):
    """What a delete does first: the row (its variants' rows go with it); its objects stay for now."""
    with app.app_context(), models.db.connection_context():
        return models.ChatFile.delete().where(models.ChatFile.id == file_id).execute()


@pytest.mark.parametrize("deletion", ["by its user", "row only so far"])
def test_generate_variants_skips_a_file_deleted_after_it_was_listed(app, client, auth, user, monkeypatch, deletion):
    doomed, kept = (uploaded(client, auth, user, encode(smooth_image(1400 + n, 1000), "image/png"), "image/png")
                    for n in range(2))
    forget_variants(app, [doomed, kept])
    real_missing_variants = generate_variants._missing_variants

    def delete_then_look(storage, row):  # listed already: the batch's rows are in hand
        if str(row.id) == doomed:
            if deletion == "by its user":
                assert on_another_thread(lambda: client.delete(f"{FILES}/{doomed}", headers=auth).status_code) == 204
            else:
                assert on_another_thread(lambda: delete_row(app, doomed)) == 1
        return real_missing_variants(storage, row)

    monkeypatch.setattr(generate_variants, "_missing_variants", delete_then_look)
    result, summary = backfill(app)
    assert result.exit_code == 0, result.output
    assert (summary["files"], summary["generated"], summary["skipped"], summary["failed"]) == (2, 1, 1, [])
    assert fetch(client, auth, kept, "thumbnail").status_code == 200

    result = app.test_cli_runner().invoke(args=["generate-variants"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("Checked 1 files: 1 already complete, 0 given their missing variants "
                                  "(0 objects stored).\n")


def test_generate_variants_says_how_many_it_skipped(app, client, auth, user, monkeypatch):
    file_id = uploaded(client, auth, user, make_image(), "image/png")
    forget_variants(app, [file_id])
    real_missing_variants = generate_variants._missing_variants

    def delete_then_look(storage, row):
        assert on_another_thread(lambda: client.delete(f"{FILES}/{file_id}", headers=auth).status_code) == 204
        return real_missing_variants(storage, row)

    monkeypatch.setattr(generate_variants, "_missing_variants", delete_then_look)
    result = app.test_cli_runner().invoke(args=["generate-variants"])
    assert result.exit_code == 0, result.output
    assert result.output == ("Checked 1 files: 0 already complete, 0 given their missing variants "
                             "(0 objects stored). 1 skipped (deleted meanwhile).\n")


def test_a_wide_16_bit_grey_png_shrinks_by_more_than_the_reducing_gap(sqlite_app):
    """Pillow cannot reduce() 16-bit grey; a frame more than 4 times the box once made that a 400."""
    image = smooth_image(5200, 100, "RGB").convert("I").point(lambda v: v * 256).convert("I;16")
    client = sqlite_app.test_client()
    with sqlite_app.app_context(), models.db.connection_context():
        user = cli.create_user("alice", "acme", lifetime_days=1)
    auth = {"Coder-Session-Token": user["token"]}
    file_id = uploaded(client, auth, user, encode(image, "image/png"), "image/png")
    preview = opened(fetch(client, auth, file_id, "preview"))
    assert (preview.size, preview.mode) == ((1280, 25), "RGB")

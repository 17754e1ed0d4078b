"""imaging.banded.resized gives what Pillow's whole-frame resize gives, and never holds a full-size copy of the frame."""

import pytest
from PIL import Image, ImageChops

from imaging import banded

# (frame size, result size): several bands, a reduce by 2 or 3 (or none), a last band and a
# last reduce block cut short, a frame so wide a band holds one result row, one just over the box.
SHAPES = [((3001, 2001), (1280, 853)), ((700, 9001), (100, 1280)), ((5000, 300), (1280, 77)),
          ((1300, 1290), (1280, 1270))]


def noise_frame(mode, size):
    """Noise in every band, so every filter weight shows; alpha from opaque to clear."""
    grey = Image.effect_noise(size, 70).convert("L")
    rgb = Image.merge("RGB", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              grey.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    alpha = Image.linear_gradient("L").resize(size)
    if mode == "P":
        return rgb.quantize(200)
    if mode in ("RGBA", "LA"):
        image = rgb.convert(mode[:-1])
        image.putalpha(alpha)
        return image
    if mode == "I;16":
        return grey.convert("I").point(lambda value: value * 256).convert("I;16")
    return rgb.convert(mode)


def whole(frame, size, mode):
    converted = frame.convert(mode) if frame.mode != mode else frame
    return converted.resize(size, banded.SHRINK_FILTER, reducing_gap=2.0 if banded.can_reduce(mode) else None)


def largest_difference(one, other):
    """Per channel, premultiplied where there is alpha: a colour under alpha 1 of 255 may be off by anything."""
    if one.mode in ("RGBA", "LA"):
        one, other = (image.convert({"RGBA": "RGBa", "LA": "La"}[image.mode]) for image in (one, other))
    if one.mode == "I;16":  # compared as shown: the top 8 bits (variants._eight_bit)
        one, other = (image.point(lambda value: value / 256).convert("L") for image in (one, other))
    extrema = ImageChops.difference(one, other).getextrema()
    return max(high for _, high in extrema) if isinstance(extrema[0], tuple) else extrema[1]


@pytest.mark.parametrize("frame_size, size", SHAPES, ids=[f"{w}x{h}" for (w, h), _ in SHAPES])
@pytest.mark.parametrize("mode, resampled", [("P", "RGB"), ("RGB", "RGB"), ("RGBA", "RGBA"), ("LA", "LA"),
                                             ("L", "L"), ("CMYK", "CMYK"), ("1", "RGB")])
def test_bands_give_the_whole_frame_resize(mode, resampled, frame_size, size):
    frame = noise_frame(mode, frame_size)
    got = banded.resized(frame, size, resampled)
    expected = whole(frame, size, resampled)
    assert (got.mode, got.size) == (expected.mode, expected.size)
    # Only the filter's weights round differently (a band's rows are offset from the frame's), and a
    # premultiplied channel comes back through 8 bits twice.
    assert largest_difference(got, expected) <= 2


def test_sixteen_bit_grey_is_shrunk_without_reduce():
    frame = noise_frame("I;16", (5200, 1000))
    got = banded.resized(frame, (1280, 246), "I;16")
    assert got.mode == "I;16"
    assert largest_difference(got, whole(frame, (1280, 246), "I;16")) <= 1


@pytest.mark.parametrize("mode, resampled", [("P", "RGB"), ("RGBA", "RGBA"), ("RGB", "RGB")])
def test_no_image_made_is_larger_than_a_band_or_the_result(monkeypatch, mode, resampled):
    frame = noise_frame(mode, (4000, 3000))
    made = []
    real_new, real_image_new = Image.Image._new, Image.new
    monkeypatch.setattr(Image.Image, "_new", lambda image, core: made.append(core.size) or real_new(image, core))
    monkeypatch.setattr(Image, "new", lambda mode, size, *args: made.append(size) or real_image_new(mode, size, *args))
    banded.resized(frame, (1280, 960), resampled)
    band = banded.largest_band(frame.size, (1280, 960), resampled)
    assert band <= banded.BAND_PIXELS
    assert max(width * height for width, height in made) <= max(band, 1280 * 960)


def test_the_largest_band_of_a_frame_wider_than_a_band_holds_one_result_row():
    """A frame too wide for BAND_PIXELS gets one result row a band: its bands are bounded by the frame's height."""
    frame_size, size = (40000, 1000), (1280, 32)
    band = banded.largest_band(frame_size, size, "RGB")
    assert banded.BAND_PIXELS < band < frame_size[0] * frame_size[1] // 4

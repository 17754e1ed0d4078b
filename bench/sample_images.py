"""Real images of a chosen byte size, made with Pillow and cached on disk.

Photo-like content: a colour gradient blended with Gaussian noise, so the
encoders land near the bytes per pixel of real pictures (JPEG/WebP about 0.5,
PNG about 2.5, GIF about 1) and decoding costs what a real upload of that
size costs. Size is tuned by the pixel count: estimate bytes per pixel on a
small sample, encode at the predicted size, correct once or twice.
"""

import hashlib
import io
import math
from pathlib import Path

from PIL import Image

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
# WebP at quality 100: at 90 a noisy 8 MB WebP is 16 Mpx, which the decode-memory
# bound (with the variants' work) refuses; at 100 the same bytes hold fewer pixels.
SAVE_OPTIONS = {"JPEG": {"quality": 90}, "WEBP": {"quality": 100}, "PNG": {}, "GIF": {}}
ASPECT = 4 / 3
TOLERANCE = 0.05  # within 5% of the target is "about" the size
GENERATOR_VERSION = "2"  # bump when the content recipe changes, to refresh the cache


def _photo(width, height):
    gradient = Image.linear_gradient("L")
    channels = [gradient.rotate(angle).resize((width, height)) for angle in (0, 90, 180)]
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 32) for _ in range(3)])
    return Image.blend(Image.merge("RGB", channels), noise, 0.6)


def _palette_noise(width, height):
    # GIF: palette indices straight from noise, skipping a slow quantization step.
    noise = Image.effect_noise((width, height), 16)
    image = Image.frombytes("P", (width, height), noise.tobytes())
    image.putpalette([value for index in range(256) for value in (index, index * 7 % 256, 255 - index)])
    return image


def _encode(content_type, pixels):
    width = max(8, round(math.sqrt(pixels * ASPECT)))
    height = max(8, round(width / ASPECT))
    pillow_format = FORMATS[content_type]
    image = _palette_noise(width, height) if pillow_format == "GIF" else _photo(width, height)
    buffer = io.BytesIO()
    image.save(buffer, pillow_format, **SAVE_OPTIONS[pillow_format])
    return buffer.getvalue()


def make_sized_image(content_type, target_bytes, max_bytes=None):
    """An image of ``content_type`` within 5% of ``target_bytes`` (and never over ``max_bytes``)."""
    sample_pixels = 200 * 150
    bytes_per_pixel = len(_encode(content_type, sample_pixels)) / sample_pixels
    pixels = target_bytes / bytes_per_pixel
    data = b""
    for _ in range(4):
        data = _encode(content_type, pixels)
        fits = max_bytes is None or len(data) <= max_bytes
        if fits and abs(len(data) - target_bytes) <= TOLERANCE * target_bytes:
            break
        pixels *= target_bytes / len(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"could not make a {content_type} of at most {max_bytes} bytes")
    return data


def cached_image(cache_dir, content_type, target_bytes, max_bytes=None):
    """make_sized_image, kept in ``cache_dir`` so later runs skip the encoding."""
    key = f"{GENERATOR_VERSION}-{content_type}-{target_bytes}-{max_bytes}"
    path = Path(cache_dir) / (hashlib.sha256(key.encode()).hexdigest()[:16] + "." + FORMATS[content_type].lower())
    if path.exists():
        return path.read_bytes()
    data = make_sized_image(content_type, target_bytes, max_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def pixel_count(data):
    with Image.open(io.BytesIO(data)) as image:
        return image.width * image.height

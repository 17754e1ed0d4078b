"""Small real images made with Pillow, for tests and benchmarks (the hostile-image corpus starts from them)."""

import io

from PIL import Image

from imaging import images

FORMATS = images.PILLOW_FORMATS
# The camera encoders' fastest settings: x265's default preset takes seconds for a 2-megapixel test image.
FAST = {"HEIF": {"enc_params": {"preset": "ultrafast"}}, "AVIF": {"speed": 10}}


def save_options(pillow_format, options):
    """``options`` for ``pillow_format``'s encoder, on top of its fast settings."""
    if pillow_format == "HEIF":
        images.register_camera_decoders()  # pillow-heif's opener brings its HEIF encoder (x265); only when asked
    return {**FAST.get(pillow_format, {}), **options}


def make_image(content_type="image/png", width=32, height=24, **options):
    image = Image.new("RGB", (width, height))
    # A gradient, so encoders cannot shrink it to nothing and every byte matters.
    image.putdata([((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, FORMATS[content_type], **save_options(FORMATS[content_type], options))
    return buffer.getvalue()


def make_animated_gif(frames=3, width=16, height=16):
    # Distinct RGB colours per frame: Pillow merges identical consecutive frames.
    images = [Image.new("RGB", (width, height), color=(index * 40 % 256, 255 - index * 30 % 256, 0)) for index in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return buffer.getvalue()

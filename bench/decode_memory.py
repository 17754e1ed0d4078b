"""Decoder memory: the estimate from the header against the measured peak, per file of a hostile corpus.

``python -m bench.decode_memory`` prints the table (docs/PERFORMANCE.md,
"Decoder memory"). Each file is as large as MAX_IMAGE_PIXELS lets it be
(40 M pixels, all frames together) and tiny on disk: the costliest input a
client can send. Every decode runs in a fresh subprocess that first decodes
a small image of the same format (so code and libraries are loaded), resets
its peak RSS (``clear_refs``; ru_maxrss when not permitted), runs
``images.verify_image`` and ``variants.make`` as an upload does, and reports its peak RSS minus
its RSS before the decode. Like an upload, the decode hands its first frame
to ``variants`` and the thumbnail and preview are made: what is measured is
all of an upload's image work.
"""

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "var" / "bench" / "decode-corpus"
SIDE = 6320  # 6320 x 6320 = 39.9 M pixels, under MAX_IMAGE_PIXELS
FRAME_SIDE = 4470  # two frames of 4470 x 4470 = 40.0 M pixels together
MiB = 1024 * 1024


def _still(mode, side=SIDE, color=None):
    return Image.new(mode, (side, side), color if color is not None else _COLORS[mode])


_COLORS = {"RGB": (200, 30, 90), "RGBA": (200, 30, 90, 128), "L": 77, "P": 3, "CMYK": (10, 200, 30, 40),
           "I;16": 40000}


def _frames(mode, count=2, side=FRAME_SIDE):
    # Distinct colours: encoders merge identical frames.
    return [Image.new(mode, (side, side), (40 * index, 200 - 40 * index, 90, 128)[: len(mode)]) for index in
            range(count)]


def _noise(mode, side):
    """Noise in every band: a lossless encoder's transforms and the decoder's buffers are all used."""
    bands = [Image.effect_noise((side, side), 80).point(lambda v, k=k: (v * (k + 3)) % 256) for k in range(len(mode))]
    return Image.merge(mode, bands)


def _save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _save_animation(frames, fmt, **options):
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)


# (name, content type, builder): builders run once, their output is cached under var/bench.
CORPUS = (
    ("png-rgb", "image/png", lambda: _save(_still("RGB"), "PNG")),
    ("png-rgba", "image/png", lambda: _save(_still("RGBA"), "PNG")),
    ("png-palette", "image/png", lambda: _save(_still("P"), "PNG")),
    ("png-gray16", "image/png", lambda: _save(_still("I;16"), "PNG")),
    ("png-interlaced-rgba", "image/png", lambda: _save(_still("RGBA", side=4000), "PNG", interlace=True)),
    ("apng-rgba-2-frames", "image/png", lambda: _save_animation(_frames("RGBA"), "PNG")),
    # Dispose to the previous frame, blend over it: Pillow keeps the most canvases.
    ("apng-previous-over", "image/png", lambda: _save_animation(_frames("RGBA"), "PNG", disposal=2, blend=1)),
    ("gif-still", "image/gif", lambda: _save(_still("P"), "GIF")),
    ("gif-2-frames", "image/gif", lambda: _save_animation(_frames("RGB"), "GIF")),
    ("gif-2-frames-background", "image/gif",
     lambda: _save_animation(_frames("RGB"), "GIF", disposal=2, transparency=0)),
    ("jpeg-baseline-rgb", "image/jpeg", lambda: _save(_still("RGB"), "JPEG")),
    ("jpeg-baseline-444", "image/jpeg", lambda: _save(_still("RGB"), "JPEG", subsampling=0)),
    ("jpeg-progressive-rgb", "image/jpeg", lambda: _save(_still("RGB"), "JPEG", progressive=True)),
    ("jpeg-progressive-444", "image/jpeg", lambda: _save(_still("RGB"), "JPEG", progressive=True, subsampling=0)),
    ("jpeg-progressive-gray", "image/jpeg", lambda: _save(_still("L"), "JPEG", progressive=True)),
    ("jpeg-baseline-cmyk", "image/jpeg", lambda: _save(_still("CMYK"), "JPEG")),
    ("jpeg-progressive-cmyk", "image/jpeg", lambda: _save(_still("CMYK"), "JPEG", progressive=True)),
    ("webp-lossy", "image/webp", lambda: _save(_still("RGB"), "WEBP", quality=50, method=0)),
    ("webp-lossy-alpha", "image/webp", lambda: _save(_still("RGBA"), "WEBP", quality=50, method=0)),
    ("webp-lossless", "image/webp", lambda: _save(_still("RGB"), "WEBP", lossless=True, method=0)),
    ("webp-lossless-alpha", "image/webp", lambda: _save(_still("RGBA"), "WEBP", lossless=True, method=0)),
    ("webp-lossless-noise", "image/webp", lambda: _save(_noise("RGBA", 3000), "WEBP", lossless=True, method=0)),
    ("webp-animated-lossy", "image/webp", lambda: _save_animation(_frames("RGB"), "WEBP", quality=50, method=0)),
    ("webp-animated-lossless", "image/webp",
     lambda: _save_animation(_frames("RGBA"), "WEBP", lossless=True, method=0)),
)

WARM_UP = {"image/png": "PNG", "image/gif": "GIF", "image/jpeg": "JPEG", "image/webp": "WEBP"}

CHILD = r"""
import io, json, resource, sys
sys.path.insert(0, sys.argv[1])
from PIL import Image
import images
import variants

def status_kib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def warm_up(fmt):
    buffer = io.BytesIO()
    Image.new("RGBA" if fmt != "JPEG" else "RGB", (64, 64)).save(buffer, fmt)
    images.verify_image(buffer.getvalue(), 10**12)

with open(sys.argv[2], "rb") as handle:
    data = handle.read()
warm_up(sys.argv[3])
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    field = "VmHWM"
except OSError:
    field = None
before = status_kib("VmRSS")
info, _still, _made = variants.verify_and_make(data, 10**12, None, "0" * 64)  # what an upload does
peak = status_kib(field) if field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"measured": (peak - before) * 1024, "estimate": images.estimate_decode_memory(data),
                  "width": info.width, "height": info.height}))
"""


def corpus_file(name, builder):
    """The corpus file's path, built on first use."""
    path = CACHE_DIR / name
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_bytes(builder())
        os.replace(temporary, path)
    return path


def measure(name, content_type, builder):
    """{"name", "content_type", "bytes", "width", "height", "estimate", "measured"} for one corpus file."""
    path = corpus_file(name, builder)
    output = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), WARM_UP[content_type]],
                            check=True, capture_output=True, text=True, timeout=600).stdout
    return {"name": name, "content_type": content_type, "bytes": path.stat().st_size, **json.loads(output)}


def table(rows):
    lines = ["| format | file | bytes | pixels | estimate MiB | measured peak MiB | estimate / measured |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = row["estimate"] / row["measured"] if row["measured"] > 0 else float("inf")
        lines.append(f"| {row['content_type']} | {row['name']} | {row['bytes']:,} | {row['width']}x{row['height']} "
                     f"| {row['estimate'] / MiB:.0f} | {row['measured'] / MiB:.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.decode_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated corpus names (default: all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    wanted = {name for name in args.only.split(",") if name}
    rows = [measure(*entry) for entry in CORPUS if not wanted or entry[0] in wanted]
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()

"""Shrinking a large frame band by band: what Pillow's resize gives, without its full-size copies.

Pillow resamples only some modes, so a palette or bilevel frame first becomes
RGB(A): a copy of the whole frame at 4 bytes a pixel (a 10 MiB GIF of noise
is ~10 Mpx of palette, 40 MB). ``resize()`` then premultiplies RGBA (and LA)
into another full-size copy, and box-reduces it into a third before the
filter runs (``reducing_gap``). Here the frame goes through in bands of rows:
each band is cropped, converted, box-reduced by the factor ``resize()`` would
use and resampled into its rows of the result, reading the rows its filter
reaches above and below. Bands start on a multiple of the factor, so no
reduce block straddles two of them: the result is the whole-image one (to
the rounding of the filter's weights), and the largest image made is a band
of about BAND_PIXELS.
"""

from __future__ import annotations

import math

from PIL import Image

# Shrinking a frame: Hamming costs half of Lanczos and differs from it by
# less than the eye sees (bench/variants.py: 44-48 dB PSNR); imaging/variants.py
# makes the last step to each variant's box with Lanczos, on small images.
SHRINK_FILTER = Image.Resampling.HAMMING
# Source pixels in one band, reach included when the frame is not too wide for it: 2 MiB per RGBA copy.
# A band of a frame that needs no conversion is not copied: what it holds is
# its rows of the result and Pillow's temporary, so it is smaller (its reach,
# read twice, costs only the filter's pass over those rows).
BAND_PIXELS = 1 << 19
IN_PLACE_BAND_PIXELS = BAND_PIXELS // 4
REDUCING_GAP = 2.0  # as imaging/variants.py asked of resize(): box-reduce first while the filter still shrinks by 2+
# How far each filter reaches, in source pixels at scale 1 (Pillow's src/libImaging/Resample.c).
SUPPORT = {Image.Resampling.BOX: 0.5, Image.Resampling.BILINEAR: 1.0, Image.Resampling.HAMMING: 1.0,
           Image.Resampling.BICUBIC: 2.0, Image.Resampling.LANCZOS: 3.0}
PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}  # resize() resamples these premultiplied, as here


def resized(
    frame: Image.Image, size: tuple[int, int], mode: str, resample: Image.Resampling = SHRINK_FILTER
) -> Image.Image:
    """``frame.convert(mode).resize(size, resample, reducing_gap=REDUCING_GAP if reduce else None)``, band by band,

    where ``reduce`` is False for the modes Pillow cannot reduce() (16-bit grey).
    ``size`` is never larger than the frame (a shrink).
    """
    width, height = frame.size
    working = PREMULTIPLIED.get(mode, mode)
    in_place = frame.mode == working  # nothing to convert: read the frame's rows where they are
    (factor_x, factor_y), scale, bands = _plan(frame.size, size, resample, can_reduce(mode),
                                               IN_PLACE_BAND_PIXELS if in_place else BAND_PIXELS)
    reducing = factor_x > 1 or factor_y > 1
    reduced_width = width / factor_x  # resize()'s box after its reduce: a fraction of the last pixel
    result = Image.new(working, size)
    for top, bottom, first, last in bands:
        rows = (0, first * factor_y, width, min(height, last * factor_y))
        if in_place:
            band, origin = (frame.reduce((factor_x, factor_y), box=rows), first) if reducing else (frame, 0)
        else:
            band, origin = _converted(frame.crop(rows), mode, working), first
            if reducing:
                band = band.reduce((factor_x, factor_y))
        band = band.resize((size[0], bottom - top), resample,
                           box=(0, top * scale - origin, reduced_width, bottom * scale - origin))
        result.paste(band, (0, top))
    return result.convert(mode) if working != mode else result


def largest_band(
    frame_size: tuple[int, int], size: tuple[int, int], mode: str, resample: Image.Resampling = SHRINK_FILTER
) -> int:
    """Source pixels in the largest band resized() makes of a ``frame_size`` frame, at most
    (counted as if it were converted): what decode-memory estimates count."""
    width, height = frame_size
    (_, factor_y), _, bands = _plan(frame_size, size, resample, can_reduce(mode), BAND_PIXELS)
    return max(width * (min(height, last * factor_y) - first * factor_y) for _, _, first, last in bands)


def fit(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The size of ``width`` x ``height`` scaled to fit the box, aspect kept, never scaled up."""
    scale = min(max_width / width, max_height / height, 1)
    return max(1, round(width * scale)), max(1, round(height * scale))


def can_reduce(mode: str) -> bool:
    """Pillow's reduce() takes every mode but 16-bit grey."""
    return not mode.startswith("I;16")


def _plan(
    frame_size: tuple[int, int], size: tuple[int, int], resample: Image.Resampling, reduce: bool, band_pixels: int
) -> tuple[tuple[int, int], float, list[tuple[int, int, int, int]]]:
    """((factor_x, factor_y), scale, [(top, bottom, first, last)]): the reduce factors, the filter's
    scale in reduced rows, and per band its rows of the result and the reduced rows it reads."""
    width, height = frame_size
    factors = (_factor(width, size[0]), _factor(height, size[1])) if reduce else (1, 1)
    reduced_height = height / factors[1]
    scale = reduced_height / size[1]
    reach = SUPPORT[resample] * max(scale, 1) + 1  # reduced rows a band reads beyond its own, each side
    step = _rows_per_band(width, factors[1], scale, reach, band_pixels)
    bands: list[tuple[int, int, int, int]] = []
    for top in range(0, size[1], step):
        bottom = min(size[1], top + step)
        first = max(0, math.floor(top * scale - reach))
        last = min(math.ceil(reduced_height), math.ceil(bottom * scale + reach))
        bands.append((top, bottom, first, last))
    return factors, scale, bands


def _factor(source: int, target: int) -> int:
    """The integer box-reduce factor resize() picks for one axis with REDUCING_GAP."""
    return int(source / target / REDUCING_GAP) or 1


def _rows_per_band(width: int, factor_y: int, scale: float, reach: float, band_pixels: int) -> int:
    """Result rows per band so a band's source rows (its own and its reach) stay within ``band_pixels``."""
    source_rows = band_pixels // width // factor_y  # in reduced rows
    return max(1, int((source_rows - 2 * reach) / scale))


def _converted(band: Image.Image, mode: str, working: str) -> Image.Image:
    if band.mode != mode:
        band = band.convert(mode)
    return band.convert(working) if working != mode else band

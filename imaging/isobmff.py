"""Camera images (HEIC/HEIF, AVIF): their type from the ``ftyp`` brands, and their boxes walked before decoding.

Both are ISO base media files (ISO/IEC 14496-12): a sequence of boxes, each a
32-bit size and a four-letter type. The first is ``ftyp``, whose major brand
says what the file is, as libheif (``heif_get_file_mime_type``), pillow-heif
and Pillow's AVIF plugin read it:

- ``avif``/``avis``, or ``mif1``/``msf1`` listing ``avif``/``avis`` among its
  compatible brands: AV1-coded, ``image/avif`` (Pillow's own plugin, libavif);
- ``heic``/``heix``/``heim``/``heis`` (images) and ``hevc``/``hevx``/``hevm``/
  ``hevs`` (sequences), or ``mif1``/``msf1`` listing one of them: HEVC-coded,
  ``image/heic`` (pillow-heif, libheif with libde265);
- ``mif1``/``msf1`` naming no codec: the generic HEIF container,
  ``image/heif`` (pillow-heif; libheif decodes what it has a decoder for).

Anything else (an MP4's ``isom``, a raw file's ``crx ``) is no camera image.
An item coded otherwise than the brand says (FOREIGN_ITEMS) is refused
before a decoder sees it. The walk then checks that the boxes tile the file exactly (a truncated file,
or bytes after the last box, such as a ZIP or HTML appended to make a
polyglot, are refused) and reads, from ``meta``, the image sizes the decoder
will allocate: every ``ispe`` property and every grid's output size. A grid
image is assembled by the decoder into one canvas of the size its descriptor
claims, whatever its ``ispe`` says, so the estimate takes the larger.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Iterator

# An upload's bytes or its spooled file mapped (imaging/images.py ImageBytes).
Buffer = bytes | bytearray | mmap.mmap

AVIF_BRANDS = (b"avif", b"avis")
HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
HEIF_BRANDS = (b"mif1", b"msf1")

MAX_FTYP_SIZE = 4096  # brands are 4 bytes each: a thousand of them
MAX_BOXES = 10_000  # boxes walked in all (top level and inside meta); a photo has a few dozen
MAX_ITEMS = 1000  # libheif's own default security limit (heif_security_limits.max_items)
MAX_EXTENTS = 32  # per item, libheif's max_iloc_extents_per_item


# Items coded otherwise than the brand says are never handed to a decoder: libheif would try its other
# codecs (its own uncompressed one, a mask) on a HEIF, and an AV1 item in a HEIC is not what was declared.
# Metadata (Exif, mime), derived images (grid, iden, iovl) and new kinds (a gain map's tmap) pass.
FOREIGN_ITEMS = {
    "image/heic": (b"av01", b"avc1", b"vvc1", b"evc1", b"jpeg", b"j2k1", b"unci", b"mski"),
    "image/avif": (b"hvc1", b"avc1", b"vvc1", b"evc1", b"jpeg", b"j2k1", b"unci", b"mski"),
}
FOREIGN_ITEMS["image/heif"] = FOREIGN_ITEMS["image/heic"]  # a generic HEIF: libde265 is the decoder we have


class ContainerError(ValueError):
    """The boxes are not a well-formed camera image (truncated, overlapping, too many)."""


@dataclass(frozen=True)
class Sizes:
    """What the header says the decoder will allocate: the largest image (``ispe`` or grid canvas)."""

    canvas: tuple[int, int]
    grid: bool  # the largest is a grid's canvas
    item_types: frozenset[bytes] = frozenset()


def refuse_foreign_items(sizes: Sizes, content_type: str) -> None:
    """Raise ContainerError when an item is coded otherwise than ``content_type`` (its brand) says."""
    foreign = sorted(sizes.item_types & set(FOREIGN_ITEMS[content_type]))
    if foreign:
        raise ContainerError(f"The file holds items of type {_name(foreign[0])}, which its brand does not "
                             f"announce and this service does not decode.")


def sniff(data: bytes) -> str | None:
    """``image/avif``, ``image/heic`` or ``image/heif`` from the ``ftyp`` box at the start of ``data``, or None."""
    if len(data) < 16 or bytes(data[4:8]) != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    major = bytes(data[8:12])
    if major in AVIF_BRANDS:
        return "image/avif"
    if major in HEIC_BRANDS:
        return "image/heic"
    if major not in HEIF_BRANDS:
        return None
    compatible = bytes(data[16 : min(size, len(data), MAX_FTYP_SIZE)])
    brands = {compatible[index : index + 4] for index in range(0, len(compatible) - 3, 4)}
    if brands & set(AVIF_BRANDS):
        return "image/avif"
    if brands & set(HEIC_BRANDS):
        return "image/heic"
    return "image/heif"


def walk(data: Buffer) -> Sizes:
    """The sizes the header gives, after checking that the boxes tile ``data``; raises ContainerError."""
    counter = _Counter()
    meta: tuple[int, int] | None = None
    for index, (kind, start, end) in enumerate(_boxes(data, 0, len(data), counter)):
        if index == 0 and kind != b"ftyp":
            raise ContainerError("The file does not start with an ftyp box.")
        if kind == b"ftyp" and end - start > MAX_FTYP_SIZE:
            raise ContainerError(f"The ftyp box is larger than {MAX_FTYP_SIZE} bytes.")
        if kind == b"meta":
            if meta is not None:
                raise ContainerError("The file has more than one meta box.")
            meta = (start, end)
    if meta is None:
        raise ContainerError("The file has no meta box (no image items).")
    return _sizes(data, meta, counter)


class _Counter:
    boxes = 0

    def count(self) -> None:
        self.boxes += 1
        if self.boxes > MAX_BOXES:
            raise ContainerError(f"The file has more than {MAX_BOXES} boxes.")


def _boxes(data: Buffer, offset: int, end: int,
           counter: _Counter) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box from ``offset`` to exactly ``end``."""
    while offset < end:
        counter.count()
        if offset + 8 > end:
            raise ContainerError(f"The file has {end - offset} bytes after its last box, too few for a box.")
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            if offset + 16 > end:
                raise ContainerError(f"The {_name(kind)} box ends inside its header.")
            size, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif size == 0:  # "to the end of the file": encoders write sizes; a reader may not guess where it ends
            raise ContainerError(f"The {_name(kind)} box has no size.")
        if size < header:
            raise ContainerError(f"The {_name(kind)} box is smaller than its header.")
        if offset + size > end:
            raise ContainerError(f"The file ends inside its {_name(kind)} box "
                                 f"({offset + size - end} bytes missing), or bytes after its end are no box.")
        yield kind, offset + header, offset + size
        offset += size


def _name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))


@dataclass
class _Item:
    kind: bytes = b""
    method: int = 0  # iloc construction method: 0 file offsets, 1 offsets into idat
    extents: tuple[tuple[int, int], ...] = ()


def _sizes(data: Buffer, meta: tuple[int, int], counter: _Counter) -> Sizes:
    """The largest ispe and grid canvas of meta's items."""
    start, end = meta
    items: dict[int, _Item] = {}
    ispes: list[tuple[int, int]] = []
    idat: tuple[int, int] | None = None
    for kind, child, child_end in _boxes(data, start + 4, end, counter):  # meta is a full box: 4 bytes of version
        if kind == b"iinf":
            _read_iinf(data, child, child_end, items, counter)
        elif kind == b"iloc":
            _read_iloc(data, child, child_end, items)
        elif kind == b"idat":
            idat = (child, child_end)
        elif kind == b"iprp":
            for inner, inner_start, inner_end in _boxes(data, child, child_end, counter):
                if inner == b"ipco":
                    for prop, prop_start, prop_end in _boxes(data, inner_start, inner_end, counter):
                        if prop == b"ispe":
                            if prop_end - prop_start < 12:
                                raise ContainerError("An ispe box is too short.")
                            ispes.append(struct.unpack_from(">II", data, prop_start + 4))
    if not ispes:
        raise ContainerError("The file gives no image size (no ispe property).")
    canvases = [(size, False) for size in ispes]
    canvases += [(_grid_canvas(data, item, idat), True) for item in items.values() if item.kind == b"grid"]
    (width, height), grid = max(canvases, key=lambda entry: (entry[0][0] * entry[0][1], entry[1]))
    return Sizes((width, height), grid, frozenset(item.kind for item in items.values()))


def _read_iinf(data: Buffer, start: int, end: int, items: dict[int, _Item],
               counter: _Counter) -> None:
    version = data[start] if start < end else 0
    offset = start + (6 if version == 0 else 8)  # full box header, then a 16- or 32-bit entry count
    for kind, entry, entry_end in _boxes(data, offset, end, counter):
        if kind != b"infe" or entry_end - entry < 4 or data[entry] < 2:
            continue  # infe versions 0 and 1 carry no item type: no image
        id_size = 2 if data[entry] == 2 else 4
        if entry + 4 + id_size + 6 > entry_end:
            raise ContainerError("An infe box is too short.")
        item_id = int.from_bytes(data[entry + 4 : entry + 4 + id_size], "big")
        _item(items, item_id).kind = bytes(data[entry + 6 + id_size : entry + 10 + id_size])


def _item(items: dict[int, _Item], item_id: int) -> _Item:
    if item_id not in items and len(items) >= MAX_ITEMS:
        raise ContainerError(f"The file has more than {MAX_ITEMS} items.")
    return items.setdefault(item_id, _Item())


def _read_iloc(data: Buffer, start: int, end: int, items: dict[int, _Item]) -> None:
    """Each item's extents (ISO/IEC 14496-12, ItemLocationBox, versions 0-2)."""
    reader = _Reader(data, start, end)
    version = reader.int(1)
    reader.int(3)  # flags
    sizes = reader.int(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = reader.int(1)
    base_size, index_size = sizes >> 4, (sizes & 15) if version in (1, 2) else 0
    if any(size not in (0, 4, 8) for size in (offset_size, length_size, base_size, index_size)):
        raise ContainerError("The iloc box has field sizes other than 0, 4 or 8 bytes.")
    count = reader.int(2 if version < 2 else 4)
    for _ in range(count):
        item = _item(items, reader.int(2 if version < 2 else 4))
        item.method = reader.int(2) & 15 if version in (1, 2) else 0
        reader.int(2)  # data reference index
        base = reader.int(base_size)
        extent_count = reader.int(2)
        if extent_count > MAX_EXTENTS:
            raise ContainerError(f"An item has more than {MAX_EXTENTS} extents.")
        extents = []
        for _ in range(extent_count):
            reader.int(index_size)
            extents.append((base + reader.int(offset_size), reader.int(length_size)))
        item.extents = tuple(extents)


class _Reader:
    def __init__(self, data: Buffer, offset: int, end: int) -> None:
        self.data, self.offset, self.end = data, offset, end

    def int(self, size: int) -> int:
        if self.offset + size > self.end:
            raise ContainerError("A box ends before its fields.")
        value = int.from_bytes(self.data[self.offset : self.offset + size], "big")
        self.offset += size
        return value


def _grid_canvas(data: Buffer, item: _Item, idat: tuple[int, int] | None) -> tuple[int, int]:
    """The output size of a grid item's descriptor (ISO/IEC 23008-12, ImageGrid): version, flags,
    rows - 1, columns - 1, then width and height, 16 bits each (32 when flags & 1)."""
    if item.method == 1:
        if idat is None:
            raise ContainerError("A grid item is in an idat box the file does not have.")
        base, limit = idat
    elif item.method == 0:
        base, limit = 0, len(data)
    else:
        raise ContainerError("A grid item is stored in a way this service does not read.")
    descriptor = b"".join(bytes(data[base + offset : min(base + offset + length, limit)])
                          for offset, length in item.extents[:2])[:12]
    if len(descriptor) < 8:
        raise ContainerError("A grid item's descriptor cannot be read.")
    if descriptor[1] & 1:
        if len(descriptor) < 12:
            raise ContainerError("A grid item's descriptor cannot be read.")
        width, height = struct.unpack_from(">II", descriptor, 4)
    else:
        width, height = struct.unpack_from(">HH", descriptor, 4)
    return width, height

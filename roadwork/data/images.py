"""Image bytes out of the raw parquet shards, and decoding them to RGB (at reduced scale when possible).

The index points at (shard, row); the bytes stay in the shards. A NATIX shard is ~400 MB of JPEGs, so
the reader maps a row to its row group and reads only the `image` column of that row group, keeping a
few decoded row groups: sequential access (rows in shard order) reads each row group once.
"""

from __future__ import annotations

import bisect
import io
import math
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_COLUMN = "image"
EXIF_ORIENTATION = 0x0112
# Most pixels an image may decode to (after JPEG's reduced-scale decode, where it applies). Above the
# largest routine camera frame (50 MP sensors: 8160x6120 = 49.9 MP), below what a serving process can
# hold in memory (docs/benchmarks.md). PIL's own MAX_IMAGE_PIXELS (89 MP) only warns below 179 MP.
MAX_PIXELS = 64_000_000
REDUCED_SCALE_FORMATS = ("JPEG", "MPO")  # decoded at 1/2, 1/4 or 1/8 scale by PIL's draft (MPO: a JPEG)


class ImageDecodeError(ValueError):
    """Bytes that do not decode to an image."""


class ImageTooLargeError(ImageDecodeError):
    """An image that would decode to more than MAX_PIXELS pixels (refused from its header)."""


def check_pixels(image: Image.Image, n_bytes: int | None = None) -> None:
    """Refuse an opened, not yet loaded image whose decode (at its current draft size) exceeds MAX_PIXELS
    (`n_bytes`: the size of its encoded bytes, named in the message when known)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        what = f"{image.format or 'image'} of {n_bytes} bytes" if n_bytes is not None else _what(image)
        raise ImageTooLargeError(
            f"{what}, {width}x{height} ({width * height / 1e6:.1f} MP "
            f"to decode): over the limit of {MAX_PIXELS / 1e6:g} MP (roadwork.data.images.MAX_PIXELS)"
        )


class ShardReader:
    """Reads image bytes by (shard, row) from the parquet shards under `root`.

    Files open lazily and are dropped on pickling, so one reader can be handed to DataLoader worker
    processes, each of which reopens what it reads.
    """

    def __init__(self, root: str | Path, max_row_groups: int = 2) -> None:
        if max_row_groups < 1:
            raise ValueError(f"ShardReader: max_row_groups must be >= 1, got {max_row_groups}")
        self.root = Path(root)
        self.max_row_groups = max_row_groups  # memory bound: a real row group can hold ~100 MB of JPEG
        self._files: dict[str, pq.ParquetFile] = {}
        self._starts: dict[str, list[int]] = {}  # first row of each row group, plus the total row count
        self._cache: OrderedDict[tuple[str, int], pa.Array] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "max_row_groups": self.max_row_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["max_row_groups"])  # type: ignore[misc]

    def close(self) -> None:
        """Drop open files and cached row groups."""
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._starts.clear()
        self._cache.clear()

    def _open(self, shard: str) -> pq.ParquetFile:
        if shard in self._files:
            return self._files[shard]
        rel = PurePosixPath(shard)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"shard {shard!r}: expected a path relative to {self.root}")
        path = self.root.joinpath(*rel.parts)
        if not path.is_file():
            raise FileNotFoundError(f"shard {shard!r}: {path} not found")
        f = pq.ParquetFile(path)
        if IMAGE_COLUMN not in f.schema_arrow.names:
            raise ValueError(f"shard {shard!r}: no {IMAGE_COLUMN!r} column")
        meta = f.metadata
        starts = [0]
        for i in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(i).num_rows)
        self._files[shard], self._starts[shard] = f, starts
        return f

    def num_rows(self, shard: str) -> int:
        """Rows in a shard."""
        self._open(shard)
        return self._starts[shard][-1]

    def _row_group(self, shard: str, group: int) -> pa.Array:
        """The image bytes of one row group (a BinaryArray), through the LRU."""
        key = (shard, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        column = self._open(shard).read_row_group(group, columns=[IMAGE_COLUMN]).column(0).combine_chunks()
        if pa.types.is_struct(column.type):  # Hugging Face Image: struct{bytes, path}
            column = column.field("bytes")
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            raise ValueError(
                f"shard {shard!r}: column {IMAGE_COLUMN!r} has type {column.type}, not image bytes"
            )
        self._cache[key] = column
        while len(self._cache) > self.max_row_groups:
            self._cache.popitem(last=False)
        return column

    def read(self, shard: str, row: int) -> bytes:
        """The image bytes at `row` of `shard`."""
        self._open(shard)
        starts = self._starts[shard]
        if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= row < starts[-1]:
            raise IndexError(f"shard {shard!r}: row {row!r} out of range (shard has {starts[-1]} rows)")
        group = bisect.bisect_right(starts, int(row)) - 1
        value = self._row_group(shard, group)[int(row) - starts[group]]
        if not value.is_valid:
            raise ValueError(f"shard {shard!r}, row {row}: field {IMAGE_COLUMN!r} has no bytes")
        return value.as_py()


def displayed_size(source: bytes | Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation of image bytes or of an opened PIL image, from the header
    alone (no pixels decoded, except PNG: see below). A format without reduced-scale decode over
    MAX_PIXELS raises ImageTooLargeError."""
    if isinstance(source, Image.Image):
        try:
            return _displayed(source, None)
        except ImageTooLargeError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageDecodeError(f"{_what(source)} has no readable header: {e}") from e
    try:
        return _displayed(Image.open(io.BytesIO(source)), len(source))
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(
            f"image of {len(source)} bytes has no readable header: {_reason(e, source)}"
        ) from e


def _displayed(image: Image.Image, n_bytes: int | None) -> tuple[int, int]:
    width, height = image.size
    if image.format not in REDUCED_SCALE_FORMATS:  # PIL looks for a PNG's EXIF by decoding it all
        check_pixels(image, n_bytes)
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def decode(data: bytes, *, min_side_scale: float = 1.0) -> tuple[Image.Image, float]:
    """RGB image with EXIF orientation applied, decoded at no less than `min_side_scale` of full size.

    For JPEG (and MPO, whose first frame is a JPEG) the decoder can shrink by 1/2, 1/4 or 1/8 while
    decoding, which is several times faster than a full decode; it picks the strongest reduction that
    still gives at least the asked scale. Returns the image and the scale actually decoded at
    (decoded size / full displayed size; 1.0 for other formats). An image that would decode to more
    than MAX_PIXELS pixels raises ImageTooLargeError before any pixel is decoded.
    """
    _check_scale(min_side_scale)
    try:
        return _decode_opened(Image.open(io.BytesIO(data)), min_side_scale, len(data), owned=True)
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"image of {len(data)} bytes does not decode: {_reason(e, data)}") from e


def decode_image(
    image: Image.Image, *, min_side_scale: float = 1.0, n_bytes: int | None = None
) -> tuple[Image.Image, float]:
    """`decode` of an opened PIL image (`Image.open` of the bytes, as a StreetVision miner has it).

    An image not loaded yet is decoded exactly as `decode` decodes its bytes: refused over MAX_PIXELS
    from its header, and a JPEG / MPO at reduced scale. The caller's image object is left as it was (a
    JPEG is decoded through a copy of its header state: drafting it in place would shrink the caller's
    image; another format is loaded in place, as any read of its pixels would). An image already loaded
    is used as it is (scale 1.0: its pixels exist, no draft is possible) and is never modified: EXIF
    orientation and RGB conversion make new images when they change anything. `n_bytes`, the size of the
    encoded image when known, goes into error messages.
    """
    _check_scale(min_side_scale)
    if not isinstance(image, Image.Image):
        raise TypeError(f"decode_image: expected a PIL image, got {type(image).__name__}")
    try:
        return _decode_opened(image, min_side_scale, n_bytes, owned=False)
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        what = _what(image) if n_bytes is None else f"{image.format or 'image'} of {n_bytes} bytes"
        raise ImageDecodeError(f"{what} does not decode: {e}") from e


def _check_scale(min_side_scale: float) -> None:
    if not 0.0 < min_side_scale <= 1.0:
        raise ValueError(f"decode: min_side_scale must be in (0, 1], got {min_side_scale!r}")


def _decode_opened(
    image: Image.Image, min_side_scale: float, n_bytes: int | None, *, owned: bool
) -> tuple[Image.Image, float]:
    """The one decode: size checked from the header, draft (an unloaded JPEG / MPO), load, EXIF
    orientation, RGB. `owned`: the image was opened here, so it may be changed in place."""
    scale = 1.0
    if _unloaded(image) and image.format in REDUCED_SCALE_FORMATS:
        if not owned:
            image = _header_copy(image)
        if min_side_scale < 1.0:
            w, h = image.size
            want = (max(1, math.ceil(w * min_side_scale)), max(1, math.ceil(h * min_side_scale)))
            drafted = image.draft("RGB", want)
            if drafted is not None:
                scale = drafted[1][2] / w  # the decoder's box is (0, 0, w / k, h / k)
    check_pixels(image, n_bytes)  # from the header (size after draft): before any pixel is decoded
    image.load()
    if owned:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to do
    elif image.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9):
        # A new image: the caller's (or a twin sharing its `info` and EXIF) is not rewritten.
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image), scale


def _unloaded(image: Image.Image) -> bool:
    """An image opened from a file whose pixels are not decoded yet (its tiles are still to read)."""
    return isinstance(image, ImageFile.ImageFile) and bool(image.tile)


def _header_copy(image: Image.Image) -> Image.Image:
    """An unloaded JPEG's twin that reads the same stream: drafting and loading it leaves the original
    as it was (size, draft state, open file). `copy()` would decode the original instead. The draft and
    load only rebind the twin's own attributes; its `info` and EXIF are read, never written (the EXIF
    rotation of a twin makes a new image)."""
    twin = object.__new__(type(image))
    twin.__dict__.update(image.__dict__)
    twin._exclusive_fp = False  # loading the twin must not close the caller's file
    return twin


def _what(image: Image.Image) -> str:
    """An opened image in messages, by its format (there are no bytes to count)."""
    return f"{image.format or 'unknown format'} image"


def pixel_view(image: Image.Image) -> np.ndarray:
    """Read-only uint8 [h, w, 4] of an RGB image's own memory, without a copy: Pillow keeps RGB pixels in
    4 bytes (the 4th unused) and exports them through the Arrow C data interface. Images stored in
    several blocks (beyond ~16 MB of pixels, e.g. 12 MP at full scale) cannot be exported: those are
    copied, padded to 4 channels. `np.asarray(image)` would copy every time (~8 ms for 1920x1080)."""
    if image.mode != "RGB":
        raise ValueError(f"pixel_view: expected an RGB image, got mode {image.mode}")
    try:
        exported = pa.array(image)
    except ValueError:  # "Image rows are not contiguous in memory"
        rgb = np.asarray(image)
        return np.concatenate([rgb, np.zeros((*rgb.shape[:2], 1), np.uint8)], axis=-1)
    flat = np.frombuffer(exported.buffers()[-1], dtype=np.uint8)  # holds the export, which holds the image
    return flat[: image.height * image.width * 4].reshape(image.height, image.width, 4)


def _reason(error: Exception, data: bytes) -> str:
    """PIL's message, without the object address it puts in "cannot identify image file <...>"."""
    if isinstance(error, UnidentifiedImageError):
        return f"not a known image format (starts with {data[:8]!r})"
    return str(error)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; 16-bit greys are scaled, not clipped; alpha is dropped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        arr = np.asarray(image).astype(np.float32)
        # 16-bit greys (PNG) open as I;16 or I; an "I" image within 0-255 is already 8-bit.
        if image.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # direct P -> RGB with transparency warns and loses the mask
    return image.convert("RGB")

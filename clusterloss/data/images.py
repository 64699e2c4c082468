"""Image files read on demand: `ImageFiles` behaves like a read-only array of images that
loads only the rows asked for, so a folder of any size streams through training and
embedding in batches (JPEGs decoded by simplejpeg's libjpeg-turbo where it is installed,
everything else and every JPEG without it by Pillow, to the same pixels; no TensorFlow)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from clusterloss.data.errors import DataError

try:  # JPEG straight to RGB in a NumPy array, without the GIL (Pillow decodes without it)
    import simplejpeg
except ImportError:  # Pillow decodes every image, to the same pixels (tests/test_data.py)
    simplejpeg = None

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
# The value range of each grayscale mode deeper than 8 bits (16-bit PNGs open as "I;16"):
# its pixels are scaled by it to [0, 1], not clipped to 8 bits.
DEEP_RANGES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 2.0**31 - 1, "F": 1.0}
GRAY_MODES = ("1", "L", "LA", *DEEP_RANGES)
# Pillow's formats decoded at a reduced scale when larger than needed (MPO: a camera's JPEG).
JPEG_FORMATS = ("JPEG", "MPO")
# Files whose header is read to decide grayscale or RGB (spread over the list).
CHANNEL_SAMPLE = 64


@contextlib.contextmanager
def _named(path: str) -> Iterator[None]:
    """Any failure to read or decode the image `path` in the block (not an image, truncated,
    a decompression bomb, pixels out of range) is a `DataError` naming `path`."""
    from PIL import Image

    try:
        yield
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None


def _read(path: str) -> bytes:
    """The file's bytes, in one read (Pillow parses headers byte by byte)."""
    with open(path, "rb", buffering=0) as handle:
        return handle.readall()


def check_image(path: str) -> str:
    """The image mode of `path`, after reading all of its data (a `DataError` naming the
    file if it is not an image, is truncated or is a decompression bomb): PNG chunks are
    checked without decoding, JPEGs decoded at 1/8 scale (by simplejpeg where
    `_jpeg_pixels` can: half the time of Pillow's), other formats decoded."""
    from PIL import Image

    with _named(path):
        data = _read(path)
        pixels = _jpeg_pixels(data, (1, 1), 3, None)
        if pixels is not None:
            return "L" if pixels.shape[2] == 1 else "RGB"
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            if image.format == "PNG":
                image.verify()
            else:
                if image.format in JPEG_FORMATS:
                    image.draft(None, (1, 1))
                image.load()
    return mode


def detect_channels(paths: Sequence[str]) -> int:
    """1 when every sampled image is grayscale, else 3 (RGB); a few headers, evenly spread."""
    step = max(1, len(paths) // CHANNEL_SAMPLE)
    modes = {check_image(p) for p in list(paths)[::step][:CHANNEL_SAMPLE]}
    return 1 if modes and modes <= set(GRAY_MODES) else 3


def _draft_scale(width: int, height: int, size: tuple[int, int]) -> int:
    """The reduced scale, 1/1, 1/2, 1/4 or 1/8, at which Pillow's `draft` decodes a JPEG for
    `size`: the smallest that still covers it (its denominator)."""
    fit = min(width // size[1], height // size[0])
    return next(scale for scale in (8, 4, 2, 1) if fit >= scale or scale == 1)


def _jpeg_pixels(data: bytes, size: tuple[int, int], channels: int, max_pixels: int | None) -> np.ndarray | None:
    """A JPEG's 8-bit pixels `(h, w, 1 or 3)` decoded by simplejpeg as `to_pixels` has Pillow
    decode them (the same libjpeg-turbo decoding: Pillow's draft scale, accurate DCT, smooth
    chroma upsampling), without Pillow's header parsing in Python and its 4-byte pixels.
    None where Pillow decodes instead: simplejpeg missing, not an 8-bit grayscale or YCbCr
    JPEG (CMYK, ...), a colour JPEG read as grayscale (Pillow's RGB-to-L weights), under 8
    pixels a side, more pixels than `max_pixels` or Pillow's `MAX_IMAGE_PIXELS`, or anything
    simplejpeg refuses (Pillow then decodes it or names the problem)."""
    from PIL import Image

    if simplejpeg is None or not simplejpeg.is_jpeg(data):
        return None
    try:
        height, width, space, _ = simplejpeg.decode_jpeg_header(data)
        limit = min(n for n in (max_pixels, Image.MAX_IMAGE_PIXELS, np.inf) if n is not None)
        wanted = ("Gray",) if channels == 1 else ("Gray", "YCbCr")
        if space not in wanted or min(height, width) < 8 or height * width > limit:
            return None
        scale = _draft_scale(width, height, size)
        return simplejpeg.decode_jpeg(  # strict: a truncated or corrupt file is refused
            data,
            "GRAY" if space == "Gray" else "RGB",
            min_height=-(-height // scale),
            min_width=-(-width // scale),
            strict=True,
        )
    except (ValueError, KeyError):  # KeyError: a colour space or subsampling it has no name for
        return None


def _resized(image: Any, size: tuple[int, int]) -> np.ndarray:
    """A Pillow image's pixels resized (bilinear) to `size`, `(height, width, bands)`."""
    from PIL import Image

    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _to_float(pixels: np.ndarray, scale: float, size: tuple[int, int], channels: int, out: np.ndarray | None):
    """`pixels * (1 / scale)` in float32 (as Keras's `Rescaling(1 / 255)` computes it), into
    `out` (a new array when None); one band is repeated for RGB by broadcasting. Cast, then
    multiplied in place: faster than one mixed-type ufunc (docs/performance.md)."""
    if out is None:
        out = np.empty((size[0], size[1], channels), np.float32)
    np.copyto(out, pixels, casting="unsafe")
    np.multiply(out, np.float32(1 / scale), out=out)
    return out


def to_pixels(image: Any, size: tuple[int, int], channels: int, out: np.ndarray | None = None) -> np.ndarray:
    """A Pillow image as float32 in [0, 1], shape `(height, width, channels)`, resized
    (bilinear) to `size = (height, width)`, written into `out` when given. A JPEG larger
    than `size` is decoded at 1/2, 1/4 or 1/8 scale when that still covers `size` (JPEG's
    own reduced decoding: several times faster), then resized. Grayscale deeper than 8 bits
    (16-bit, 32-bit int, float: `DEEP_RANGES`) keeps its depth, scaled by its mode's range;
    values outside that range (a negative int, a float outside [0, 1]) are a ValueError.
    Other modes are converted to 8-bit L or RGB."""
    from PIL import Image

    if image.mode in DEEP_RANGES:
        high = DEEP_RANGES[image.mode]
        values = np.asarray(image, dtype=np.float64)
        low, top = float(values.min()), float(values.max())
        if low < 0 or top > high:
            raise ValueError(f"mode {image.mode} pixels in [{low:g}, {top:g}], outside its range [0, {high:g}]")
        image = Image.fromarray((values / high).astype(np.float32))  # mode F
        scale = 1.0
    else:
        if image.format in JPEG_FORMATS:
            image.draft(None, (size[1], size[0]))
        mode = "L" if channels == 1 else "RGB"
        image = image if image.mode == mode else image.convert(mode)
        scale = 255.0
    return _to_float(_resized(image, size), scale, size, channels, out)


def decode_pixels(
    data: bytes, size: tuple[int, int], channels: int, out: np.ndarray | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """An encoded image as `to_pixels` gives it: the one decoding of training, embedding and
    the search service. JPEGs by simplejpeg where it can (`_jpeg_pixels`: the pixels Pillow
    gives), everything else by Pillow, whose errors (OSError, ValueError, ...) propagate;
    more than `max_pixels` pixels (from the header, before decoding) is a `DataError`."""
    from PIL import Image

    pixels = _jpeg_pixels(data, size, channels, max_pixels)
    if pixels is not None:
        if pixels.shape[:2] != size:
            pixels = _resized(Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels), size)
        return _to_float(pixels, 255.0, size, channels, out)
    with Image.open(io.BytesIO(data)) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise DataError(f"an image of {image.width * image.height:,} pixels; at most {max_pixels:,} are decoded")
        return to_pixels(image, size, channels, out)


def read_image(path: str, size: tuple[int, int], channels: int, out: np.ndarray | None = None) -> np.ndarray:
    """One image file as `decode_pixels` gives it (a `DataError` naming the file if it
    cannot be read)."""
    with _named(path):
        return decode_pixels(_read(path), size, channels, out)


def decode_image(data: bytes, size: tuple[int, int], channels: int, max_pixels: int = 50_000_000) -> np.ndarray:
    """An encoded image in memory (PNG, JPEG, ...) as `decode_pixels` gives it; a `DataError`
    if it is not an image, is truncated or corrupt, or has more than `max_pixels` pixels
    (read from its header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        return decode_pixels(data, size, channels, max_pixels=max_pixels)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image (no format that Pillow reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"not a readable image ({error})") from None


def reader_threads() -> int:
    """Threads that read and decode images: one per core this process may run on (more
    only add switching: measured 0.40 CPU ms per image with 2 threads on 2 cores, 0.49
    with 4)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)


def _pool() -> ThreadPoolExecutor:
    """The process's pool of `reader_threads()` decoding threads (Pillow decodes and resizes
    without the GIL); a new one in a forked child, where the parent's threads do not run."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(reader_threads(), thread_name_prefix="clusterloss-images"))
    return _POOL[1]


def _in_parallel(read: Callable[[int], Any], count: int) -> None:
    """`read(i)` for i in range(count), on the pool in a few runs of consecutive i per
    thread (inline for one run); the first failure, in order of i, is raised."""

    def read_run(run: range) -> None:
        for i in run:
            read(i)

    step = max(1, count // (4 * reader_threads()))
    runs = [range(i, min(i + step, count)) for i in range(0, count, step)]
    for _ in (_pool().map if len(runs) > 1 else map)(read_run, runs):
        pass


class Recycler:
    """Float32 arrays handed out again once nothing else references them (no view, no
    tensor sharing their memory, no variable: CPython's reference count of the array is that
    of an array only this recycler holds). A new batch array of tens of MB costs a page fault
    per page on first write (with transparent huge pages, a compaction), which the decoding
    threads then wait on: measured 2-4x the decoding time (docs/performance.md).

    Args:
        keep: at most this many arrays kept, of at most `keep_bytes` in all.
    """

    def __init__(self, keep: int = 8, keep_bytes: int = 512 * 2**20):
        self.keep, self.keep_bytes = keep, keep_bytes
        self._lock = threading.Lock()
        self._arrays: list[np.ndarray] = [np.empty(0, np.float32)]
        self._unused = self._references(0)  # the count of an array that only the list holds
        self._arrays.clear()

    def _references(self, i: int) -> int:
        return sys.getrefcount(self._arrays[i])

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised float32 array of `shape`: a kept one that nothing else holds,
        else a new one (kept, the oldest kept dropped past `keep` or `keep_bytes`)."""
        with self._lock:
            for i in range(len(self._arrays)):
                if self._arrays[i].shape == shape and self._references(i) == self._unused:
                    return self._arrays[i]
            array = np.empty(shape, np.float32)
            self._arrays.append(array)
            while len(self._arrays) > self.keep or sum(a.nbytes for a in self._arrays) > self.keep_bytes:
                self._arrays.pop(0)
            return array


_BATCHES = Recycler()


def load_images(paths: Sequence[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Images of `paths` stacked: `(n, height, width, channels)` float32 in [0, 1], decoded
    in parallel (`reader_threads()`) straight into the batch array (a `Recycler`'s)."""
    out = _BATCHES.empty((len(paths), size[0], size[1], channels))
    _in_parallel(lambda i: read_image(paths[i], size, channels, out[i]), len(paths))
    return out


def check_images(paths: Sequence[str]) -> None:
    """`check_image` of every file, in parallel; the first failure in `paths` order raised."""
    _in_parallel(lambda i: check_image(paths[i]), len(paths))


class ImageFiles:
    """Image files as a lazy array: `len()`, `shape`, and `files[rows]` (an int, a slice or
    an integer array) reads and returns those images only, as float32 in [0, 1] of shape
    `(len(rows), height, width, channels)`. `subset(rows)` is another `ImageFiles` (no
    reading). Usable wherever clusterloss takes an image array for training or embedding
    (`Batches`, `MPerClassSampler`, `clusterloss.evaluation.embed`).

    Args:
        paths: image files.
        size: `(height, width)` every image is resized to.
        channels: 1 (grayscale) or 3 (RGB); None: detected from a few headers.
    """

    def __init__(self, paths: Sequence[str], size: tuple[int, int], channels: int | None = None):
        self.paths = [os.fspath(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"`size` must be two positive ints (height, width); got {size!r}.")
        if channels is None:
            channels = detect_channels(self.paths)
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.size, self.channels)

    @property
    def ndim(self) -> int:
        return 4

    def subset(self, rows) -> ImageFiles:
        paths = np.asarray(self.paths, dtype=object)[np.asarray(rows, dtype=np.int64)]
        return ImageFiles(list(paths), self.size, self.channels)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return read_image(self.paths[rows], self.size, self.channels)
        if isinstance(rows, slice):
            rows = range(*rows.indices(len(self.paths)))
        return load_images([self.paths[int(i)] for i in np.asarray(rows).reshape(-1)], self.size, self.channels)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.paths)} files, size={self.size}, channels={self.channels})"


def subset(x, rows):
    """Rows of an array, or of an `ImageFiles` without reading them."""
    return x.subset(rows) if isinstance(x, ImageFiles) else x[np.asarray(rows, dtype=np.int64)]

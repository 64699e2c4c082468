"""Image files read on demand: `ImageFiles` behaves like a read-only array of images that
loads only the rows asked for, so a folder of any size streams through training and
embedding in batches (Pillow, which matplotlib already needs; no TensorFlow)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from clusterloss.data.errors import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# Files whose header is read to decide grayscale or RGB (spread over the list).
CHANNEL_SAMPLE = 64


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None


def check_image(path: str) -> str:
    """The image mode of `path` from its header (a `DataError` naming the file if it is
    not an image)."""
    with _open(path) as image:
        return image.mode


def detect_channels(paths: Sequence[str]) -> int:
    """1 when every sampled image is grayscale, else 3 (RGB); a few headers, evenly spread."""
    step = max(1, len(paths) // CHANNEL_SAMPLE)
    modes = {check_image(p) for p in list(paths)[::step][:CHANNEL_SAMPLE]}
    return 1 if modes and modes <= set(GRAY_MODES) else 3


def read_image(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as float32 in [0, 1], shape `(height, width, channels)`, resized
    (bilinear) to `size = (height, width)`."""
    from PIL import Image

    with _open(path) as image:
        try:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
        except OSError as error:  # truncated or corrupt data past the header
            raise DataError(f"{path}: not a readable image ({error})") from None
    return (pixels / 255.0).reshape(size[0], size[1], channels)


def load_images(paths: Sequence[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Images of `paths` stacked: `(n, height, width, channels)` float32 in [0, 1]."""
    out = np.empty((len(paths), size[0], size[1], channels), np.float32)
    for i, path in enumerate(paths):
        out[i] = read_image(path, size, channels)
    return out


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

    def subset(self, rows) -> "ImageFiles":
        paths = np.asarray(self.paths, dtype=object)[np.asarray(rows, dtype=np.int64)]
        return ImageFiles(list(paths), self.size, self.channels)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return read_image(self.paths[rows], self.size, self.channels)
        if isinstance(rows, slice):
            rows = range(*rows.indices(len(self.paths)))
        return load_images([self.paths[int(i)] for i in np.asarray(rows).reshape(-1)],
                           self.size, self.channels)  # fmt: skip

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.paths)} files, size={self.size}, channels={self.channels})"


def subset(x, rows):
    """Rows of an array, or of an `ImageFiles` without reading them."""
    return x.subset(rows) if isinstance(x, ImageFiles) else x[np.asarray(rows, dtype=np.int64)]

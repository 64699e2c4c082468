"""Labelled data from files: a folder with one sub-folder of images per class, or an `.npz`
file with arrays `x` and `y`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clusterloss.data.errors import DataError
from clusterloss.data.images import IMAGE_EXTENSIONS, check_image


def check_classes(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """At least 2 classes, and at least 2 samples in each (a retrieval needs a positive)."""
    counts = np.bincount(labels, minlength=len(class_names))
    if len(class_names) < 2:
        raise DataError(f"{where}: {len(class_names)} class(es); need at least 2")
    lonely = [(class_names[c], int(counts[c])) for c in np.flatnonzero(counts < 2)]
    if lonely:
        name, n = lonely[0]
        more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
        raise DataError(
            f"{where}: class {name!r} has {n} sample(s){more}; every class needs at least 2"
        )


def scan_image_folder(root: str | os.PathLike, check: bool = True):
    """`(paths, labels, class_names)` of a folder `root/CLASS/...image files` (sub-folders
    of a class folder are read too; hidden files and other extensions are skipped). Classes
    are the sub-folder names in sorted order, labels 0..n-1. With `check`, every file's
    header is read once, so an unreadable image fails here, named, not mid-training."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected ROOT/CLASS/IMAGE files)")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = []
        for folder, dirs, files in os.walk(root / name):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [
                os.path.join(folder, f) for f in sorted(files)
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            ]  # fmt: skip
        if len(found) < 2:
            raise DataError(
                f"{root / name}: class folder with {len(found)} image(s); every class needs "
                f"at least 2 ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += found
        labels += [label] * len(found)
    check_classes(np.asarray(labels), classes, str(root))
    if check:
        for path in paths:
            check_image(path)
    return paths, np.asarray(labels, dtype=np.int32), classes


def read_npz(path: str | os.PathLike):
    """`(x, labels, class_names)` from an `.npz` with `x` (feature vectors `(n, d)` or
    images `(n, h, w)` / `(n, h, w, c)`; uint8 images are scaled to [0, 1]), `y` (integer
    class ids; relabelled 0..n-1 in sorted order) and optional `class_names` (one per
    distinct id, in sorted id order)."""
    path = os.fspath(path)
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    with arrays:
        missing = [k for k in ("x", "y") if k not in arrays.files]
        if missing:
            raise DataError(f"{path}: needs arrays 'x' and 'y'; found {sorted(arrays.files)}")
        x, y = arrays["x"], arrays["y"]
        names = arrays["class_names"] if "class_names" in arrays.files else None
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{path}: 'y' must be integer class ids of shape (n,); got {y.dtype} {y.shape}")
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{path}: 'x' must be (n, d) features or (n, h, w[, c]) images; got {x.shape}")
    ids, labels = np.unique(y, return_inverse=True)
    if names is None:
        class_names = [str(i) for i in ids]
    elif len(names) != len(ids):
        raise DataError(f"{path}: 'class_names' has {len(names)} names for {len(ids)} classes")
    else:
        class_names = [str(n) for n in names]
    check_classes(labels, class_names, path)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)[..., None] if x.ndim == 3 else x.astype(np.float32)
    return x, labels.astype(np.int32), class_names

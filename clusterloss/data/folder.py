"""Labelled data from files: a folder with one sub-folder of images per class, or an `.npz`
file with arrays `x` and `y`."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from clusterloss.data.errors import DataError
from clusterloss.data.images import IMAGE_EXTENSIONS, check_images


def check_classes(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """At least 2 classes, and at least 2 samples in each (a retrieval needs a positive)."""
    counts = np.bincount(labels, minlength=len(class_names))
    if len(class_names) < 2:
        raise DataError(f"{where}: {len(class_names)} class(es); need at least 2")
    lonely = [(class_names[c], int(counts[c])) for c in np.flatnonzero(counts < 2)]
    if lonely:
        name, n = lonely[0]
        more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
        raise DataError(f"{where}: class {name!r} has {n} sample(s){more}; every class needs at least 2")


def _visible(folder: Path) -> list[os.DirEntry]:
    """The entries of `folder` not starting with "."; a broken link among them, or a folder
    that cannot be listed, is a `DataError` (never silently dropped)."""
    try:
        with os.scandir(folder) as found:
            entries = sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as error:
        raise DataError(f"{folder}: cannot read the folder ({error.strerror})") from None
    for entry in entries:
        if entry.is_symlink() and not os.path.exists(entry.path):
            raise DataError(
                f"{entry.path}: a broken link (to {os.readlink(entry.path)}); "
                "mount or restore its target, or remove the link"
            )
    return entries


def _images_under(folder: Path, seen: frozenset[str] = frozenset()) -> list[str]:
    """The image files of `folder` (sorted), then those of its sub-folders (linked ones
    followed; a link back to a folder above is a `DataError`); hidden ones skipped."""
    real = os.path.realpath(folder)
    if real in seen:
        raise DataError(f"{folder}: a link to a folder above it (a loop)")
    entries = _visible(folder)
    found = [e.path for e in entries if not e.is_dir() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    for entry in entries:
        if entry.is_dir():
            found += _images_under(Path(entry.path), seen | {real})
    return found


# Folder names that mean a split of a data set, not a class (compared in lower case).
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "eval"})


def class_files(root: str | os.PathLike) -> dict[str, list[str]]:
    """`{class: image paths}` of a folder `root/CLASS/...image files`, classes sorted (no
    count checked, no image read)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    folders = [e for e in _visible(root) if e.is_dir()]
    names = [e.name for e in folders]
    if (
        len(names) >= 2
        and all(n.lower() in SPLIT_NAMES for n in names)
        and any(any(d.is_dir() for d in _visible(Path(e.path))) for e in folders)
    ):
        raise DataError(
            f"{root}: its sub-folders {', '.join(names)} look like the splits of a data set, each "
            f"with class folders, not classes; pass one of them (--data {root / names[0]}): "
            "clusterloss makes its own splits (--val-split, --test-split)"
        )
    return {e.name: _images_under(Path(e.path)) for e in folders}


def scan_image_folder(root: str | os.PathLike, check: bool = True):
    """`(paths, labels, class_names)` of a folder `root/CLASS/...image files` (sub-folders
    of a class folder are read too; hidden files and other extensions are skipped). Classes
    are the sub-folder names in sorted order, labels 0..n-1. A broken link or an unreadable
    folder is a `DataError`. With `check`, every file is read once (`check_image`), so an
    unreadable or truncated image fails here, named, not mid-training (on all cores;
    the first bad file in folder order is named)."""
    root = Path(root)
    by_class = class_files(root)
    classes = list(by_class)
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected ROOT/CLASS/IMAGE files)")
    paths: list[str] = []
    labels: list[int] = []
    for label, (name, found) in enumerate(by_class.items()):
        if len(found) < 2:
            raise DataError(
                f"{root / name}: class folder with {len(found)} image(s); every class needs "
                f"at least 2 ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += found
        labels += [label] * len(found)
    check_classes(np.asarray(labels), classes, str(root))
    if check:
        check_images(paths)
    return paths, np.asarray(labels, dtype=np.int32), classes


def _array(arrays, key: str, path: str) -> np.ndarray:
    """`arrays[key]`; an object array (which would need pickle) is a `DataError`."""
    try:
        return arrays[key]
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise DataError(
            f"{path}: '{key}' is an object array (Python objects, loaded only with "
            "pickle, which clusterloss never does); save numbers, and strings for "
            "class_names"
        ) from None


def read_npz(path: str | os.PathLike, queries: bool = False):
    """`(x, labels, class_names)` from an `.npz` with `x` (feature vectors `(n, d)` or
    images `(n, h, w)` / `(n, h, w, c)`; uint8 images are scaled to [0, 1]), `y` (integer
    class ids; relabelled 0..n-1 in sorted order) and optional `class_names` (one per
    distinct id, in sorted id order). `queries`: `y` is optional (labels and class_names
    None without it) and one class is enough."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x",) + (() if queries else ("y",)) if k not in arrays.files]
            if missing:
                raise DataError(f"{path}: needs arrays 'x' and 'y'; found {sorted(arrays.files)}")
            found = {k: _array(arrays, k, path) for k in ("x", "y", "class_names") if k in arrays.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    x, y, names = found["x"], found.get("y"), found.get("class_names")
    if y is None:
        y = np.zeros(len(x), np.int64)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{path}: 'y' must be integer class ids of shape (n,); got {y.dtype} {y.shape}")
    if x.ndim not in (2, 3, 4) or x.dtype.kind not in "iuf":
        raise DataError(
            f"{path}: 'x' must be numbers, (n, d) features or (n, h, w[, c]) images; got {x.dtype} {x.shape}"
        )
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)) if x.dtype.kind == "f" else []
    if len(bad):
        raise DataError(
            f"{path}: 'x' holds NaN or inf in {len(bad)} row(s) (first: row {bad[0]}); remove or repair them"
        )
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
        raise DataError(f"{path}: 'class_names' must be strings of shape (classes,); got {names.dtype} {names.shape}")
    ids, labels = np.unique(y, return_inverse=True)
    if names is None:
        class_names = [str(i) for i in ids]
    elif len(names) != len(ids):
        raise DataError(f"{path}: 'class_names' has {len(names)} names for {len(ids)} classes")
    else:
        class_names = [str(n) for n in names]
    if not queries:
        check_classes(labels, class_names, path)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)[..., None] if x.ndim == 3 else x.astype(np.float32)
    if queries and "y" not in found:
        return x, None, None
    return x, labels.astype(np.int32), class_names


def labelled_images(root: str | os.PathLike, class_name: str | None = None) -> tuple[list[str], list[str]]:
    """`(paths, class names)` of images to enrol: with `class_name`, every image file under
    `root` (a folder, or one image file) is of that class; without, `root` holds one
    sub-folder of images per class (one image per class is enough). Nothing found, a broken
    link or an unreadable image is a `DataError` naming the file or folder."""
    root = Path(root)
    if class_name is not None:
        paths = [os.fspath(root)] if root.is_file() else _images_under(root) if root.is_dir() else []
        names = [class_name] * len(paths)
    elif root.is_dir():
        paths, names = [], []
        for entry in (e for e in _visible(root) if e.is_dir()):
            found = _images_under(Path(entry.path))
            paths += found
            names += [entry.name] * len(found)
    else:
        raise DataError(f"{root}: not a folder of class sub-folders (give --class NAME for images of one class)")
    if not paths:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    check_images(paths)
    return paths, names

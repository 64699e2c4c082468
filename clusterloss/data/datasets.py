"""Labelled data split for training and evaluation: the built-in data sets (loaded with the
ecosystem's own loaders; nothing is downloaded here: point `KERAS_HOME` / `SCIKIT_LEARN_DATA`
at a cache that holds the files), a folder of images, or an `.npz` file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.data.errors import DataError
from clusterloss.data.folder import read_npz, scan_image_folder
from clusterloss.data.images import ImageFiles, subset

DATASETS = ("digits", "fashion-mnist", "olivetti")
# Olivetti's open-set protocol: train on people 0-29, verify on the 10 never seen.
DEFAULT_KNOWN = {"olivetti": tuple(range(30))}
# Own data (a folder or an .npz) has no published split: these shares of each class's
# samples are held out, by default, for testing and for validation during training.
DEFAULT_TEST_SPLIT = 0.2
DEFAULT_VAL_SPLIT = 0.1
DEFAULT_IMAGE_SIZE = 64


def _empty(x: Any) -> Any:
    return subset(x, np.zeros(0, np.int64))


@dataclass
class Dataset:
    """A labelled data set split into train / validation / test (known classes) and
    unknown (classes never seen in training).

    `x_*` are float32 arrays (images in [0, 1] of shape `(n, h, w, c)`, or feature vectors
    `(n, d)`) or `ImageFiles` (images read on demand: a folder never sits in memory);
    labels are int32. Known classes are relabelled 0..num_classes-1 in the order given;
    unknown classes num_classes, num_classes+1, ... The validation and unknown parts may be
    empty.
    """

    name: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    class_names: list[str]
    x_val: Any = None
    y_val: np.ndarray = field(default_factory=lambda: np.zeros((0,), "int32"))
    x_unknown: Any = None
    y_unknown: np.ndarray = field(default_factory=lambda: np.zeros((0,), "int32"))
    unknown_class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.x_val is None:
            self.x_val = _empty(self.x_train)
        if self.x_unknown is None:
            self.x_unknown = _empty(self.x_train)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def all_class_names(self) -> list[str]:
        """Names of labels 0, 1, ...: the known classes, then the unknown ones."""
        return list(self.class_names) + list(self.unknown_class_names)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test) with the same share of every class in the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _split_by_sample(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Per class, seeded: the first part keeps what the `fractions` (one per further part,
    rounded, never all of a class) leave."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = len(idx)
        for part, fraction in zip(parts[1:], fractions):
            n = min(int(round(len(idx) * fraction)), start - 1)
            part.extend(idx[start - n : start])
            start -= n
        parts[0].extend(idx[:start])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _load_builtin(name: str, seed: int):
    """(x_train, y_train, x_test, y_test, class_names) with images in [0, 1]."""
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        x = (data.images / 16.0).astype("float32")[..., None]
        train, test = _stratified_split(data.target, 0.25, seed)
        names = [str(c) for c in data.target_names]
        return x[train], data.target[train], x[test], data.target[test], names
    if name == "fashion-mnist":
        import keras

        (x_tr, y_tr), (x_te, y_te) = keras.datasets.fashion_mnist.load_data()
        names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
        scale = lambda a: (a.astype("float32") / 255.0)[..., None]  # noqa: E731
        return scale(x_tr), y_tr, scale(x_te), y_te, names
    from sklearn.datasets import fetch_olivetti_faces

    data = fetch_olivetti_faces(download_if_missing=False)
    x = data.images.astype("float32")[..., None]
    train, test = _stratified_split(data.target, 0.3, seed)
    names = [f"person {i}" for i in range(40)]
    return x[train], data.target[train], x[test], data.target[test], names


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a fraction in [0, 1); got {value!r}.")
    return float(value)


def load_dataset(
    source: str | os.PathLike = "digits",
    seed: int = 0,
    known_classes: list[int] | tuple[int, ...] | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    *,
    val_split: float | None = None,
    test_split: float | None = None,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    channels: int | None = None,
) -> Dataset:
    """Load labelled data and split it into train / validation / test (known classes) and
    unknown (the other classes).

    Args:
        source: a built-in name: "digits" (scikit-learn's bundled 8x8 digits),
            "fashion-mnist" (`keras.datasets.fashion_mnist`), "olivetti"
            (`fetch_olivetti_faces`); or a path: a folder with one sub-folder of images per
            class (read on demand as `ImageFiles`), or an `.npz` file with arrays `x`, `y`
            (and optional `class_names`).
        seed: seed of every split and subsample.
        known_classes: the class ids (sorted class order for own data) to train on; the
            rest become `x_unknown`. Default: all classes, except Olivetti (people 0-29).
        train_limit, test_limit: keep a seeded random subset of this many samples.
        val_split: share of each known class's training samples held out for validation
            (default: DEFAULT_VAL_SPLIT for own data, 0 for the built-in sets).
        test_split: share of each known class held out for testing, own data only (the
            built-in sets have their own test split); default DEFAULT_TEST_SPLIT.
        image_size: `(height, width)` (or one int) images of a folder are resized to.
        channels: 1 or 3 for a folder; None detects grayscale or RGB.

    Bad data raises `DataError` (a `ValueError`) naming the file or folder.
    """
    source = os.fspath(source)
    builtin = source in DATASETS
    path = Path(source)
    if not builtin and not path.exists():
        raise DataError(
            f"{source}: no such file or folder (expected one of {', '.join(DATASETS)}, a "
            "folder with one sub-folder of images per class, or an .npz file)"
        )
    if not builtin and path.is_file() and path.suffix != ".npz":
        raise DataError(f"{source}: a data file must be an .npz with arrays 'x' and 'y'")
    if builtin and test_split is not None:
        raise ValueError(f"`test_split` applies to a folder or an .npz file; {source} has its own test split.")
    val_split = _check_fraction(
        (0.0 if builtin else DEFAULT_VAL_SPLIT) if val_split is None else val_split, "val_split"
    )
    test_split = _check_fraction(DEFAULT_TEST_SPLIT if test_split is None else test_split, "test_split")
    for value, name in ((train_limit, "train_limit"), (test_limit, "test_limit")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive int or None; got {value!r}.")

    if builtin:
        x_tr, y_tr, x_te, y_te, names = _load_builtin(source, seed)
        x_all = None
    else:
        if path.is_dir():
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            paths, y_all, names = scan_image_folder(path)
            x_all = ImageFiles(paths, size, channels)
        else:
            x_all, y_all, names = read_npz(path)
    known = list(known_classes if known_classes is not None else DEFAULT_KNOWN.get(source, []))
    if not known:
        known = list(range(len(names)))
    bad = [c for c in known if not 0 <= c < len(names)]
    if bad or len(set(known)) != len(known) or len(known) < 2:
        raise ValueError(f"`known_classes` must be at least 2 distinct ids in [0, {len(names)}); got {known}.")
    unknown = [c for c in range(len(names)) if c not in known]
    relabel = np.full(len(names), -1, "int32")
    relabel[known + unknown] = np.arange(len(names), dtype="int32")
    if not builtin:  # own data: split the known classes by sample, seeded
        is_known = np.isin(y_all, known)
        rows = np.flatnonzero(is_known)
        train, val, test = (rows[p] for p in _split_by_sample(y_all[rows], (val_split, test_split), seed))
        x_tr, y_tr = subset(x_all, train), y_all[train]
        x_te, y_te = subset(x_all, test), y_all[test]
        x_val, y_val = subset(x_all, val), relabel[y_all[val]]
        pool = np.flatnonzero(~is_known)
        x_pool, y_pool = subset(x_all, pool), y_all[pool]
    rng = np.random.default_rng(seed)

    def take(x, y, classes, limit):
        idx = np.flatnonzero(np.isin(y, classes))
        if limit is not None and limit < len(idx):
            idx = np.sort(rng.choice(idx, limit, replace=False))
        return subset(x, idx), relabel[y[idx]]

    x_train, y_train = take(x_tr, y_tr, known, train_limit)
    x_test, y_test = take(x_te, y_te, known, test_limit)
    if builtin:
        if source == "olivetti":  # unseen people: all ten images of each
            x_pool, y_pool = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
        else:
            x_pool, y_pool = x_te, y_te
    x_unk, y_unk = take(x_pool, y_pool, unknown, test_limit)
    if builtin:
        if val_split:
            train, val = _split_by_sample(y_train, (val_split,), seed)
            x_val, y_val = subset(x_train, val), y_train[val]
            x_train, y_train = subset(x_train, train), y_train[train]
        else:
            x_val, y_val = _empty(x_train), np.zeros(0, "int32")
    return Dataset(
        name=source if builtin else path.name or source,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=[names[c] for c in known],
        x_val=x_val,
        y_val=y_val,
        x_unknown=x_unk,
        y_unknown=y_unk,
        unknown_class_names=[names[c] for c in unknown],
    )

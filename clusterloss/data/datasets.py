"""Data sets for the command line, loaded with the ecosystem's own loaders (no download here:
point `KERAS_HOME` / `SCIKIT_LEARN_DATA` at a cache that holds the files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DATASETS = ("digits", "fashion-mnist", "olivetti")
# Olivetti's open-set protocol: train on people 0-29, verify on the 10 never seen.
DEFAULT_KNOWN = {"olivetti": tuple(range(30))}


@dataclass
class Dataset:
    """Images as float32 in [0, 1], shape (n, height, width, 1); labels int32.

    Known classes are relabelled 0..num_classes-1 in the order given; `x_unknown`/`y_unknown`
    hold test samples of the classes never seen in training (labels num_classes, ...), or are
    empty when every class is known.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    x_unknown: np.ndarray = field(default_factory=lambda: np.zeros((0,), "float32"))
    y_unknown: np.ndarray = field(default_factory=lambda: np.zeros((0,), "int32"))
    unknown_class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Indices (train, test) with the same share of every class in the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def _load_raw(name: str, seed: int):
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
    if name == "olivetti":
        from sklearn.datasets import fetch_olivetti_faces

        data = fetch_olivetti_faces(download_if_missing=False)
        x = data.images.astype("float32")[..., None]
        train, test = _stratified_split(data.target, 0.3, seed)
        names = [f"person {i}" for i in range(40)]
        return x[train], data.target[train], x[test], data.target[test], names
    raise ValueError(f"`dataset` must be one of {list(DATASETS)}; got {name!r}.")


def load_dataset(
    name: str = "digits",
    seed: int = 0,
    known_classes: list[int] | tuple[int, ...] | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Dataset:
    """Load a data set and split it into known (train/test) and unknown classes.

    Args:
        name: "digits" (scikit-learn's bundled 8x8 digits), "fashion-mnist"
            (`keras.datasets.fashion_mnist`) or "olivetti" (`fetch_olivetti_faces`).
        seed: seed of the train/test split (digits, olivetti) and of subsampling.
        known_classes: the original class ids to train on; the rest become `x_unknown`.
            Default: all classes, except Olivetti (people 0-29).
        train_limit, test_limit: keep a seeded random subset of this many samples.
    """
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {list(DATASETS)}; got {name!r}.")
    x_tr, y_tr, x_te, y_te, names = _load_raw(name, seed)
    known = list(known_classes if known_classes is not None else DEFAULT_KNOWN.get(name, []))
    if not known:
        known = list(range(len(names)))
    bad = [c for c in known if not 0 <= c < len(names)]
    if bad or len(set(known)) != len(known) or len(known) < 2:
        raise ValueError(
            f"`known_classes` must be at least 2 distinct ids in [0, {len(names)}); got {known}."
        )
    unknown = [c for c in range(len(names)) if c not in known]
    relabel = np.full(len(names), -1, "int32")
    relabel[known + unknown] = np.arange(len(names), dtype="int32")
    rng = np.random.default_rng(seed)

    def subset(x, y, classes, limit):
        idx = np.flatnonzero(np.isin(y, classes))
        if limit is not None and limit < len(idx):
            idx = np.sort(rng.choice(idx, limit, replace=False))
        return x[idx], relabel[y[idx]]

    x_train, y_train = subset(x_tr, y_tr, known, train_limit)
    x_test, y_test = subset(x_te, y_te, known, test_limit)
    if name == "olivetti":  # unseen people: all ten images of each
        x_pool, y_pool = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
    else:
        x_pool, y_pool = x_te, y_te
    x_unk, y_unk = subset(x_pool, y_pool, unknown, test_limit)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=[names[c] for c in known],
        x_unknown=x_unk,
        y_unknown=y_unk,
        unknown_class_names=[names[c] for c in unknown],
    )

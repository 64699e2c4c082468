"""Class-disjoint validation (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020):
the training classes split into folds of classes; a run holds one fold out of training and
validates on it, so that settings are chosen on classes that are neither trained on nor
among the test classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clusterloss.data import Dataset
from clusterloss.data.images import subset

DEFAULT_FOLDS = 4  # Musgrave et al. 2020: 4 class folds
# What a fold's validation is scored by (`RetrievalEvaluation`'s keys; the first: the
# metric that picks a run's kept epoch, `runs.MONITOR`).
VALIDATION_METRICS = ("val_map_at_r", "val_precision_at_1", "val_r_precision")


def class_folds(classes: Sequence[int], folds: int, seed: int) -> list[list[int]]:
    """`classes` shuffled (seeded) and split into `folds` folds of nearly equal size, each
    sorted; ValueError unless every fold has 2 classes and 2 classes are left to train on."""
    classes = list(classes)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"`folds` must be an int >= 2; got {folds!r}.")
    if len(classes) < 2 * folds:
        raise ValueError(
            f"`folds` = {folds} needs 2 training classes per fold ({2 * folds}); "
            f"the run trains on {len(classes)}: use --folds {len(classes) // 2} "
            "or fewer"
        )
    order = np.random.default_rng(seed).permutation(classes)
    return [sorted(int(c) for c in part) for part in np.array_split(order, folds)]


def hold_out_classes(data: Dataset, val_classes: Sequence[int], known: Sequence[int]) -> Dataset:
    """`data` (whose labels 0, 1, ... are the class ids `known`, in that order) with the
    classes `val_classes` (ids among `known`) held out of training: their training samples
    become the validation set and their test samples the unknown set; the other known
    classes are relabelled 0, 1, ... and the classes outside `known` (the test classes of a
    class-disjoint protocol) are dropped, so a run never sees them."""
    known = list(known)
    missing = [c for c in val_classes if c not in known]
    if missing or len(set(val_classes)) != len(val_classes) or len(val_classes) < 2:
        raise ValueError(
            f"`val_classes` must be at least 2 distinct ids among the training "
            f"classes ({_ids(known)}); got {list(val_classes)}."
        )
    if len(known) - len(val_classes) < 2:
        raise ValueError(
            f"`val_classes` must leave 2 of the training classes ({_ids(known)}) to train on; got {list(val_classes)}."
        )
    if len(data.y_val):
        raise ValueError("`val_classes` replaces the validation split: set no `val_split`.")
    held = [known.index(c) for c in val_classes]
    kept = [label for label in range(len(known)) if label not in held]
    relabel = np.full(len(known), -1, "int32")
    relabel[kept + held] = np.arange(len(known), dtype="int32")

    def part(x, y, labels):
        rows = np.flatnonzero(np.isin(y, labels))
        return subset(x, rows), relabel[y[rows]]

    x_train, y_train = part(data.x_train, data.y_train, kept)
    x_val, y_val = part(data.x_train, data.y_train, held)
    x_test, y_test = part(data.x_test, data.y_test, kept)
    x_unknown, y_unknown = part(data.x_test, data.y_test, held)
    return Dataset(
        name=data.name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        class_names=[data.class_names[c] for c in kept], x_val=x_val, y_val=y_val,
        x_unknown=x_unknown, y_unknown=y_unknown,
        unknown_class_names=[data.class_names[c] for c in held],
    )  # fmt: skip


def _ids(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids))

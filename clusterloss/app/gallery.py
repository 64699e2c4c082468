"""A run's searchable gallery: `RUN_DIR/index/` holds an `Index` of gallery embeddings with
their labels, the gallery's file paths, and `info.json`: where the gallery came from, the
class names, a hash of the `model.keras` that embedded it (a later model makes the index
stale: refused), and the open-set threshold.

The open-set threshold is chosen on held-out data of the run (its validation split, else its
test split), as if each of those images were a query of a class the gallery does not hold:
its score is the similarity to the nearest training image of *another* class, and the
threshold is the smallest one that at most a fraction `far` of these scores pass (the false
accept rate of open-set identification, FPIR in NIST's terms). A query whose nearest
gallery item does not pass it (cosine below it; a Euclidean distance above it) is "unknown".
A rate `far` needs at least 1/far held-out images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.app.errors import RunError
from clusterloss.app.results import embed_all
from clusterloss.app.rundir import INDEX, atomic_path, write_text
from clusterloss.data import DATASETS, Dataset, ImageFiles, load_dataset
from clusterloss.evaluation.verification import impostor_threshold
from clusterloss.index import Index

INDEX_FILE = Path(INDEX) / "gallery.index"
INFO_FILE = Path(INDEX) / "info.json"
PATHS_FILE = Path(INDEX) / "paths.txt"
DEFAULT_FAR = 0.01
QUERY_BATCH = 1024  # held-out queries searched at a time for the threshold


def model_hash(run_dir: str | Path) -> str:
    """sha256 of RUN_DIR/model.keras."""
    digest = hashlib.sha256()
    with open(Path(run_dir) / "model.keras", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_format(model) -> tuple[tuple[int, int] | None, int | None]:
    """`(size, channels)` of the images the model takes (None, None for vectors)."""
    shape = tuple(model.backbone.input_shape[1:])
    return (shape[:2], shape[2]) if len(shape) == 3 else (None, None)


def gallery_data(model, data: Dataset, source: str | None) -> tuple[Any, np.ndarray, list[str]]:
    """`(x, labels, class_names)` of the gallery: the run's training set, or every sample
    of `source` (a folder, an .npz, or a built-in set's training part) in the model's
    input format."""
    if source is None:
        return data.x_train, data.y_train, data.class_names
    size, channels = input_format(model)
    try:
        builtin = source in DATASETS
        found = load_dataset(source if builtin else os.path.abspath(source), val_split=0.0,
                             test_split=None if builtin else 0.0, channels=channels,
                             **({"image_size": size} if size else {}))  # fmt: skip
    except ValueError as error:
        raise RunError(str(error)) from None
    return found.x_train, found.y_train, found.class_names


def nearest_other_class(index: Index, queries: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per query, the score of its nearest indexed item of another class (searching past
    the largest class's size, so one is always found; NaN if every item shares its class)."""
    depth = min(len(index), int(np.bincount(index.labels).max()) + 1)
    found = np.full(len(queries), np.nan)
    for start in range(0, len(queries), QUERY_BATCH):
        scores, rows = index.search(queries[start : start + QUERY_BATCH], depth)
        other = (index.labels[rows] != labels[start : start + QUERY_BATCH, None]) & (rows >= 0)
        first = np.argmax(other, axis=1)
        hit = other[np.arange(len(first)), first]
        found[start : start + len(first)][hit] = scores[np.arange(len(first)), first][hit]
    return found


def open_set_threshold(model, data: Dataset, metric: str, far: float,
                       train_emb: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """The open-set threshold at `far` (see the module docstring): chosen on the run's
    validation split (else its test split) against its training images."""
    part, x, y = ("validation", data.x_val, data.y_val) if len(data.y_val) else ("test", data.x_test, data.y_test)
    found = {"far": far, "threshold": None, "chosen_on": part, "num_queries": int(len(y))}
    if not len(y):
        return found
    train_emb = embed_all(model, data.x_train) if train_emb is None else train_emb
    index = Index(train_emb.shape[1], metric=metric)
    index.add(train_emb, labels=data.y_train)
    scores = nearest_other_class(index, embed_all(model, x), y)
    scores = scores[np.isfinite(scores)]
    if metric == "euclidean":
        scores = -scores  # threshold_at_far wants "higher is more alike"
    threshold = impostor_threshold(scores, far)
    if math.isfinite(threshold):
        found["threshold"] = threshold if metric == "cosine" else -threshold
    return found


def build_index(run_dir: str | Path, model, data: Dataset, source: str | None = None, *,
                metric: str = "cosine", kind: str = "flat", far: float = DEFAULT_FAR,
                verbose: Any = 0) -> dict[str, Any]:  # fmt: skip
    """Embed the gallery, save `RUN_DIR/index/` (see the module docstring); return the info."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    x, labels, class_names = gallery_data(model, data, source)
    emb = embed_all(model, x, verbose)
    index = Index(emb.shape[1], metric=metric, kind=kind, verbose=verbose not in (0, "0"))
    index.add(emb, labels=labels, ids=np.arange(len(emb)))
    (run_dir / INDEX).mkdir(exist_ok=True)
    with atomic_path(run_dir / INDEX_FILE) as temporary:
        index.save(temporary)
    paths = getattr(x, "paths", None)
    if paths is not None:
        write_text(run_dir / PATHS_FILE, "".join(p + "\n" for p in paths))
    info = {
        "source": "train" if source is None else str(Path(source).resolve()) if source not in DATASETS else source,
        "size": len(index), "dim": index.dim, "metric": index.metric, "kind": index.kind,
        "backend": index.backend, "exact": index.is_exact, "class_names": list(class_names),
        "paths": str(PATHS_FILE) if paths is not None else None,
        "model_sha256": model_hash(run_dir),
        "open_set": open_set_threshold(model, data, metric, far, emb if source is None else None),
        "seconds": round(time.perf_counter() - start, 3),
    }  # fmt: skip
    write_text(run_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info


def load_index(run_dir: str | Path) -> tuple[Index, dict[str, Any], list[str] | None] | None:
    """`(index, info, paths)` of RUN_DIR/index/, None if there is none; a `RunError` if it
    was built from another model.keras than the run's present one."""
    run_dir = Path(run_dir)
    if not (run_dir / INFO_FILE).is_file() or not (run_dir / INDEX_FILE).is_file():
        return None
    info = json.loads((run_dir / INFO_FILE).read_text())
    if info.get("model_sha256") != model_hash(run_dir):
        raise RunError(f"{run_dir / INDEX} was built from another model.keras than the run's "
                       f"present one (stale); rebuild it: clusterloss index build {run_dir}")  # fmt: skip
    try:
        index = Index.load(run_dir / INDEX_FILE)
    except (OSError, ValueError) as error:
        raise RunError(f"{run_dir / INDEX_FILE}: {error}; rebuild it: clusterloss index build {run_dir}") from None
    paths = None
    if info.get("paths"):
        paths = (run_dir / info["paths"]).read_text().splitlines()
    return index, info, paths


@dataclass
class Gallery:
    """A searchable gallery: its index, class names, files (or None), open-set threshold
    (or None) and a description for people."""

    index: Index
    class_names: list[str]
    paths: list[str] | None
    threshold: float | None
    description: str

    def class_of(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def accepts(self, score: float) -> bool:
        """Whether a nearest score passes the open-set threshold (always, without one)."""
        if self.threshold is None:
            return True
        return score >= self.threshold if self.index.metric == "cosine" else score <= self.threshold

    def answer(self, queries: np.ndarray, k: int, skip: list[int | None] | None = None) -> list[dict[str, Any]]:
        """Per query: `prediction` (the nearest item's class, or "unknown"), its `score`,
        the `threshold` and the `neighbors` (rank, gallery_index, label, class, score, path).
        `skip[i]`: a gallery position that query i must not get (itself)."""
        scores, found = self.index.search(queries, k + (1 if skip else 0))
        answers = []
        for row in range(len(queries)):
            hits = [(float(score), int(j)) for score, j in zip(scores[row], found[row])
                    if j >= 0 and not (skip and int(self.index.ids[j]) == skip[row])][:k]  # fmt: skip
            neighbors = [
                {"rank": rank + 1, "gallery_index": int(self.index.ids[j]),
                 "label": int(self.index.labels[j]), "class": self.class_of(int(self.index.labels[j])),
                 "score": score, **({"path": self.paths[int(self.index.ids[j])]} if self.paths else {})}
                for rank, (score, j) in enumerate(hits)
            ]  # fmt: skip
            best = neighbors[0]["score"] if neighbors else math.nan
            answers.append({
                "prediction": neighbors[0]["class"] if neighbors and self.accepts(best) else "unknown",
                "score": best, "threshold": self.threshold, "neighbors": neighbors,
            })  # fmt: skip
        return answers


def open_gallery(run_dir: str | Path, model, data: Dataset, part: str = "train", verbose: Any = 0) -> Gallery:
    """The gallery searched: for `"train"`, RUN_DIR/index/ if built (refused if stale), else
    the training set embedded now (with its open-set threshold); `"test"` and `"unknown"` are
    those parts of the run's data, embedded now (no threshold)."""
    if part == "train":
        loaded = load_index(run_dir)
        if loaded:
            index, info, paths = loaded
            description = f"{Path(run_dir) / INDEX_FILE} ({info['size']} items of {info['source']})"
            return Gallery(index, info["class_names"], paths, info["open_set"]["threshold"], description)
    x, y = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test),
            "unknown": (data.x_unknown, data.y_unknown)}[part]  # fmt: skip
    if not len(y):
        raise RunError(f"the {part} set is empty (unknown holds the classes left out of training: "
                       "olivetti's people 30-39, or train with --known-classes)")  # fmt: skip
    emb = embed_all(model, x, verbose)
    index = Index(emb.shape[1], metric="cosine")
    index.add(emb, labels=y, ids=np.arange(len(y)))
    threshold = open_set_threshold(model, data, "cosine", DEFAULT_FAR, emb)["threshold"] if part == "train" else None
    description = (f"the run's {part} set, embedded now ({len(y)} items; `clusterloss index "
                   "build` saves an index)")  # fmt: skip
    return Gallery(index, data.all_class_names, getattr(x, "paths", None), threshold, description)


def read_queries(model, images: list[str] | None, npz: str | None) -> tuple[Any, np.ndarray | None, list[str]]:
    """`(x, labels or None, names)` of query files: images (in the model's input format) or
    an .npz with `x` (and optional `y`)."""
    if images:
        size, channels = input_format(model)
        if size is None:
            raise RunError("--images needs a model that takes images; this one takes vectors (use --npz)")
        missing = [p for p in images if not Path(p).is_file()]
        if missing:
            raise RunError(f"{missing[0]}: no such file")
        return ImageFiles(images, size, channels), None, list(images)
    try:
        with np.load(npz, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                raise RunError(f"{npz}: needs an array 'x' (and optionally 'y'); found {sorted(arrays.files)}")
            x = arrays["x"]
            y = arrays["y"].astype(np.int64) if "y" in arrays.files else None
    except (OSError, ValueError) as error:
        raise RunError(f"{npz}: not a readable .npz file ({error})") from None
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x.astype(np.float32), y, [f"{npz}[{i}]" for i in range(len(x))]

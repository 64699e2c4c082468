"""What a run directory holds, read and written: `metrics.json`, `embeddings.npz`, the
files its own data had and its split (`files.json`), and the model with its data
(`load_run`); `summarize`, the statistics stored with the embeddings."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from clusterloss.app.config import TrainConfig
from clusterloss.app.errors import RunError
from clusterloss.app.rundir import FILES, atomic_path, write_text
from clusterloss.data import Batches, Dataset, ImageFiles
from clusterloss.data.folder import class_files
from clusterloss.evaluation import embed
from clusterloss.evaluation.embedding_stats import class_means, intra_inter_ratio, knn_accuracy
from clusterloss.models import ClusterModel

BATCH = 256  # rows per embedding / prediction batch
PARTS = ("train", "val", "test", "unknown")  # the Dataset parts x_<part>
SHOWN_NAMES = 3  # file names a "data changed" message lists per kind of change


def clean(value: Any) -> Any:
    """NaN/inf -> None (valid JSON), NumPy scalars -> Python."""
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    text = json.dumps({k: clean(v) for k, v in metrics.items()}, indent=2, default=clean)
    return write_text(Path(run_dir) / "metrics.json", text + "\n")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise RunError(f"{run_dir} holds no metrics.json (make a run with `clusterloss train --out {run_dir}`)")
    return json.loads(path.read_text())


def embed_all(model: keras.Model, x: Any, verbose: Any = 0) -> np.ndarray:
    """`embed` that also takes an empty set."""
    if len(x) == 0:
        return np.zeros((0, model.backbone.output_shape[-1]), np.float32)
    return embed(model, x, BATCH, verbose)


def summarize(model: ClusterModel, data: Dataset) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classifier accuracy, 1-NN accuracy and the intra/inter ratio on the test set, and the
    embeddings of every part (what `embeddings.npz` holds)."""
    train_emb = embed_all(model, data.x_train)
    test_emb = embed_all(model, data.x_test)
    metrics: dict[str, Any] = {
        "test_accuracy": None,
        "knn_accuracy": knn_accuracy(test_emb, data.y_test, train_emb, data.y_train),
        "intra_inter_ratio": intra_inter_ratio(test_emb, data.y_test, train_emb, data.y_train),
    }
    if model.head is not None:
        logits = model.predict(Batches(data.x_test, batch_size=BATCH), verbose=0)["logits"]
        metrics["test_accuracy"] = float(np.mean(np.argmax(logits, axis=-1) == data.y_test))
    if model.center_loss is not None:
        centers = keras.ops.convert_to_numpy(model.center_loss.centers)
    else:
        centers = class_means(train_emb, data.y_train, data.num_classes)
    embeddings = {
        "train": train_emb,
        "train_labels": data.y_train,
        "val": embed_all(model, data.x_val),
        "val_labels": data.y_val,
        "test": test_emb,
        "test_labels": data.y_test,
        "unknown": embed_all(model, data.x_unknown),
        "unknown_labels": data.y_unknown,
        "centers": centers,
    }
    return metrics, embeddings


def save_embeddings(run_dir: str | Path, embeddings: dict[str, np.ndarray]) -> None:
    with atomic_path(Path(run_dir) / "embeddings.npz") as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **embeddings)


def load_embeddings(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays `train()` saved in `embeddings.npz`."""
    with np.load(Path(run_dir) / "embeddings.npz") as saved:
        return dict(saved)


def _data_files(config: TrainConfig) -> dict[str, list[int]]:
    """Every file of the run's own data (a folder's images, relative to it; or the .npz)
    with its size and modification time (nothing where the data is gone)."""
    root = Path(config.data)
    if root.is_dir():
        paths = [p for found in class_files(root).values() for p in found]
    else:
        paths = [str(root)] if root.is_file() else []
    base = root if root.is_dir() else root.parent
    stats = {os.path.relpath(p, base): os.stat(p) for p in paths}
    return {name: [found.st_size, found.st_mtime_ns] for name, found in stats.items()}


def _split(config: TrainConfig, data: Dataset) -> dict[str, list[str]] | None:
    """The files of each part of a folder's split, relative to the folder (None for arrays)."""
    if not isinstance(data.x_train, ImageFiles):
        return None
    return {part: [os.path.relpath(p, config.data) for p in getattr(data, f"x_{part}").paths] for part in PARTS}


def record_data(run_dir: str | Path, config: TrainConfig, data: Dataset) -> None:
    """Write `files.json`: the own data's files (size, modification time) and split that
    the run trains on (nothing for a built-in data set)."""
    if not config.is_builtin:
        record = {"data": config.data, "files": _data_files(config), "split": _split(config, data)}
        write_text(Path(run_dir) / FILES, json.dumps(record) + "\n")


def _names(kind: str, names: list[str]) -> str:
    more = f", ... ({len(names)})" if len(names) > SHOWN_NAMES else ""
    return f"{kind} {', '.join(names[:SHOWN_NAMES])}{more}"


def _record(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FILES
    return json.loads(path.read_text()) if path.is_file() else None


def _changed(run_dir: str | Path, config: TrainConfig, changes: list[str]) -> RunError:
    return RunError(
        f"{config.data} changed since {run_dir} was trained ({'; '.join(changes)}): its split "
        "would not be the one the run trained on; restore the files, or train a new run on "
        "the data as it is"
    )


def check_data(run_dir: str | Path, config: TrainConfig) -> None:
    """RunError when the own data no longer holds the files `files.json` recorded (added,
    removed, changed): the run's test images could be images it trained on. Runs without
    `files.json` (older ones) are not checked."""
    record = _record(run_dir)
    if record is None:
        return
    then, now = record["files"], _data_files(config)
    changes = [
        _names(kind, names)
        for kind, names in (
            ("added", sorted(set(now) - set(then))),
            ("removed", sorted(set(then) - set(now))),
            ("changed", sorted(k for k in set(now) & set(then) if now[k] != then[k])),
        )
        if names
    ]
    if changes:
        raise _changed(run_dir, config, changes)


def check_split(run_dir: str | Path, config: TrainConfig, data: Dataset) -> None:
    """RunError when `data` (the same files, `check_data`) is split otherwise than
    `files.json` recorded."""
    record = _record(run_dir)
    if record is not None and record["split"] not in (None, _split(config, data)):
        raise _changed(run_dir, config, ["the same files, split otherwise"])


def run_model(run_dir: str | Path) -> ClusterModel:
    """The run's model alone (its data is not read)."""
    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise RunError(
            f"{run_dir} holds no model.keras (the run did not finish, or it is not a run: "
            f"make one with `clusterloss train --out {run_dir}`)"
        )
    return keras.saving.load_model(path)


def load_run(run_dir: str | Path) -> tuple[ClusterModel, Dataset, dict[str, Any]]:
    """The model, the data set (same split, checked against `files.json`) and
    `metrics.json` of a run directory."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    model = run_model(run_dir)
    saved = dict(metrics["config"])
    if "dataset" in saved:  # the name of `data` in runs made before own data existed
        saved["data"] = saved.pop("dataset")
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise RunError(f"{run_dir}/metrics.json has settings this clusterloss does not know: {unknown}")
    config = TrainConfig(**saved)
    check_data(run_dir, config)
    data = config.load_data()
    check_split(run_dir, config, data)
    return model, data, metrics

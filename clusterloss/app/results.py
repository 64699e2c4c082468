"""What a run directory holds, read and written: `metrics.json`, `embeddings.npz`, and the
model with its data (`load_run`); `summarize`, the statistics stored with the embeddings."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from clusterloss.app.config import TrainConfig
from clusterloss.app.errors import RunError
from clusterloss.app.rundir import atomic_path, write_text
from clusterloss.data import Batches, Dataset
from clusterloss.evaluation import embed
from clusterloss.evaluation.embedding_stats import class_means, intra_inter_ratio, knn_accuracy
from clusterloss.models import ClusterModel

BATCH = 256  # rows per embedding / prediction batch


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
        "train": train_emb, "train_labels": data.y_train,
        "val": embed_all(model, data.x_val), "val_labels": data.y_val,
        "test": test_emb, "test_labels": data.y_test,
        "unknown": embed_all(model, data.x_unknown), "unknown_labels": data.y_unknown,
        "centers": centers,
    }  # fmt: skip
    return metrics, embeddings


def save_embeddings(run_dir: str | Path, embeddings: dict[str, np.ndarray]) -> None:
    with atomic_path(Path(run_dir) / "embeddings.npz") as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **embeddings)


def load_embeddings(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays `train()` saved in `embeddings.npz`."""
    with np.load(Path(run_dir) / "embeddings.npz") as saved:
        return dict(saved)


def load_run(run_dir: str | Path) -> tuple[ClusterModel, Dataset, dict[str, Any]]:
    """The model, the data set (same split) and `metrics.json` of a run directory."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if not (run_dir / "model.keras").is_file():
        raise RunError(f"{run_dir} holds no model.keras (the run did not finish)")
    saved = dict(metrics["config"])
    if "dataset" in saved:  # the name of `data` in runs made before own data existed
        saved["data"] = saved.pop("dataset")
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise RunError(f"{run_dir}/metrics.json has settings this clusterloss does not know: {unknown}")
    config = TrainConfig(**saved)
    model = keras.saving.load_model(run_dir / "model.keras")
    return model, config.load_data(), metrics

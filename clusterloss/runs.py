"""One training run: data, model, fit, evaluation, and the files of a run directory.

A run directory holds `model.keras`, `metrics.json` (the settings and every number),
`embeddings.npz` (train, test and unknown-class embeddings with labels, and the centers),
`features.png` and `history.png`; unless `evaluate=False`, also the retrieval, verification
and open-set metrics, `roc.png`, `neighbors.png` and `report.html`
(`clusterloss.evaluation.run_eval`). `train()` makes one; `load_run()` reads it back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from clusterloss.data import Dataset, load_dataset
from clusterloss.evaluation.embedding_stats import class_means, intra_inter_ratio, knn_accuracy
from clusterloss.models import ClusterModel, make_backbone
from clusterloss.optimizers import center_optimizer
from clusterloss.recipes import build_model
from clusterloss.report.plots import plot_features, plot_history


# Adam learning rates that train each data set's default backbone well in a few epochs.
LEARNING_RATES = {"digits": 1e-2, "fashion-mnist": 1e-3, "olivetti": 1e-3}


@dataclass
class TrainConfig:
    """Everything that decides a run; stored in `metrics.json` under `"config"`."""

    dataset: str = "digits"
    loss: str = "center"
    embedding_dim: int = 2
    epochs: int = 30
    seed: int = 0
    out: str = ""
    batch_size: int = 64
    learning_rate: float | None = None  # None: LEARNING_RATES[dataset]
    backbone: str = "auto"
    known_classes: list[int] | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # loss hyperparameters
    evaluate: bool = True
    verbose: Any = "auto"

    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.dataset}-{self.loss}-s{self.seed}")

    def load_data(self) -> Dataset:
        """The data set and split of this run (the same every time for the same config)."""
        return load_dataset(
            self.dataset,
            seed=self.seed,
            known_classes=self.known_classes,
            train_limit=self.train_limit,
            test_limit=self.test_limit,
        )


def _optimizer(config: TrainConfig, model: ClusterModel) -> keras.optimizers.Optimizer:
    adam = keras.optimizers.Adam(config.learning_rate)  # resolved by train()
    layer = model.center_loss
    if layer is not None and layer.update == "gradient":
        return center_optimizer(adam, centers=config.options.get("center_lr", 0.5))
    return adam


def _training_data(config: TrainConfig, data: Dataset, pairs: bool) -> dict[str, Any]:
    """`fit` arguments: plain arrays, or M-per-class batches for losses that need pairs."""
    if not pairs:
        return {"x": data.x_train, "y": data.y_train, "batch_size": config.batch_size}
    from clusterloss.sampling import MPerClassSampler

    # M per class, with as many classes per batch as fit (at most all of them).
    classes = max(2, min(config.batch_size // config.options.get("m_per_class", 4), data.num_classes))
    m = config.batch_size // classes
    sampler = MPerClassSampler(
        data.x_train, data.y_train, m=m, batch_size=m * classes, seed=config.seed
    )
    return {"x": sampler}


def summarize(model: ClusterModel, data: Dataset) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classifier accuracy, 1-NN accuracy and the intra/inter ratio on the test set."""
    train_emb = model.embed(data.x_train)
    test_emb = model.embed(data.x_test)
    metrics: dict[str, Any] = {
        "test_accuracy": None,
        "knn_accuracy": knn_accuracy(test_emb, data.y_test, train_emb, data.y_train),
        "intra_inter_ratio": intra_inter_ratio(test_emb, data.y_test, train_emb, data.y_train),
    }
    if model.head is not None:
        logits = model.predict(data.x_test, batch_size=256, verbose=0)["logits"]
        metrics["test_accuracy"] = float(np.mean(np.argmax(logits, axis=-1) == data.y_test))
    if model.center_loss is not None:
        centers = keras.ops.convert_to_numpy(model.center_loss.centers)
    else:
        centers = class_means(train_emb, data.y_train, data.num_classes)
    embeddings = {
        "train": train_emb,
        "train_labels": data.y_train,
        "test": test_emb,
        "test_labels": data.y_test,
        "unknown": model.embed(data.x_unknown) if len(data.x_unknown) else np.zeros((0, 0)),
        "unknown_labels": data.y_unknown,
        "centers": centers,
    }
    return metrics, embeddings


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and write the run directory; returns the contents of `metrics.json`."""
    keras.utils.set_random_seed(config.seed)
    if config.learning_rate is None:
        config.learning_rate = LEARNING_RATES[config.dataset]
    data = config.load_data()
    backbone = make_backbone(data.input_shape, config.embedding_dim, config.backbone)
    model, loss, recipe = build_model(config.loss, backbone, data.num_classes, config.options)
    model.compile(
        optimizer=_optimizer(config, model),
        loss=loss,
        metrics=["accuracy"] if model.head is not None else None,
    )
    start = time.perf_counter()
    history = model.fit(
        **_training_data(config, data, recipe.pairs),
        epochs=config.epochs,
        verbose=config.verbose,
    )
    train_seconds = time.perf_counter() - start

    out = config.run_dir()
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    stats, emb = summarize(model, data)
    metrics = {
        "dataset": config.dataset,
        "loss": config.loss,
        "backend": keras.backend.backend(),
        "embedding_dim": config.embedding_dim,
        "epochs": config.epochs,
        "seed": config.seed,
        **stats,
        "train_seconds": round(train_seconds, 3),
        "num_classes": data.num_classes,
        "num_train": int(len(data.x_train)),
        "num_test": int(len(data.x_test)),
        "config": asdict(config),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    title = f"{config.dataset} / {config.loss} / {config.embedding_dim}-D / seed {config.seed}"
    plot_features(
        emb["test"], data.y_test, out / "features.png", emb["centers"], data.class_names, title
    )
    plot_history(history.history, out / "history.png", title)
    np.savez_compressed(out / "embeddings.npz", **emb)
    write_metrics(out, metrics)
    if config.evaluate:  # retrieval, verification, open set, roc.png, report.html
        from clusterloss.evaluation.run_eval import evaluate_run

        metrics = evaluate_run(out, model, data, metrics, embeddings=emb, verbose=config.verbose)
    return metrics


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    path = Path(run_dir) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return path


def load_embeddings(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays `train()` saved in `embeddings.npz`."""
    with np.load(Path(run_dir) / "embeddings.npz") as saved:
        return dict(saved)


def load_run(run_dir: str | Path) -> tuple[ClusterModel, Dataset, dict[str, Any]]:
    """The model, the data set (same split) and `metrics.json` of a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise ValueError(f"`run_dir` must hold metrics.json from `clusterloss train`: {run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = TrainConfig(**metrics["config"])
    model = keras.saving.load_model(run_dir / "model.keras")
    data = config.load_data()
    return model, data, metrics

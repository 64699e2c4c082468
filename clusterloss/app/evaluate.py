"""Every metric of a run directory, from its model: `evaluate_run(run_dir)`.

What the numbers mean (all with cosine similarity, recorded as `"metric": "cosine"`):

- Retrieval, known classes (top-level keys `precision_at_1`, `r_precision`, `map_at_r`,
  `mean_average_precision`, `mean_reciprocal_rank`, `recall_at_<n>`, `nmi`, `ami`): the test
  images are the queries, the training images the references (gallery); NMI/AMI cluster the
  test embeddings. `k` is `"max_bin_count"`, so R-precision and MAP@R are exact.
- Retrieval, unseen classes (`unseen_*`, same names): where the data set holds classes never
  seen in training (Olivetti's people 30-39; `--known-classes` otherwise), each of those
  images is a query against all the others (leave-one-out). Class-disjoint from training:
  the numbers that say whether the embedding generalises.
- Verification (`roc_auc`, `eer`, `eer_threshold`, `tar_at_far_1e-1`, `tar_at_far_1e-2`,
  `tar_at_far_1e-3`, their `threshold_at_far_*`, `num_genuine_pairs`, `num_impostor_pairs`):
  every pair of images of the set named by `verification_set`: `"unseen"` (the unseen-class
  images) where the data set has at least two unseen classes, else `"test"`. With unseen
  classes the same numbers on the test set are also given as `known_roc_auc`, `known_eer`,
  ... A TAR at a FAR below 1/(impostor pairs) cannot be measured: null in metrics.json.
- Open set (`open_set_auroc`, `open_set_threshold`, `open_set_known_accept_rate`,
  `open_set_unknown_reject_rate`, `open_set_known_accuracy`, `open_set_accuracy`,
  `closed_set_accuracy`, `num_known`, `num_unknown`): the
  training images are the references, the test images known queries and the unseen-class
  images unknown queries; a query's score is the similarity of its nearest reference. The
  threshold keeps 95% of the known queries.

Values that cannot be computed (NaN) are written as null. The keys are those of the
library functions (`clusterloss.evaluation.keys`), with the prefixes above.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.app.results import clean, load_run, save_embeddings, summarize, write_metrics
from clusterloss.app.rundir import atomic_path
from clusterloss.app.summaries import run_title
from clusterloss.data import Dataset
from clusterloss.evaluation.open_set import open_set_metrics
from clusterloss.evaluation.retrieval import retrieval_metrics
from clusterloss.evaluation.verification import (
    DEFAULT_FAR_TARGETS,
    roc_metrics,
    save_roc_plot,
    verification_scores,
)

METRIC = "cosine"
GRID_QUERIES = 8  # queries (rows) in the nearest-neighbour grids of the report
GRID_NEIGHBORS = 6
KEEP_KNOWN = 0.95  # open-set threshold: accept this share of the known queries

# keys computed only when the data set has unseen classes
_CONDITIONAL = ("unseen_", "known_", "open_set_", "closed_set_", "num_unknown", "num_known")


def _progress(verbose: Any):
    """A keras Progbar over the evaluation steps (None when silent)."""
    if verbose in (0, "0", False, None):
        return None
    from keras.utils import Progbar

    print("evaluation: embeddings, retrieval, unseen classes, verification, open set, plots, report", flush=True)
    return Progbar(7, verbose=2 if verbose in (2, "2") else 1, unit_name="step")


def _retrieval(query, query_labels, reference=None, reference_labels=None, prefix="", seed=0):
    found = retrieval_metrics(query, query_labels, reference, reference_labels, metric=METRIC, seed=seed)
    return {prefix + key: value for key, value in found.items()}


def _verification(scores, is_genuine, prefix=""):
    found = roc_metrics(scores, is_genuine, far_targets=DEFAULT_FAR_TARGETS)
    return {prefix + key: value for key, value in found.items()}


def _has_pairs(labels: np.ndarray) -> bool:
    """At least one genuine and one impostor pair."""
    _, counts = np.unique(labels, return_counts=True)
    return len(counts) >= 2 and counts.max() >= 2


def _grid_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to `n` query positions, one per class first (seeded), then more of the same."""
    order = np.random.default_rng(seed).permutation(len(labels))
    _, first = np.unique(labels[order], return_index=True)
    chosen = list(order[np.sort(first)][:n])
    taken = set(chosen)
    rest = [i for i in order[: n + len(chosen)] if i not in taken]
    return np.array(chosen + rest[: n - len(chosen)], dtype=np.int64)


def _neighbor_grid(
    path, q_images, q_labels, q_emb, r_images, r_labels, r_emb, class_names, title, same_source: bool, seed: int
) -> None:
    """Nearest references of a few queries, drawn by `plot_neighbors` (images only: no grid
    for feature vectors)."""
    from clusterloss.app.report.plots import plot_neighbors
    from clusterloss.index import Index, drop_self_matches

    if len(q_images.shape) != 4:
        return
    rows = _grid_rows(q_labels, GRID_QUERIES, seed)
    k = min(GRID_NEIGHBORS, len(r_emb) - (1 if same_source else 0))
    if len(rows) == 0 or k < 1:
        return
    index = Index(r_emb.shape[1], metric=METRIC)
    index.add(r_emb, r_labels)
    scores, found = index.search(q_emb[rows], k + (1 if same_source else 0))
    if same_source:
        found, scores = drop_self_matches(rows, found, scores)
    neighbors = r_images[found.reshape(-1)]  # an array or ImageFiles: read these only
    plot_neighbors(
        path, q_images[rows], q_labels[rows], neighbors.reshape(*found.shape, *neighbors.shape[1:]),
        r_labels[found], scores, class_names, title,
    )  # fmt: skip


def write_embedding_files(
    run_dir: Path, data: Dataset, embeddings: dict[str, np.ndarray], metrics: dict[str, Any]
) -> None:
    """`embeddings.npz`, `features.png` and `history.png` (when `metrics` has a history)."""
    from clusterloss.app.report.plots import history_marks, plot_features, plot_history

    title = run_title(metrics)
    test, centers = embeddings["test"], embeddings["centers"]
    plot_features(test, data.y_test, run_dir / "features.png", centers, data.class_names, title)
    if metrics.get("history"):
        plot_history(metrics["history"], run_dir / "history.png", title, **history_marks(metrics))
    save_embeddings(run_dir, embeddings)


def compute_metrics(
    data: Dataset, embeddings: dict[str, np.ndarray], seed: int = 0, step: Callable[[], Any] = lambda: None
) -> tuple[dict[str, Any], dict[str, tuple]]:
    """Every metric of the module docstring from the run's `data` and `embeddings` (keys of
    `embeddings.npz`); writes nothing.

    Returns:
        The metrics (NaN where a value cannot be computed) and the verification ROC curves
        for `write_figures` (label -> `(scores, is_genuine)`). `step` is called after each
        of the 4 parts (retrieval, unseen classes, verification, open set).
    """
    train_emb, test_emb = embeddings["train"], embeddings["test"]
    unknown_emb = embeddings["unknown"] if len(data.y_unknown) else None
    y_train, y_test, y_unknown = data.y_train, data.y_test, data.y_unknown

    # retrieval: test queries against the training gallery
    found: dict[str, Any] = {"metric": METRIC}
    found.update(_retrieval(test_emb, y_test, train_emb, y_train, seed=seed))
    step()

    # retrieval among the unseen classes (leave-one-out)
    unseen = _has_pairs(y_unknown)
    if unseen:
        found.update(_retrieval(unknown_emb, y_unknown, prefix="unseen_", seed=seed))
    step()

    # verification: unseen classes when there are, else the test set
    curves = {}
    test_scores = verification_scores(test_emb, y_test, metric=METRIC, seed=seed)
    if unseen:
        scores = verification_scores(unknown_emb, y_unknown, metric=METRIC, seed=seed)
        found["verification_set"] = "unseen"
        found.update(_verification(*scores))
        found.update(_verification(*test_scores, prefix="known_"))
        curves[f"unseen classes ({len(np.unique(y_unknown))})"] = scores
        curves[f"known classes, test set ({data.num_classes})"] = test_scores
    else:
        found["verification_set"] = "test"
        found.update(_verification(*test_scores))
        curves[f"test set ({data.num_classes} classes)"] = test_scores
    step()

    # open set: known test queries vs unseen-class queries, against the training gallery
    if unknown_emb is not None:
        found.update(
            open_set_metrics(train_emb, y_train, test_emb, y_test, unknown_emb, metric=METRIC, keep_known=KEEP_KNOWN)
        )
        found["num_unknown_classes"] = int(len(np.unique(y_unknown)))
    step()
    return found, curves


def write_figures(
    run_dir: Path, data: Dataset, embeddings: dict[str, np.ndarray], curves: dict[str, tuple], title: str, seed: int = 0
) -> None:
    """`roc.png` (the `curves` of `compute_metrics`) and the nearest-neighbour grids
    `neighbors.png` and, among unseen classes, `neighbors_unseen.png`."""
    with atomic_path(run_dir / "roc.png") as temporary:
        save_roc_plot(temporary, curves, title=f"Verification ROC ({METRIC}): {title}")
    names, train_emb, test_emb = data.all_class_names, embeddings["train"], embeddings["test"]
    _neighbor_grid(
        run_dir / "neighbors.png", data.x_test, data.y_test, test_emb, data.x_train, data.y_train,
        train_emb, names, "test queries: nearest training images (cosine)", False, seed,
    )  # fmt: skip
    if _has_pairs(data.y_unknown):
        unknown_emb = embeddings["unknown"]
        _neighbor_grid(
            run_dir / "neighbors_unseen.png", data.x_unknown, data.y_unknown, unknown_emb,
            data.x_unknown, data.y_unknown, unknown_emb, names,
            "unseen classes: nearest other unseen images (cosine)", True, seed,
        )  # fmt: skip


def merge_metrics(run_dir: Path, metrics: dict[str, Any], found: dict[str, Any], report: bool = True) -> dict[str, Any]:
    """`metrics` (the run's metrics.json contents) with the evaluation `found`, written to
    `metrics.json` (and `report.html`); returns what metrics.json now holds. The keys of an
    earlier evaluation that no longer apply (unseen-class numbers of another split) go."""
    merged = {k: v for k, v in metrics.items() if not k.startswith(_CONDITIONAL)}
    merged.update({key: clean(value) for key, value in found.items()})
    write_metrics(run_dir, merged)
    if report:
        from clusterloss.app.report.html import write_report

        write_report(run_dir, merged)
    return merged


def evaluate_run(
    run_dir: str | Path,
    model=None,
    data=None,
    metrics: dict[str, Any] | None = None,
    *,
    embeddings: dict[str, np.ndarray] | None = None,
    report: bool = True,
    verbose: Any = 0,
) -> dict[str, Any]:
    """Compute every metric of a run (`compute_metrics`), write `roc.png`, `neighbors.png`
    (`neighbors_unseen.png` with unseen classes: `write_figures`), merge the metrics into
    `RUN_DIR/metrics.json` and write `report.html` (`merge_metrics`).

    Args:
        run_dir: a directory written by `clusterloss.app.runs.train`.
        model, data, metrics: the run's model, `Dataset` and metrics.json contents; loaded
            from `run_dir` when None (`clusterloss.app.results.load_run`).
        embeddings: embeddings already computed with this model (`train()` passes its own:
            keys of `embeddings.npz`). None: recompute them from the model, refresh
            the classifier / 1-NN statistics, `embeddings.npz`, `features.png` and
            `history.png`.
        report: also write `report.html`.
        verbose: show a `keras.utils.Progbar` over the evaluation steps (Keras' values:
            0 silent, 1 or "auto" a bar, 2 one line at the end).

    Returns:
        The merged metrics (what metrics.json now holds). See the module docstring for
        the keys.
    """
    run_dir = Path(run_dir)
    if model is None or data is None or metrics is None:
        loaded_model, loaded_data, loaded_metrics = load_run(run_dir)
        model = loaded_model if model is None else model
        data = loaded_data if data is None else data
        metrics = loaded_metrics if metrics is None else metrics
    metrics = dict(metrics)
    seed = int(metrics.get("seed", 0))
    bar = _progress(verbose)
    step = lambda: bar.add(1) if bar is not None else None  # noqa: E731
    start = time.perf_counter()
    if embeddings is None:  # recomputed from the model unless train() just did
        stats, embeddings = summarize(model, data)
        metrics.update(stats)
        write_embedding_files(run_dir, data, embeddings, metrics)
    step()
    found, curves = compute_metrics(data, embeddings, seed, step)
    write_figures(run_dir, data, embeddings, curves, run_title(metrics), seed)
    step()
    found["evaluate_seconds"] = round(time.perf_counter() - start, 3)
    metrics = merge_metrics(run_dir, metrics, found, report)
    step()
    return metrics

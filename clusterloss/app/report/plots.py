"""PNG plots of a run: the 2-D feature map (paper Fig. 3 style) and the training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.app.rundir import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    """Save and close a figure, atomically (PNG by the extension of `path`)."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary)
    _pyplot().close(fig)


def project_2d(embeddings: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """2-D coordinates: the embeddings themselves if 2-D, else a PCA fitted on `embeddings`
    and applied to `others` too (e.g. the centers)."""
    if embeddings.shape[1] == 2:
        return [embeddings, *others]
    if embeddings.shape[1] == 1:
        pad = lambda a: np.concatenate([a, np.zeros_like(a)], axis=1)  # noqa: E731
        return [pad(embeddings), *(pad(o) for o in others)]
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(embeddings)
    return [pca.transform(embeddings), *(pca.transform(o) for o in others)]


def plot_features(
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    centers: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
    ax=None,
) -> None:
    """Scatter the embeddings, one colour per class, centers as black crosses (PCA above 2-D).

    With `ax`, draws into that matplotlib axes and saves nothing (for multi-panel figures).
    """
    plt = _pyplot()
    embeddings = np.asarray(embeddings, "float32")
    labels = np.asarray(labels).reshape(-1)
    if centers is not None:  # a class without training rows has no center (NaN): not drawn
        centers = np.asarray(centers, "float32")
        centers = centers[np.isfinite(centers).all(axis=1)]
    extra = [centers] if centers is not None and len(centers) else []
    points, *rest = project_2d(embeddings, *extra)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        pts = points[labels == c]
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=name)
    if rest:
        ax.scatter(rest[0][:, 0], rest[0][:, 1], marker="x", s=60, c="black", label="centers")
    suffix = "" if embeddings.shape[1] <= 2 else f" (PCA of {embeddings.shape[1]}-D)"
    ax.set_title(title + suffix, fontsize=10)
    if len(classes) <= 12:
        legend = ax.legend(fontsize=7, markerscale=3, loc="best", framealpha=0.7)
        if rest:  # markerscale is for the tiny points, not the center crosses
            legend.legend_handles[-1].set_sizes([40])
    if own:
        fig.tight_layout()
        save_figure(fig, path)


def history_marks(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """`plot_history`'s marks of a run's metrics.json: its frozen epochs and kept epoch."""
    config = metrics.get("config") or {}
    return {"frozen_epochs": int(config.get("freeze_backbone_epochs") or 0), "kept_epoch": metrics.get("best_epoch")}


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    frozen_epochs: int = 0,
    kept_epoch: int | None = None,
) -> None:
    """Loss parts (left) and accuracy-like metrics (right) per epoch; the first
    `frozen_epochs` (trunk frozen) shaded, and the epoch whose model was kept (1-based) a
    dotted line with a star on the validation metric that chose it (`val_map_at_r`)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name, values in history.items():
        values = np.array([np.nan if v is None else v for v in values], dtype=float)
        epochs = np.arange(1, len(values) + 1)
        target = left if "loss" in name else right
        style = "--" if name.startswith("val_") else "-"
        target.plot(epochs, values, style, label=name)
        if name == "val_map_at_r" and kept_epoch is not None and kept_epoch <= len(values):
            target.plot([kept_epoch], [values[kept_epoch - 1]], "*", color="black", markersize=12)
    left.set(title="loss", xlabel="epoch")
    right.set(title="metrics", xlabel="epoch")
    for ax in (left, right):
        if frozen_epochs:
            ax.axvspan(0.5, frozen_epochs + 0.5, color="0.85", label=f"trunk frozen (epochs 1-{frozen_epochs})")
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="black", linestyle=":", label=f"kept: epoch {kept_epoch}")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_neighbors(
    path: str | Path,
    queries: np.ndarray,
    query_labels: Sequence[int],
    neighbors: np.ndarray,
    neighbor_labels: np.ndarray,
    scores: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """A grid of query images (first column, blue frame) and their nearest neighbours, nearest
    first: a green frame when the neighbour has the query's label, red otherwise.

    Args:
        queries: `(q, h, w)` or `(q, h, w, channels)` images in [0, 1].
        neighbors: `(q, k, ...)` images of each query's k neighbours; `neighbor_labels` and
            `scores` (e.g. cosine similarities, shown under each neighbour) are `(q, k)`.
        class_names: names of the labels (a label is shown as `class_names[label]`).

    The cells are composed into one image (one `imshow`, fast for large grids).
    """
    plt = _pyplot()
    queries, neighbors = np.asarray(queries, "float32"), np.asarray(neighbors, "float32")
    query_labels = np.asarray(query_labels).reshape(-1)
    neighbor_labels = np.asarray(neighbor_labels)
    n, k = neighbor_labels.shape
    name = lambda c: (  # noqa: E731
        class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
    )

    def rgb(image):
        image = np.clip(image, 0.0, 1.0)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        return image[..., :3]

    h, w = rgb(queries[0]).shape[:2]
    zoom = max(1, int(round(64 / max(h, w))))  # tiny images (8x8 digits) drawn larger
    ch, cw = h * zoom, w * zoom
    border = max(2, round(max(ch, cw) / 22))
    cell_h, cell_w = ch + 2 * border, cw + 2 * border
    gap_x, text_h, head_h = max(6, cell_w // 6), int(cell_h * 0.42), int(cell_h * 0.25)
    width = (k + 1) * cell_w + k * gap_x + gap_x  # a wider gap after the query column
    height = head_h + n * (cell_h + text_h)
    canvas = np.ones((height, width, 3), "float32")
    colors = {"query": (0.12, 0.37, 0.75), True: (0.10, 0.61, 0.24), False: (0.84, 0.15, 0.16)}
    texts = []

    def put(row, col, image, color, label):
        top = head_h + row * (cell_h + text_h)
        left = col * (cell_w + gap_x) + (gap_x if col else 0)
        canvas[top : top + cell_h, left : left + cell_w] = color
        big = np.kron(rgb(image), np.ones((zoom, zoom, 1), "float32"))
        canvas[top + border : top + border + ch, left + border : left + border + cw] = big
        texts.append((left + cell_w / 2, top + cell_h + 3, label, col == 0))
        return left

    for i in range(n):
        put(i, 0, queries[i], colors["query"], f"query: {name(int(query_labels[i]))}")
        for j in range(k):
            label = name(int(neighbor_labels[i, j]))
            if scores is not None:
                label += f"\n{float(scores[i, j]):.3f}"
            same = bool(neighbor_labels[i, j] == query_labels[i])
            left = put(i, j + 1, neighbors[i, j], colors[same], label)
            if i == 0:
                texts.append((left + cell_w / 2, head_h - 3, f"#{j + 1}", None))

    px = 1.25 * 110 / cell_w  # about 1.25 inches per cell at 110 dpi
    title_h = 0.35 if title else 0.05
    fig = plt.figure(figsize=(width * px / 110, height * px / 110 + title_h), dpi=110)
    ax = fig.add_axes([0, 0, 1, 1 - title_h / (height * px / 110 + title_h)])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for x, y, label, is_query in texts:
        ax.text(x, y, label, ha="center", va="bottom" if is_query is None else "top",
                fontsize=7, fontweight="bold" if is_query else "normal")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / (height * px / 110 + title_h))
    save_figure(fig, path)

"""PNG plots of a run: the 2-D feature map (paper Fig. 3 style) and the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    extra = [np.asarray(centers, "float32")] if centers is not None else []
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
        fig.savefig(path)
        plt.close(fig)


def plot_history(history: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> None:
    """Loss parts (left) and accuracy-like metrics (right) per epoch."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    epochs = None
    for name, values in history.items():
        epochs = np.arange(1, len(values) + 1)
        target = left if "loss" in name else right
        style = "--" if name.startswith("val_") else "-"
        target.plot(epochs, values, style, label=name)
    left.set(title="loss", xlabel="epoch")
    right.set(title="metrics", xlabel="epoch")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    queries, neighbors = np.asarray(queries), np.asarray(neighbors)
    query_labels = np.asarray(query_labels).reshape(-1)
    neighbor_labels = np.asarray(neighbor_labels)
    n, k = neighbor_labels.shape
    name = lambda c: (  # noqa: E731
        class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
    )
    cell = 1.35
    fig, axes = plt.subplots(
        n, k + 1, figsize=(cell * (k + 1), cell * n + 0.5), dpi=110, squeeze=False
    )

    def show(ax, image, frame, text, bold=False):
        image = np.asarray(image, "float32")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False,
                               edgecolor=frame, linewidth=4, clip_on=False))  # fmt: skip
        ax.set_xlabel(text, fontsize=7, fontweight="bold" if bold else "normal", labelpad=2)

    for i in range(n):
        show(axes[i, 0], queries[i], "#1f5fbf", f"query: {name(int(query_labels[i]))}", bold=True)
        for j in range(k):
            right = neighbor_labels[i, j] == query_labels[i]
            text = name(int(neighbor_labels[i, j]))
            if scores is not None:
                text += f"\n{float(scores[i, j]):.3f}"
            show(axes[i, j + 1], neighbors[i, j], "#1a9c3c" if right else "#d62728", text)
    for j in range(1, k + 1):
        axes[0, j].set_title(f"#{j}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

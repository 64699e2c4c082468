"""Verification (1:1 "same class?") metrics from labelled embeddings.

Protocol: every pair of distinct samples is a trial, genuine if the two labels are equal,
impostor otherwise. With more than `max_pairs` pairs, genuine and impostor pairs are sampled
separately (uniformly, without replacement, seeded), half the budget each (one side takes the
other's unused share). ROC-based numbers do not depend on the genuine/impostor ratio, so this
sampling leaves them unbiased. A pair's score is its cosine similarity (`metric="cosine"`) or
its negative Euclidean distance (`metric="euclidean"`): higher means "same class"; a pair is
accepted when `score >= threshold`.

Reported: ROC AUC; EER (where the false accept rate equals the false reject rate, linearly
interpolated between ROC points) and its threshold; TAR at FAR = 1e-1, 1e-2, 1e-3 (the
largest true accept rate whose false accept rate is <= the target) and the threshold that
reaches it. A FAR target is reported only when there are at least 1/FAR impostor pairs (so at
least one impostor may be accepted); otherwise its TAR and threshold are NaN.
"""

from __future__ import annotations

import math
import os

import numpy as np

from clusterloss._validation import (
    as_embeddings,
    as_labels,
    check_metric,
    check_positive_int,
    check_range,
    normalize_rows,
)
from clusterloss.evaluation.keys import far_key

DEFAULT_FAR_TARGETS = (1e-1, 1e-2, 1e-3)


# ----------------------------------------------------------------------------- pairs


def _enumerate_pairs(labels: np.ndarray, genuine: bool) -> tuple[np.ndarray, np.ndarray]:
    """All genuine (or all impostor) pairs i < j."""
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    firsts, seconds = [], []
    for start, count in zip(starts, counts):
        members = order[start : start + count]
        if genuine:
            a, b = np.triu_indices(count, 1)
            firsts.append(members[a])
            seconds.append(members[b])
        else:
            others = order[start + count :]  # classes after this one: each pair once
            firsts.append(np.repeat(members, len(others)))
            seconds.append(np.tile(others, len(members)))
    i = np.concatenate(firsts) if firsts else np.empty(0, np.int64)
    j = np.concatenate(seconds) if seconds else np.empty(0, np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return lo.astype(np.int64), hi.astype(np.int64)


def _sample_pairs(labels: np.ndarray, count: int, genuine: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct genuine (or impostor) pairs drawn uniformly: pick the first sample
    with probability proportional to its number of partners, then a partner uniformly."""
    n = len(labels)
    order = np.argsort(labels, kind="stable")
    _, inverse, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_starts = np.concatenate([[0], np.cumsum(class_counts)[:-1]])
    rank_in_class = np.empty(n, np.int64)
    rank_in_class[order] = np.arange(n) - class_starts[inverse[order]]
    partners = (class_counts[inverse] - 1) if genuine else (n - class_counts[inverse])
    p = partners / partners.sum()
    keys = np.empty(0, np.int64)
    while len(keys) < count:
        draw = int((count - len(keys)) * 1.1) + 64
        i = rng.choice(n, size=draw, p=p)
        r = (rng.random(draw) * partners[i]).astype(np.int64)
        r = np.minimum(r, partners[i] - 1)
        c = inverse[i]
        if genuine:
            pos = class_starts[c] + r + (r >= rank_in_class[i])
        else:
            pos = np.where(r < class_starts[c], r, r + class_counts[c])
        j = order[pos]
        keys = np.unique(np.concatenate([keys, np.minimum(i, j) * n + np.maximum(i, j)]))
    keys = np.sort(rng.choice(keys, size=count, replace=False))
    return keys // n, keys % n


def make_pairs(labels, max_pairs: int | None = 1_000_000, seed: int = 0):
    """Genuine and impostor pairs of samples.

    Returns `(i, j, is_genuine)`: int64 arrays of sample positions with `i < j`, and a bool
    array. All pairs when there are at most `max_pairs` (or `max_pairs=None`); else at most
    `max_pairs` pairs sampled as described in the module docstring (seeded by `seed`).
    """
    y = as_labels(labels, "labels")
    n = len(y)
    if n < 2:
        raise ValueError(f"`labels` must have at least 2 samples to form pairs; got {n}.")
    if max_pairs is not None:
        max_pairs = check_positive_int(max_pairs, "max_pairs")
    total = n * (n - 1) // 2
    if max_pairs is None or total <= max_pairs:
        i, j = np.triu_indices(n, 1)
        i, j = i.astype(np.int64), j.astype(np.int64)
        return i, j, y[i] == y[j]
    _, counts = np.unique(y, return_counts=True)
    n_genuine_all = int(np.sum(counts * (counts - 1) // 2))
    n_impostor_all = total - n_genuine_all
    n_gen = min(n_genuine_all, max_pairs // 2)
    n_imp = min(n_impostor_all, max_pairs - n_gen)
    n_gen = min(n_genuine_all, max_pairs - n_imp)
    rng = np.random.default_rng(seed)
    parts = []
    for genuine, want, available in ((True, n_gen, n_genuine_all), (False, n_imp, n_impostor_all)):
        if want == 0:
            continue
        if want * 2 > available:  # most of them: enumerate, then choose
            a, b = _enumerate_pairs(y, genuine)
            keep = np.sort(rng.choice(len(a), size=want, replace=False))
            a, b = a[keep], b[keep]
        else:
            a, b = _sample_pairs(y, want, genuine, rng)
        parts.append((a, b))
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    return i, j, y[i] == y[j]


def pair_scores(embeddings, i, j, metric: str = "cosine", batch_size: int = 65536) -> np.ndarray:
    """Score of each pair `(i[t], j[t])`: cosine similarity or negative Euclidean distance
    (float64; higher = more alike). Computed in batches of pairs."""
    x = as_embeddings(embeddings, "embeddings")
    metric = check_metric(metric)
    i, j = np.asarray(i, np.int64).reshape(-1), np.asarray(j, np.int64).reshape(-1)
    if len(i) != len(j):
        raise ValueError(f"`i` and `j` must have the same length; got {len(i)} and {len(j)}.")
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= len(x)):
        raise ValueError(f"pair indices must be in [0, {len(x)}); got values outside.")
    if metric == "cosine":
        x = normalize_rows(x)
    scores = np.empty(len(i), np.float64)
    for start in range(0, len(i), batch_size):
        a = x[i[start : start + batch_size]].astype(np.float64)
        b = x[j[start : start + batch_size]].astype(np.float64)
        if metric == "cosine":
            scores[start : start + batch_size] = np.einsum("ij,ij->i", a, b)
        else:
            scores[start : start + batch_size] = -np.sqrt(np.einsum("ij,ij->i", a - b, a - b))
    return scores


def verification_scores(
    embeddings, labels, *, metric: str = "cosine", max_pairs: int | None = 1_000_000, seed: int = 0
):
    """`(scores, is_genuine)` of the pairs from `make_pairs`, scored by `pair_scores`."""
    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, "labels", length=len(x))
    i, j, is_genuine = make_pairs(y, max_pairs=max_pairs, seed=seed)
    return pair_scores(x, i, j, metric=metric), is_genuine


# ----------------------------------------------------------------------------- ROC numbers


def _check_scores(scores, is_genuine):
    s = np.asarray(scores, dtype=np.float64).reshape(-1) if np.ndim(scores) <= 1 else None
    if s is None:
        raise ValueError(f"`scores` must have shape (n_pairs,); got shape {np.shape(scores)}.")
    g = np.asarray(is_genuine)
    if g.ndim != 1:
        raise ValueError(f"`is_genuine` must have shape (n_pairs,); got shape {g.shape}.")
    if len(g) != len(s):
        raise ValueError(f"`scores` and `is_genuine` must have the same length; got {len(s)} and {len(g)}.")
    if g.dtype != bool:
        if not np.isin(g, (0, 1)).all():
            raise ValueError("`is_genuine` must be booleans (or 0/1).")
        g = g.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("`scores` must be finite; got NaN or inf values.")
    if g.all() or not g.any():
        raise ValueError(
            f"verification needs genuine and impostor pairs; got {int(g.sum())} genuine and {int((~g).sum())} impostor."
        )
    return s, g


def _check_fars(far_targets):
    fars = tuple(float(f) for f in far_targets)
    for f in fars:
        check_range(f, "far_targets", low=0.0, high=1.0, low_open=True)
    return fars


def impostor_threshold(impostor_scores, far: float) -> float:
    """The smallest threshold that at most a fraction `far` of `impostor_scores` reach
    (`score >= threshold`): just above the (floor(far * n) + 1)-th largest score; -inf if
    all may pass; NaN when there are fewer than 1/far scores."""
    far = _check_fars((far,))[0]
    impostor = np.sort(np.asarray(impostor_scores, dtype=np.float64).reshape(-1))[::-1]
    if not np.isfinite(impostor).all():
        raise ValueError("`impostor_scores` must be finite; got NaN or inf values.")
    n_imp = len(impostor)
    if n_imp * far < 1.0 - 1e-9:
        return float("nan")
    allowed = int(math.floor(n_imp * far + 1e-9))
    if allowed >= n_imp:
        return float("-inf")
    return float(np.nextafter(impostor[allowed], np.inf))


def threshold_at_far(scores, is_genuine, far: float) -> float:
    """The smallest threshold whose false accept rate (impostor scores >= threshold) is at
    most `far` (`impostor_threshold` of the impostor scores); -inf if every impostor may be
    accepted. NaN when there are fewer than 1/far impostors."""
    s, g = _check_scores(scores, is_genuine)
    return impostor_threshold(s[~g], far)


def roc_curve(scores, is_genuine, drop_intermediate: bool = False):
    """`(far, tar, thresholds)` at every distinct score (scikit-learn's `roc_curve`, by
    default with `drop_intermediate=False`): accepting `score >= thresholds[t]` gives FAR
    `far[t]` and TAR `tar[t]`; `thresholds[0]` is +inf (nothing accepted)."""
    from sklearn.metrics import roc_curve as sk_roc_curve  # noqa: PLC0415

    s, g = _check_scores(scores, is_genuine)
    far, tar, thresholds = sk_roc_curve(g, s, drop_intermediate=drop_intermediate)
    return far, tar, thresholds


def roc_metrics(scores, is_genuine, far_targets=DEFAULT_FAR_TARGETS) -> dict[str, float]:
    """ROC AUC, EER, and TAR at each FAR target, from pair scores (see the module docstring).

    Keys: `roc_auc`, `eer`, `eer_threshold` (the first ROC threshold, from the top, whose
    FAR >= FRR), `tar_at_far_<far>` and `threshold_at_far_<far>` (`<far>` as `far_key`
    writes it: `tar_at_far_1e-3` for 0.001), `num_genuine_pairs`, `num_impostor_pairs`.
    """
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    s, g = _check_scores(scores, is_genuine)
    fars = _check_fars(far_targets)
    far, tar, thresholds = roc_curve(s, g)
    frr = 1.0 - tar
    cross = int(np.argmax(frr <= far))  # first point where FRR <= FAR (exists: last is (1, 0))
    if cross == 0:
        eer = float(far[0])
    else:
        d0 = frr[cross - 1] - far[cross - 1]
        d1 = frr[cross] - far[cross]
        t = d0 / (d0 - d1)
        eer = float(far[cross - 1] + t * (far[cross] - far[cross - 1]))
    results = {
        "roc_auc": float(roc_auc_score(g, s)),
        "eer": eer,
        "eer_threshold": float(thresholds[cross]),
    }
    genuine = s[g]
    for target in fars:
        threshold = threshold_at_far(s, g, target)
        tar_value = float("nan") if math.isnan(threshold) else float(np.mean(genuine >= threshold))
        results[f"tar_at_far_{far_key(target)}"] = tar_value
        results[f"threshold_at_far_{far_key(target)}"] = threshold
    results["num_genuine_pairs"] = int(g.sum())
    results["num_impostor_pairs"] = int((~g).sum())
    return results


def verification_metrics(
    embeddings,
    labels,
    *,
    metric: str = "cosine",
    max_pairs: int | None = 1_000_000,
    seed: int = 0,
    far_targets=DEFAULT_FAR_TARGETS,
) -> dict[str, float]:
    """Verification metrics of labelled embeddings: `roc_metrics` on the pairs of
    `verification_scores` (all pairs, or a seeded sample of at most `max_pairs`)."""
    scores, is_genuine = verification_scores(embeddings, labels, metric=metric, max_pairs=max_pairs, seed=seed)
    return roc_metrics(scores, is_genuine, far_targets=far_targets)


# ----------------------------------------------------------------------------- plot


def save_roc_plot(path, curves, *, title: str = "Verification ROC", far_targets=DEFAULT_FAR_TARGETS, dpi: int = 120):
    """Save a ROC plot (TAR against FAR on a log axis) as a PNG at `path`.

    `curves` is `(scores, is_genuine)` or a dict `{name: (scores, is_genuine)}`. Uses
    matplotlib's Agg canvas directly (no pyplot, no global backend change). Returns `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    if isinstance(curves, tuple):
        curves = {"": curves}
    if not isinstance(curves, dict) or not curves:
        raise ValueError("`curves` must be (scores, is_genuine) or a non-empty dict of them.")
    fars = _check_fars(far_targets)
    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    smallest = 1.0
    for name, pair in curves.items():
        s, g = _check_scores(*pair)
        far, tar, _ = roc_curve(s, g, drop_intermediate=True)
        metrics = roc_metrics(s, g, far_targets=())
        floor = 1.0 / (~g).sum()
        smallest = min(smallest, floor)
        shown = far > 0
        x = np.concatenate([[floor / 2], far[shown]])  # the FAR = 0 part, drawn at the left edge
        y = np.concatenate([[tar[~shown].max()], tar[shown]])
        label = f"{name} " if name else ""
        axes.plot(x, y, label=f"{label}AUC {metrics['roc_auc']:.4f}, EER {metrics['eer']:.4f}")
    for target in fars:
        axes.axvline(target, color="0.7", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlim(max(smallest / 2, 1e-7), 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("False accept rate (FAR)")
    axes.set_ylabel("True accept rate (TAR)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png", dpi=dpi)
    return path

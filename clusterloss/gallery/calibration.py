"""The open-set threshold of a gallery, chosen on held-out probes (`calibrate`).

Protocol (open-set identification, NIST's FPIR/FNIR terms): each probe is a labelled
embedding that is *not* in the gallery.

- **Stranger trials** (false accepts). Every probe is searched as if its own person were not
  enrolled (leave-its-class-out): its score is the best score among gallery items of *other*
  classes. Probes of classes the gallery does not hold are real strangers, and count the
  same way. FAR(t) = the fraction of stranger trials that pass `t`.
- **Mated trials** (the accept rate of enrolled people). Every probe whose class the gallery
  holds is searched in the whole gallery. TAR(t) = the fraction of mated trials whose nearest
  item passes `t` *and* is of the probe's class ("accepted and named right"); recall(t) =
  the fraction that pass `t` whatever the name; precision(t) = passed mated trials / all
  passed trials (mated + stranger).

A score passes when it is `>= t` for cosine similarity and `<= t` for a Euclidean distance.
With `far`, the threshold is the strictest one that at most a fraction `far` of the stranger
trials pass (so `far` needs at least `1 / far` probes); with fewer probes, it is the one at the
smallest FAR the probes can estimate, `1 / n`, and `Calibration.note` says so in one line. With
`tar`, it is the strictest threshold whose TAR is at least `tar`. A threshold no score can
reach (a cosine above 1: the embeddings do not separate the classes at that FAR) or probes
whose scores are all equal (collapsed embeddings) is refused: `CalibrationError`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clusterloss._validation import as_embeddings, as_labels, check_range
from clusterloss.index import Index

DEFAULT_FAR = 0.01
# FAR targets shown in the trade-off table (those the probes can estimate), with the chosen one.
TABLE_FARS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
QUERY_BATCH = 1024  # probes searched at a time


class CalibrationError(ValueError):
    """No usable threshold: the message names the likely cause and what to change."""


@dataclass
class Calibration:
    """A chosen open-set threshold and the trade-off table it was chosen from.

    `threshold`: cosine similarity (accept `>=`) or Euclidean distance (accept `<=`).
    `far`, `tar`, `precision`, `recall`: measured at `threshold` on the probes (None for a
    threshold set by hand, and `tar` and the others without probes of enrolled classes).
    `target`: `{"far": x}` or `{"tar": x}` as asked. `note`: one line when the target could
    not be used as asked (too few probes), else None. `table`: rows of threshold, far, tar,
    precision, recall.
    """

    threshold: float
    metric: str
    far: float | None
    tar: float | None
    precision: float | None
    recall: float | None
    target: dict[str, float]
    num_strangers: int
    num_mated: int
    note: str | None = None
    table: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        return cls(**values)

    def accepts(self, score: float) -> bool:
        return score >= self.threshold if self.metric == "cosine" else score <= self.threshold

    def format_table(self) -> str:
        """The trade-off table as aligned text, the chosen row marked."""
        name = "cosine >=" if self.metric == "cosine" else "distance <="
        lines = [f"  {name:>12}  {'FAR':>7}  {'TAR':>7}  {'precision':>9}  {'recall':>7}"]
        for row in self.table:
            mark = "  <- chosen" if row["threshold"] == self.threshold else ""
            lines.append(
                f"  {row['threshold']:>12.6f}  {row['far']:>7.4f}  {_fmt(row['tar'])}  "
                f"{_fmt(row['precision'], 9)}  {_fmt(row['recall'])}{mark}"
            )
        return "\n".join(lines)

    def warning(self) -> str | None:
        """One line when the chosen point rejects most enrolled people, naming a row of the
        table that accepts at least 80 % of them."""
        if self.tar is None or self.far is None or self.tar >= 0.5:
            return None
        better = next((row for row in self.table if row["tar"] is not None and row["tar"] >= 0.8), None)
        hint = f"; --far {better['far']:.3g} accepts {better['tar']:.0%}" if better else ""
        return (
            f"at this threshold only {self.tar:.0%} of enrolled people are accepted: the features do not "
            f"separate strangers at FAR {self.far:.3g} (too few dimensions, or too little training){hint}"
        )

    def summary(self) -> str:
        """One line: the rule and what it measured."""
        rule = f"unknown {'below' if self.metric == 'cosine' else 'above'} {self.metric} {self.threshold:.6f}"
        if self.far is None:
            return f"{rule} (set by hand, not measured)"
        tar = "TAR n/a (no probe of an enrolled class)" if self.tar is None else f"TAR {self.tar:.3f}"
        return (
            f"{rule}: FAR {self.far:.3f} over {self.num_strangers} stranger trials, {tar} over "
            f"{self.num_mated} enrolled-class probes"
        )


def _fmt(value: float | None, width: int = 7) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.4f}"


@dataclass
class ProbeScores:
    """Per probe, as similarities (higher is more alike; -distance for euclidean):
    `stranger` (best item of another class), `mated` (nearest item, for probes of enrolled
    classes only) and whether that nearest item has the probe's class (`named_right`)."""

    stranger: np.ndarray
    mated: np.ndarray
    named_right: np.ndarray


def probe_scores(index: Index, embeddings, labels) -> ProbeScores:
    """Search the probes (`labels`: the gallery's label ids, -1 for a class it lacks)."""
    embeddings = as_embeddings(embeddings, "embeddings", dim=index.dim)
    labels = as_labels(labels, "labels", length=len(embeddings))
    gallery_labels = index.labels
    counts = np.bincount(gallery_labels[gallery_labels >= 0]) if len(gallery_labels) else np.zeros(1)
    depth = max(1, min(len(index), int(counts.max(initial=0)) + 1))  # one other class always found
    stranger = np.full(len(labels), np.nan)
    top_score = np.full(len(labels), np.nan)
    top_label = np.full(len(labels), -2, np.int64)
    for start in range(0, len(labels), QUERY_BATCH):
        stop = min(start + QUERY_BATCH, len(labels))
        scores, rows = index.search(embeddings[start:stop], depth)
        if index.metric == "euclidean":
            scores = -scores
        found = gallery_labels[np.maximum(rows, 0)]
        other = (found != labels[start:stop, None]) & (rows >= 0)
        first = np.argmax(other, axis=1)
        hit = other[np.arange(len(first)), first]
        stranger[start:stop][hit] = scores[np.arange(len(first)), first][hit]
        top_score[start:stop] = scores[:, 0]
        top_label[start:stop] = found[:, 0]
    enrolled = np.isin(labels, gallery_labels)
    return ProbeScores(stranger[np.isfinite(stranger)], top_score[enrolled], top_label[enrolled] == labels[enrolled])


def _rates(scores: ProbeScores, t: float) -> dict[str, Any]:
    """FAR, TAR, precision and recall of accepting similarities `>= t`."""
    strangers_in = int(np.count_nonzero(scores.stranger >= t))
    mated_in = scores.mated >= t
    m = len(scores.mated)
    passed = int(np.count_nonzero(mated_in))
    return {
        "far": strangers_in / len(scores.stranger),
        "tar": float(np.count_nonzero(mated_in & scores.named_right)) / m if m else None,
        "precision": passed / (passed + strangers_in) if m and passed + strangers_in else None,
        "recall": passed / m if m else None,
    }


def _threshold_at_far(stranger: np.ndarray, far: float) -> float:
    """The strictest similarity threshold that at most `far` of `stranger` pass: just above
    the (floor(far n) + 1)-th largest (float32 steps: the index's scores are float32)."""
    ordered = np.sort(stranger)[::-1]
    allowed = int(math.floor(len(ordered) * far + 1e-9))
    if allowed >= len(ordered):
        return float(np.nextafter(np.float32(ordered[-1]), np.float32(-np.inf)))
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


def _threshold_at_tar(scores: ProbeScores, tar: float) -> float:
    right = np.sort(scores.mated[scores.named_right])[::-1]
    needed = int(math.ceil(tar * len(scores.mated) - 1e-9))
    if not len(scores.mated) or needed > len(right):
        raise CalibrationError(
            f"TAR {tar:g} is out of reach: {len(right)} of {len(scores.mated)} probes of enrolled "
            "classes are named right at any threshold; ask for a lower --tar or use --far"
        )
    return float(right[max(needed, 1) - 1])


def calibrate_target(far: float | None, tar: float | None) -> tuple[float | None, float | None]:
    """`(far, tar)` checked: `tar` when given (then `far` is None), else `far`, each in (0, 1]."""
    if tar is not None:
        return None, float(check_range(tar, "tar", low=0.0, high=1.0, low_open=True))
    if far is None:
        raise ValueError("`far` or `tar` must be given; got neither.")
    return float(check_range(far, "far", low=0.0, high=1.0, low_open=True)), None


def calibrate(
    scores: ProbeScores, metric: str, *, far: float | None = DEFAULT_FAR, tar: float | None = None
) -> Calibration:
    """Choose the threshold (see the module docstring) from the probes' scores."""
    far, tar = calibrate_target(far, tar)
    n = len(scores.stranger)
    if n < 2:
        raise CalibrationError(
            f"calibration needs at least 2 probes with a class other than the nearest gallery items'; got {n}"
        )
    if np.ptp(scores.stranger) == 0 and (not len(scores.mated) or np.ptp(scores.mated) == 0):
        raise CalibrationError(
            f"every probe scores {scores.stranger[0]:.4f}: the embeddings have collapsed (all inputs "
            "map to the same point); retrain (lower learning rate, more epochs, another loss)"
        )
    note = None
    if tar is not None:
        t = _threshold_at_tar(scores, tar)
    else:
        estimable = max(far, 1.0 / n)
        if estimable > far:
            note = (
                f"FAR {far:g} needs >= {math.ceil(1 / far)} stranger trials, the probes give {n}: "
                f"threshold at the smallest FAR they estimate, 1/{n} = {1 / n:.3f}"
            )
        t = _threshold_at_far(scores.stranger, estimable)
    rows = []
    for target in sorted({*(f for f in TABLE_FARS if f * n >= 1 - 1e-9), *([] if tar else [max(far, 1 / n)])}):
        rows.append({"threshold": _threshold_at_far(scores.stranger, target), "far_target": target})
    if tar is not None:
        rows.append({"threshold": t, "far_target": None})
    table = []
    for row in sorted(rows, key=lambda r: -r["threshold"]):
        sim = row["threshold"]
        if table and table[-1]["threshold"] == _out(sim, metric):
            continue
        table.append({"threshold": _out(sim, metric), **_rates(scores, sim)})
    if metric == "cosine" and t > 1.0:  # only float rounding scores above 1
        reachable = [r for r in table if r["threshold"] <= 1.0]
        hint = (
            f"; the strictest reachable FAR is {reachable[0]['far']:.3f} (--far {reachable[0]['far']:.3g})"
            if reachable
            else ""
        )
        tied = int(np.count_nonzero(scores.stranger >= np.float32(1.0)))
        raise CalibrationError(
            f"no cosine threshold reaches FAR {far:g}: {tied} of {n} stranger trials score 1.0, as "
            f"close as any two embeddings can be (too few dimensions, e.g. 2-D features, or classes "
            f"the model does not separate){hint}"
        )
    rates = _rates(scores, t)
    return Calibration(
        threshold=_out(t, metric), metric=metric, far=rates["far"], tar=rates["tar"],
        precision=rates["precision"], recall=rates["recall"],
        target={"tar": float(tar)} if tar is not None else {"far": float(far)},
        num_strangers=n, num_mated=len(scores.mated), note=note, table=table,
    )  # fmt: skip


def _out(similarity: float, metric: str) -> float:
    """A similarity threshold as the metric's score (a distance for euclidean)."""
    return float(similarity) if metric == "cosine" else float(-similarity)

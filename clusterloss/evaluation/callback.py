"""`RetrievalEvaluation`: retrieval (and verification) metrics of a validation set, logged
every N epochs like Keras' own `val_*` metrics."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from clusterloss._validation import as_labels, check_positive_int
from clusterloss.evaluation.embed import embed
from clusterloss.evaluation.keys import far_key
from clusterloss.evaluation.retrieval import _select, retrieval_metrics
from clusterloss.evaluation.verification import roc_metrics, verification_scores

RECALL_AT = inspect.signature(retrieval_metrics).parameters["recall_at"].default


class RetrievalEvaluation(keras.callbacks.Callback):
    """At the end of every `every` epochs (and of the last one), embed a validation set
    and write its retrieval metrics into the epoch's `logs` as `val_precision_at_1`,
    `val_map_at_r`, ...: they show in the progress bar and in `History`, and
    `TensorBoard`, `ModelCheckpoint(monitor="val_map_at_r", mode="max")`, `EarlyStopping`
    and `ReduceLROnPlateau` see them. List this callback **before** those in `callbacks=`
    (Keras calls callbacks in order; the progress bar and `History` come last anyway).

    Example:
        model.fit(x, y, epochs=20, callbacks=[
            cl.RetrievalEvaluation(x_val, y_val, verification=True),
            keras.callbacks.ModelCheckpoint("best.keras", monitor="val_map_at_r",
                                            mode="max", save_best_only=True),
            keras.callbacks.EarlyStopping("val_map_at_r", mode="max", patience=3),
        ])

    Args:
        x, y: the validation inputs (an array, or `ImageFiles`: read in batches) and their
            integer labels.
        reference: None (default): each validation sample is a query against all the
            others (leave-one-out). Or `(x_ref, y_ref)`: a gallery the validation queries
            are searched in (embedded too, every time).
        every: evaluate every this many epochs (and at the last epoch); the keys are absent
            from the logs of the other epochs.
        include: retrieval keys (`clusterloss.evaluation.retrieval.METRIC_NAMES`).
        verification: also log `val_roc_auc`, `val_eer` and `val_tar_at_far_<f>` for each
            FAR in `far_targets`, over the validation pairs (at most `max_pairs`, sampled).
        metric: "cosine" or "euclidean".
        prefix: of the logged keys.
        batch_size: of the embedding passes.
        seed: of pair sampling and of k-means (for `nmi`/`ami`).

    A model whose embeddings are NaN or inf (training diverged) logs NaN for every key,
    so that the divergence (`keras.callbacks.TerminateOnNaN`, the loss) is what reports it.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        *,
        reference: tuple[Any, Any] | None = None,
        every: int = 1,
        include: Sequence[str] = ("precision_at_1", "map_at_r"),
        verification: bool = False,
        far_targets: Sequence[float] = (1e-2,),
        metric: str = "cosine",
        prefix: str = "val_",
        batch_size: int = 256,
        max_pairs: int = 200_000,
        seed: int = 0,
    ):
        super().__init__()
        if len(x) == 0:
            raise ValueError("`x` must hold at least one validation sample; got an empty set.")
        if reference is not None and len(reference[0]) == 0:
            raise ValueError("`reference` must hold at least one sample; got an empty set.")
        self.x = x
        self.y = as_labels(y, "y", length=len(x), length_name="x")
        if reference is not None:
            reference = (
                reference[0],
                as_labels(reference[1], "reference labels", length=len(reference[0]), length_name="reference"),
            )
        self.reference = reference
        self.every = check_positive_int(every, "every")
        self.include = tuple(_select(tuple(include), ()))
        self.verification = bool(verification)
        self.far_targets = tuple(far_targets)
        self.metric = metric
        self.prefix = prefix
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_pairs = check_positive_int(max_pairs, "max_pairs")
        self.seed = seed

    def _due(self, epoch: int) -> bool:
        last = self.params.get("epochs") if self.params else None
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 >= last)

    def evaluate(self) -> dict[str, float]:
        """The metrics now, without the prefix."""
        emb = embed(self.model, self.x, self.batch_size)
        if self.reference is None:
            ref, ref_labels = None, None
        else:
            ref, ref_labels = embed(self.model, self.reference[0], self.batch_size), self.reference[1]
        if not all(np.isfinite(e).all() for e in (emb, ref) if e is not None):
            return dict.fromkeys(self._keys(), float("nan"))
        found = retrieval_metrics(
            emb, self.y, ref, ref_labels, include=self.include, metric=self.metric, seed=self.seed
        )
        if self.verification:
            scores = verification_scores(emb, self.y, metric=self.metric, max_pairs=self.max_pairs, seed=self.seed)
            roc = roc_metrics(*scores, far_targets=self.far_targets)
            found["roc_auc"], found["eer"] = roc["roc_auc"], roc["eer"]
            for far in self.far_targets:
                found[f"tar_at_far_{far_key(far)}"] = roc[f"tar_at_far_{far_key(far)}"]
        return found

    def _keys(self) -> list[str]:
        """The keys `evaluate` returns."""
        keys = []
        for name in self.include:
            keys += [f"recall_at_{k}" for k in RECALL_AT] if name == "recall_at_k" else [name]
        if self.verification:
            keys += ["roc_auc", "eer"] + [f"tar_at_far_{far_key(far)}" for far in self.far_targets]
        return keys

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or not self._due(epoch):
            return
        for key, value in self.evaluate().items():
            logs[self.prefix + key] = value if math.isfinite(value) else float("nan")

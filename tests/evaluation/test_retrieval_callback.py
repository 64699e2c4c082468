"""`RetrievalEvaluation`: the logged values equal `retrieval_metrics` / `roc_metrics` of the
model's embeddings at that epoch; History, ModelCheckpoint and EarlyStopping see them; any
Keras model whose output is the embeddings works; TensorBoard event files of the run."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import BACKEND

import clusterloss as cl
from clusterloss.evaluation import retrieval_metrics, verification_metrics


def blobs(n=120, classes=4, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, dim)) + 2.5 * np.eye(classes, dim)[y]
    return x.astype("float32"), y


class Expected(keras.callbacks.Callback):
    """The metrics recomputed independently at each epoch end (after the callback under test)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.values = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        emb = self.model.embed(self.x) if hasattr(self.model, "embed") else self.model.predict(self.x, verbose=0)
        found = retrieval_metrics(emb, self.y, include=("precision_at_1", "map_at_r"))
        found.update(verification_metrics(emb, self.y, far_targets=(0.1,)))
        self.values.append(found)


def test_logs_reach_history_checkpoint_and_early_stopping(tmp_path):
    x, y = blobs()
    x_val, y_val = blobs(40, seed=1)
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    model = cl.ClusterModel(backbone, num_classes=4)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    expected = Expected(x_val, y_val)
    history = model.fit(x, y, epochs=3, batch_size=30, verbose=0, callbacks=[
        cl.RetrievalEvaluation(x_val, y_val, verification=True, far_targets=(0.1,)),
        expected,
        keras.callbacks.ModelCheckpoint(tmp_path / "best.keras", monitor="val_map_at_r",
                                        mode="max", save_best_only=True),
        keras.callbacks.EarlyStopping("val_map_at_r", mode="max", patience=5),
    ])  # fmt: skip
    logged = history.history
    for key in ("val_precision_at_1", "val_map_at_r", "val_roc_auc", "val_eer", "val_tar_at_far_1e-1"):
        assert len(logged[key]) == 3, key
    for epoch, found in enumerate(expected.values):
        assert logged["val_map_at_r"][epoch] == pytest.approx(found["map_at_r"], abs=1e-6)
        assert logged["val_precision_at_1"][epoch] == pytest.approx(found["precision_at_1"], abs=1e-6)
        assert logged["val_roc_auc"][epoch] == pytest.approx(found["roc_auc"], abs=1e-6)
        assert logged["val_tar_at_far_1e-1"][epoch] == pytest.approx(found["tar_at_far_1e-1"], abs=1e-6)
    best = keras.saving.load_model(tmp_path / "best.keras")
    best_epoch = int(np.argmax(logged["val_map_at_r"]))
    assert retrieval_metrics(best.embed(x_val), y_val, include=("map_at_r",))["map_at_r"] == pytest.approx(
        logged["val_map_at_r"][best_epoch], abs=1e-6
    )


def test_any_model_every_n_epochs_and_a_gallery():
    """A plain Sequential whose output is the embeddings; every=2 logs epochs 2, 4 and the
    last (5); a reference gallery instead of leave-one-out."""
    x, y = blobs()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile("adam", "mse")
    target = np.eye(4, dtype="float32")[y]
    history = model.fit(x, target, epochs=5, batch_size=40, verbose=0, callbacks=[
        cl.RetrievalEvaluation(x[:40], y[:40], reference=(x[40:], y[40:]), every=2,
                               include=("precision_at_1", "recall_at_k"), prefix="gallery_"),
    ])  # fmt: skip
    logged = history.history
    assert len(logged["loss"]) == 5 and len(logged["gallery_precision_at_1"]) == 3
    assert set(logged) >= {"gallery_recall_at_1", "gallery_recall_at_8"}
    emb = model.predict(x, verbose=0)
    now = retrieval_metrics(emb[:40], y[:40], emb[40:], y[40:], include=("precision_at_1",))
    assert logged["gallery_precision_at_1"][-1] == pytest.approx(now["precision_at_1"], abs=1e-6)
    with pytest.raises(ValueError, match=r"`include` must hold names from .*got unknown \['map@r'\]"):
        cl.RetrievalEvaluation(x, y, include=("map@r",))
    with pytest.raises(ValueError, match=r"`y` and `x` must have the same length; got 119 and 120"):
        cl.RetrievalEvaluation(x, y[:-1])


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="reads the event files with TensorFlow's own Event protocol buffer, loaded on the TensorFlow pass",
)
def test_tensorboard_event_files_parse(tmp_path):
    import tensorflow as tf

    from clusterloss.app.tensorboard import EpochScalars

    writer = EpochScalars(tmp_path)
    writer.on_epoch_end(0, {"loss": 1.5, "val_map_at_r": 0.25})
    writer.on_epoch_end(1, {"loss": 0.5, "val_map_at_r": 0.75})
    for part, tag, values in (("train", "epoch_loss", [1.5, 0.5]), ("validation", "epoch_map_at_r", [0.25, 0.75])):
        (path,) = (tmp_path / part).iterdir()
        events = list(tf.compat.v1.train.summary_iterator(str(path)))
        assert events[0].file_version == "brain.Event:2"
        found = [(e.step, v.simple_value) for e in events[1:] for v in e.summary.value if v.tag == tag]
        assert found == [(0, values[0]), (1, values[1])]

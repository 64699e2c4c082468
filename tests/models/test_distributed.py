"""Several devices: a Partial FC head sharded by class over a JAX `ModelParallel` mesh, center
loss under JAX `DataParallel` and TF `MirroredStrategy` (fake CPU devices, in a subprocess:
the device count is fixed when the backend starts), and M-per-class batches per replica."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import BACKEND

from clusterloss.sampling import MPerClassSampler

ROOT = Path(__file__).resolve().parents[2]

EQ4 = """
def eq4(c, f, labels, alpha=0.5):  # Eq. 4 of Wen et al., one class at a time
    c = c.copy()
    for j in np.unique(labels):
        m = f[labels == j]
        c[j] = c[j] - alpha * (len(m) * c[j] - m.sum(0)) / (1 + len(m))
    return c
"""

JAX_SCRIPT = (
    textwrap.dedent(
        """
    import keras, numpy as np
    import clusterloss as cl
    SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert len(keras.distribution.list_devices()) == 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    y = rng.integers(0, 32, 64)
    """
    )
    + EQ4
    + textwrap.dedent(
        """
    # 1. A Partial FC ArcFace, its (num_classes, dim) kernel sharded by class.
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"])
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*/arc_face/kernel"] = ("model", None)  # keys are full-matched regexes
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    keras.utils.set_random_seed(0)
    model = cl.ClusterModel(keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)]),
                            head=cl.ArcFace(num_classes=32, scale=16.0, sample_rate=0.5))
    model.compile("adam", SCE)
    loss = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
    kernel = model.head.kernel.value
    assert tuple(kernel.sharding.spec) == ("model", None), kernel.sharding
    assert sorted(s.data.shape for s in kernel.addressable_shards) == [(16, 8)] * 2
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0], loss
    out = model.predict(x, verbose=0)
    e, w = out["embeddings"], np.asarray(model.head.kernel.value)
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(out["logits"], 16.0 * cos, rtol=1e-4, atol=1e-4)

    # 2. Center loss under DataParallel: Eq. 4 on the global batch, centers replicated.
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    keras.utils.set_random_seed(0)
    model = cl.ClusterModel(keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)]),
                            num_classes=4, center_loss=cl.CenterLoss(weight=0.1, alpha=0.5))
    model.compile(keras.optimizers.SGD(0.0), SCE)
    model.build((None, 16))
    model.center_loss.centers.assign(rng.normal(size=(4, 8)).astype("float32"))
    before, features = np.asarray(model.center_loss.centers.value), model.embed(x)
    model.fit(x, y % 4, batch_size=64, epochs=1, verbose=0)
    shards = [np.asarray(s.data) for s in model.center_loss.centers.value.addressable_shards]
    assert len(shards) == 2 and np.array_equal(shards[0], shards[1])
    np.testing.assert_allclose(shards[0], eq4(before, features, y % 4), rtol=1e-5, atol=1e-5)
    print("OK")
    """
    )
)

TF_SCRIPT = (
    textwrap.dedent(
        """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, clusterloss as cl
    SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 0, 3, 3, 0, 1, 2, 2, 2, 0, 1, 1])
    """
    )
    + EQ4
    + textwrap.dedent(
        """
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for update in ("paper", "gradient"):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = cl.ClusterModel(keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)]),
                                    num_classes=4, center_loss=cl.CenterLoss(weight=0.1, update=update))
            model.compile(keras.optimizers.SGD(0.0 if update == "paper" else 0.1), SCE)
            model.build((None, 16))
            model.center_loss.centers.assign(rng.normal(size=(4, 8)).astype("float32"))
        before, features = model.center_loss.centers.numpy(), model.embed(x)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        replicas = [v.numpy() for v in model.center_loss.centers.value.values]
        assert len(replicas) == 2 and np.array_equal(replicas[0], replicas[1])
        if update == "paper":  # each replica applies Eq. 4 to its half; the mean is kept
            want = (eq4(before, features[:8], y[:8]) + eq4(before, features[8:], y[8:])) / 2
        else:  # SGD on the mean gradient over the global batch; class 3 only in replica 0
            grad = np.zeros_like(before)
            for i, j in enumerate(y):
                grad[j] -= (features[i] - before[j]) / len(y)
            want = before - 0.1 * grad
        np.testing.assert_allclose(replicas[0], want, rtol=1e-5, atol=1e-6)
    print("OK")
    """
    )
)


def _run(script: str, env: dict[str, str]) -> None:
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution: JAX backend (Keras 3.15.1)")
def test_jax_model_parallel_partial_fc_and_data_parallel_centers():
    _run(JAX_SCRIPT, {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_tf_mirrored_strategy_keeps_centers_equal_across_replicas():
    _run(TF_SCRIPT, {"KERAS_BACKEND": "tensorflow"})


def test_m_per_class_batches_give_every_replica_its_pairs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 400)
    x = np.arange(400, dtype="float32")[:, None]
    sampler = MPerClassSampler(x, y, m=2, batch_size=24, num_replicas=3, seed=0)
    seen = set()
    for step in range(len(sampler)):
        _, labels = sampler[step]
        for part in np.split(labels, 3):  # replica r gets the r-th contiguous slice
            classes, counts = np.unique(part, return_counts=True)
            assert len(classes) == 4 and np.all(counts == 2)
            seen.add(tuple(classes))
        assert len(np.unique(labels)) == 12  # the replicas' classes differ
    assert len(seen) > 10
    with pytest.raises(ValueError, match=r"multiple of `m` \* `num_replicas`"):
        MPerClassSampler(x, y, m=2, batch_size=20, num_replicas=3)
    with pytest.raises(ValueError, match=r"holds at least 2 classes"):
        MPerClassSampler(x, y, m=4, batch_size=8, num_replicas=2)

"""Pair/triplet losses on several devices, each in a subprocess (the devices must be set up before
the backend starts): JAX `DataParallel` on 4 fake CPU devices sees the global batch; TensorFlow's
`MirroredStrategy` on 2 logical CPUs mines inside each replica's part of the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import BACKEND

# A triplet miner, a pair miner, a loss without miner (each subprocess compiles every case).
CASES = """{
    "triplet+semihard": lambda: cl.TripletMarginLoss(0.1, miner=cl.TripletMarginMiner(0.2, "semihard")),
    "multi_similarity+miner": lambda: cl.MultiSimilarityLoss(miner=cl.MultiSimilarityMiner()),
    "supcon": cl.SupConLoss,
}"""

COMMON = f"""
import json
import keras
import numpy as np
import clusterloss as cl

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8)).astype("float32")
y = np.tile(np.arange(4), 8).astype("int32")  # 4 classes, every replica's part holds all
CASES = {CASES}


def model_for(make, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(keras.optimizers.SGD(0.5), loss=make())
    return model
"""


def _run(script: str, env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the JAX backend")
def test_data_parallel_losses_see_the_global_batch_on_four_jax_devices():
    script = (
        COMMON
        + """
import jax

out = {}
for name, make in CASES.items():
    runs = []
    for distribution in (None, keras.distribution.DataParallel(devices=jax.devices())):
        keras.distribution.set_distribution(distribution)
        model = model_for(make)
        value = model.evaluate(x, y, batch_size=32, verbose=0)
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        runs.append([value, np.asarray(model.layers[0].kernel).tolist()])
    keras.distribution.set_distribution(None)
    out[name] = runs
print(json.dumps({"devices": len(jax.devices()), "cases": out}))
"""
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = _run(script, env)
    assert result["devices"] == 4
    import numpy as np

    for name, ((one, kernel_one), (dp, kernel_dp)) in result["cases"].items():
        assert one > 0, name
        np.testing.assert_allclose(dp, one, rtol=1e-5, err_msg=name)  # the global-batch loss
        # One SGD step from the same weights: the same gradient.
        np.testing.assert_allclose(kernel_dp, kernel_one, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_mirrored_strategy_mines_within_each_replica_part_of_the_batch():
    script = (
        """
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
"""
        + COMMON
        + """
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {}
for name, make in CASES.items():
    with strategy.scope():
        mirrored = model_for(make).evaluate(x, y, batch_size=32, verbose=0)
    model = model_for(make)
    embeddings = model(x)
    halves = [float(make()(y[:16], embeddings[:16])), float(make()(y[16:], embeddings[16:]))]
    out[name] = [mirrored, float(make()(y, embeddings)), halves]


class MemoryModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(8)
        self.memory = cl.CrossBatchMemory(cl.ContrastiveLoss(), 8, 48)

    def call(self, x, training=False):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(self.memory(y_pred, y, training=training))


with strategy.scope():
    model = MemoryModel()
    model.compile("sgd")
model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
queues = [v.numpy().tolist() for v in
          strategy.experimental_local_results(model.memory.embedding_memory.value)]
filled = [int(v.numpy()) for v in strategy.experimental_local_results(model.memory.filled.value)]
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "cases": out,
                  "queues": queues, "filled": filled}))
"""
    )
    result = _run(script, {**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert result["replicas"] == 2
    import numpy as np

    for name, (mirrored, global_batch, halves) in result["cases"].items():
        # Each replica mines its own 16 samples; Keras averages the two replica losses.
        np.testing.assert_allclose(mirrored, np.mean(halves), rtol=1e-5, err_msg=name)
        assert abs(mirrored - global_batch) > 1e-4 * abs(global_batch), name
    # CrossBatchMemory's queue (aggregation="only_first_replica") stays equal on both replicas:
    # after 2 steps of 2 x 16 samples it holds 32 of 48 slots (each replica writes its 16, the
    # first replica's copy is kept).
    first, second = result["queues"]
    assert result["filled"] == [32, 32] and first == second and np.abs(first).sum() > 0

"""`clusterloss train --distribute`: the CLI on 4 fake JAX devices, 2 TensorFlow logical CPUs
and 2 JAX processes on localhost gives the one-device losses (each in a subprocess: the device
count is fixed when the backend starts); the batch shards that JAX's `DataParallel` gets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND

from clusterloss.app import devices
from clusterloss.app.cli.main import main
from clusterloss.data import Batches

ROOT = Path(__file__).resolve().parents[1]
# 200 training rows: batches of 64, 64, 64 and 8, each split evenly over 2 or 4 devices.
TINY = ["train", "--epochs", "2", "--train-limit", "200", "--test-limit", "100",
        "--embedding-dim", "4", "--verbose", "0", "--no-evaluate"]  # fmt: skip

# Runs the CLI twice in one interpreter: the run, then a batch the devices cannot share.
CLI = textwrap.dedent(
    """
    import sys
    {setup}
    from clusterloss.app.cli.main import main
    assert main(sys.argv[1:]) == 0
    try:
        main([*sys.argv[1:-2], "--out", sys.argv[-1] + "-odd", "--batch-size", "30"])
    except SystemExit as exit:
        assert exit.code == 2
    print("OK")
    """
)
TF_LOGICAL_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": BACKEND, **extra}


def _history(out: Path) -> tuple[list[float], dict]:
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["history"]["loss"], metrics["devices"]


def _one_device(tmp_path: Path, *flags: str) -> list[float]:
    out = tmp_path / "one"
    assert main([*TINY, *flags, "--distribute", "none", "--out", str(out)]) == 0
    loss, used = _history(out)
    assert used["distribute"] == "none" and len(used["devices"]) == 1
    return loss


def _distributed(tmp_path: Path, setup: str, env: dict[str, str], *flags: str):
    out = tmp_path / "many"
    result = subprocess.run([sys.executable, "-c", CLI.format(setup=setup), *TINY, *flags,
                             "--out", str(out)], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    odd = [line for line in result.stderr.splitlines() if "error:" in line]
    return (*_history(out), odd)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution: JAX backend (Keras 3.15)")
def test_jax_four_devices_give_the_one_device_losses(tmp_path):
    loss, used, odd = _distributed(
        tmp_path, "", _env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert used == {"distribute": "DataParallel", "devices": [f"cpu:{i}" for i in range(4)],
                    "processes": 1}  # fmt: skip
    np.testing.assert_allclose(loss, _one_device(tmp_path), rtol=1e-5)
    assert odd == ["clusterloss train: error: --batch-size: a batch of 30 is split over 4 devices "
                   "(DataParallel); it must be a multiple of 4: use --batch-size 28, or "
                   "--distribute none"]  # fmt: skip


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_tf_two_logical_cpus_give_the_one_device_losses(tmp_path):
    # softmax: the center loss's Eq. 4 step differs per replica (docs/distributed.md)
    loss, used, odd = _distributed(tmp_path, TF_LOGICAL_CPUS, _env(), "--loss", "softmax")
    assert used["distribute"] == "MirroredStrategy" and len(used["devices"]) == 2
    np.testing.assert_allclose(loss, _one_device(tmp_path, "--loss", "softmax"), rtol=1e-5)
    assert len(odd) == 1 and "a batch of 30 is split over 2 devices" in odd[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="JAX's distributed runtime")
def test_jax_two_processes_on_localhost_give_the_one_device_losses(tmp_path):
    out, port = tmp_path / "many", _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "clusterloss", *TINY, "--out", str(out)], cwd=ROOT,
        env=_env(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                 KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    want = _one_device(tmp_path)
    for run in (out, tmp_path / "many.process-1"):  # process 1 writes its own copy
        loss, used = _history(run)
        assert used == {"distribute": "DataParallel", "devices": ["cpu:0", "cpu:2048"],
                        "processes": 2}  # fmt: skip
        np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_shards_cut_batches_to_the_devices_and_slice_them_by_process():
    x, y = np.arange(22)[:, None], np.arange(22)
    data = Batches(x, y, batch_size=8)  # batches of 8, 8, 6
    parts = [devices._Shard(data, devices=4, process=p, processes=2) for p in range(2)]
    for p, part in enumerate(parts):
        assert len(part) == 3
        assert [part[i][1].tolist() for i in range(3)] == [
            list(range(8 * i + 4 * p, 8 * i + 4 * p + 4)) if i < 2 else list(range(16 + 2 * p, 18 + 2 * p))
            for i in range(3)]  # fmt: skip
        assert np.array_equal(part[0][0][:, 0], part[0][1])
    # a last batch of fewer rows than devices is left out
    assert len(devices._Shard(Batches(x[:19], y[:19], batch_size=8), 4, 0, 1)) == 2


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend's one-device note")
def test_torch_says_it_trains_on_one_device(monkeypatch, capsys):
    monkeypatch.setattr(devices, "local_devices", lambda: ["cuda:0", "cuda:1"])
    used = devices.plan("auto")
    assert used.names == ("cuda:0",) and used.how == "none"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training on cuda:0 alone of 2 devices" in err[0]

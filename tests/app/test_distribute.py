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
from helpers import BACKEND

from clusterloss.app import devices
from clusterloss.app.cli.main import main
from clusterloss.app.errors import RunError
from clusterloss.data import Batches

ROOT = Path(__file__).resolve().parents[2]
# 200 training rows: batches of 64, 64, 64 and 8, each split evenly over 2 or 4 devices.
RUN = ["train", "--epochs", "2", "--embedding-dim", "4", "--verbose", "0", "--no-evaluate"]
TINY = [*RUN, "--train-limit", "200", "--test-limit", "100"]

# Runs the CLI on each argument list of argv[1] (JSON) in one interpreter; prints the codes.
CLI = textwrap.dedent(
    """
    import json, sys
    {setup}
    from clusterloss.app.cli.main import main
    codes = []
    for argv in json.loads(sys.argv[1]):
        try:
            codes.append(main(argv))
        except SystemExit as exit:
            codes.append(exit.code)
    print("CODES", json.dumps(codes))
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


def _one_device(out: Path, argv: list[str]) -> list[float]:
    assert main([*argv, "--distribute", "none", "--out", str(out)]) == 0
    loss, used = _history(out)
    assert used["distribute"] == "none" and len(used["devices"]) == 1
    return loss


def _distributed(setup: str, env: dict[str, str], codes: list[int], *runs: list[str]) -> list[str]:
    """Runs the CLI with each argument list in one subprocess, which must exit with `codes`;
    the error lines."""
    result = subprocess.run([sys.executable, "-c", CLI.format(setup=setup), json.dumps(runs)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            check=False)  # fmt: skip
    assert f"CODES {json.dumps(codes)}" in result.stdout, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if "error:" in line]


def _many_classes(path: Path) -> Path:
    """An .npz of 64 classes x 10 vectors: enough classes for Partial FC."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(64), 10)
    x = rng.normal(size=(64, 8))[y] * 3 + rng.normal(size=(len(y), 8))
    np.savez(path, x=x.astype("float32"), y=y)
    return path


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution: JAX backend (Keras 3.15)")
def test_jax_four_devices_give_the_one_device_losses(tmp_path):
    many = tmp_path / "many"
    partial_fc = [*RUN, "--data", str(_many_classes(tmp_path / "classes.npz")), "--loss",
                  "arcface", "--sample-rate", "0.5", "--batch-size", "32", "--val-split", "0",
                  "--test-split", "0.2"]  # fmt: skip
    odd = _distributed(
        "",
        _env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        [0, 0, 2],
        [*TINY, "--out", str(many)],
        [*partial_fc, "--out", str(tmp_path / "many-fc")],
        [*TINY, "--batch-size", "31", "--out", str(tmp_path / "odd")],
    )
    loss, used = _history(many)
    four = [f"cpu:{i}" for i in range(4)]
    assert used == {"distribute": "DataParallel", "devices": four, "processes": 1}
    np.testing.assert_allclose(loss, _one_device(tmp_path / "one", TINY), rtol=1e-5)
    # Partial FC: the head's 64 kernel rows split over the devices, 16 each
    loss, used = _history(tmp_path / "many-fc")
    assert used["devices"] == four and len(used["sharded"]) == 1, used
    np.testing.assert_allclose(loss, _one_device(tmp_path / "one-fc", partial_fc), rtol=1e-5)
    assert odd == [
        (
            "clusterloss train: error: --batch-size: a batch of 31 is split over 4 "
            "devices (DataParallel); it must be a multiple of 4: use --batch-size 28, "
            "or --distribute none"
        )
    ]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_tf_two_logical_cpus_give_the_one_device_losses(tmp_path):
    # softmax: the center loss's Eq. 4 step differs per replica (docs/distributed.md)
    softmax = [*TINY, "--loss", "softmax"]
    odd = _distributed(
        TF_LOGICAL_CPUS,
        _env(),
        [0, 2, 2],
        [*softmax, "--out", str(tmp_path / "many")],
        [*softmax, "--batch-size", "31", "--out", str(tmp_path / "odd")],
        [*TINY, "--loss", "triplet", "--out", str(tmp_path / "pairs")],
    )
    loss, used = _history(tmp_path / "many")
    assert used["distribute"] == "MirroredStrategy" and len(used["devices"]) == 2
    np.testing.assert_allclose(loss, _one_device(tmp_path / "one", softmax), rtol=1e-5)
    assert len(odd) == 2 and "a batch of 31 is split over 2 devices" in odd[0]
    assert "pair losses would mine inside each replica's slice" in odd[1]


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
    want = _one_device(tmp_path / "one", TINY)
    for run in (out, tmp_path / "many.process-1"):  # process 1 writes its own copy
        loss, used = _history(run)
        assert used == {"distribute": "DataParallel", "devices": ["cpu:0", "cpu:2048"], "processes": 2}
        np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_shards_cut_batches_to_the_devices_and_slice_them_by_process():
    x, y = np.arange(22)[:, None], np.arange(22)
    data = Batches(x, y, batch_size=8)  # batches of 8, 8, 6
    parts = [devices._Shard(data, devices=4, process=p, processes=2) for p in range(2)]
    for p, part in enumerate(parts):
        assert len(part) == 3
        assert [part[i][1].tolist() for i in range(3)] == [
            list(range(8 * i + 4 * p, 8 * i + 4 * p + 4)) if i < 2 else list(range(16 + 2 * p, 18 + 2 * p))
            for i in range(3)
        ]
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


def test_refusals_name_the_flag_and_the_fix(monkeypatch):
    mirrored = devices.Devices(("/cpu:0", "/cpu:1"), "MirroredStrategy")
    mirrored.check(64, pairs=False, sample_rate=1.0)
    with pytest.raises(RunError, match=r"a batch of 63 is split over 2 devices .* use --batch-size 62"):
        mirrored.check(63, pairs=False, sample_rate=1.0)
    with pytest.raises(RunError, match=r"Partial FC \(--sample-rate\) would sample classes per replica"):
        mirrored.check(64, pairs=False, sample_rate=0.5)
    devices.Devices(("cpu:0", "cpu:1"), "DataParallel").check(64, pairs=True, sample_rate=0.5)
    if BACKEND != "jax":  # JAX would start its distributed runtime
        monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
        with pytest.raises(RunError, match=f"several processes need the JAX backend .*got {BACKEND}"):
            devices.initialize()

"""The command line end to end (in subprocesses, as a user runs it) and the data loaders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND

from clusterloss.data import load_dataset
from clusterloss.recipes import build_model

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args, env=None, check=True):
    """Run the CLI from a JAX environment, so `--backend` must switch on the other passes."""
    env = {**(env or os.environ), "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-m", "clusterloss", "--backend", BACKEND, *args],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def check_run_dir(out: Path, loss: str, dataset: str = "digits") -> dict:
    for name in ("model.keras", "metrics.json", "features.png", "history.png"):
        assert (out / name).is_file(), name
    for name in ("features.png", "history.png"):
        assert (out / name).read_bytes()[:8] == PNG
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and metrics["loss"] == loss
    assert metrics["backend"] == BACKEND
    assert metrics["epochs"] >= 1 and metrics["seed"] == 0
    assert 0.0 <= metrics["knn_accuracy"] <= 1.0
    assert metrics["intra_inter_ratio"] > 0 and metrics["train_seconds"] > 0
    return metrics


def test_train_tiny_digits_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--loss", "center", "--epochs", "3", "--verbose", "2", "--out", str(out))
    assert f"wrote {out}" in result.stdout
    metrics = check_run_dir(out, "center")
    assert metrics["embedding_dim"] == 2
    assert 0.3 < metrics["test_accuracy"] <= 1.0  # 3 epochs on digits is far above chance (0.1)
    assert set(metrics["history"]) >= {"loss", "classification_loss", "center_loss", "accuracy"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
        (["--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
        (["--known-classes", "a-b"], "expected class ids like '0-4'"),
    ],
)
def test_cli_rejects_unknown_names(args, message):
    result = cli("train", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_library_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"`dataset` must be one of \['digits', 'fashion-mnist', 'olivetti'\]; got 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"`loss` must be one of \[.*'softmax'.*\]; got 'hinge'"):
        build_model("hinge", None, 10)
    with pytest.raises(ValueError, match=r"`known_classes` must be at least 2 distinct ids in \[0, 10\)"):
        load_dataset("digits", known_classes=[0, 12])


def test_digits_known_classes_split():
    data = load_dataset("digits", known_classes=[5, 6, 7])
    assert data.num_classes == 3 and data.class_names == ["5", "6", "7"]
    assert set(np.unique(data.y_train)) == {0, 1, 2}
    assert set(np.unique(data.y_unknown)) == set(range(3, 10))
    assert data.x_train.shape[1:] == (8, 8, 1) and 0 <= data.x_train.min() and data.x_train.max() <= 1


def test_olivetti_open_set_split(data_env, monkeypatch):
    monkeypatch.setenv("SCIKIT_LEARN_DATA", data_env["SCIKIT_LEARN_DATA"])
    data = load_dataset("olivetti")
    assert data.num_classes == 30 and len(data.unknown_class_names) == 10
    assert len(data.x_train) == 210 and len(data.x_test) == 90 and len(data.x_unknown) == 100
    assert data.x_train.shape[1:] == (64, 64, 1)


def test_fashion_mnist_through_the_keras_loader(data_env, tmp_path):
    out = tmp_path / "fm"
    cli(
        "train", "--dataset", "fashion-mnist", "--loss", "softmax", "--epochs", "1",
        "--train-limit", "256", "--test-limit", "128", "--embedding-dim", "8",
        "--verbose", "0", "--no-evaluate", "--out", str(out), env=data_env,
    )  # fmt: skip
    metrics = check_run_dir(out, "softmax", "fashion-mnist")
    assert metrics["num_train"] == 256 and metrics["num_test"] == 128


def test_compare_tiny_budget_writes_tables_and_figures(tmp_path):
    out = tmp_path / "cmp"
    cli(
        "compare", "softmax", "center:center_weight=0.05", "--seeds", "0,1", "--epochs", "1",
        "--train-limit", "300", "--verbose", "0", "--no-evaluate", "--out", str(out),
    )  # fmt: skip
    table = (out / "results.md").read_text()
    assert "| softmax |" in table and "| center:center_weight=0.05 |" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("setting,seeds,test_accuracy,test_accuracy_std")
    assert len(rows) == 3 and rows[1].split(",")[1] == "2"
    for name in ("comparison.png", "features.png"):
        assert (out / name).read_bytes()[:8] == PNG
    run = json.loads((out / "runs" / "center_center_weight_0.05-s1" / "metrics.json").read_text())
    assert run["config"]["options"]["center_weight"] == 0.05 and run["seed"] == 1


def test_compare_rejects_bad_settings():
    from clusterloss.compare import parse_setting

    assert parse_setting("center:center_weight=0.1,center_update=gradient").options == (
        ("center_weight", 0.1),
        ("center_update", "gradient"),
    )
    with pytest.raises(ValueError, match=r"`loss` must be one of .*; got 'nope' in 'nope:x=1'"):
        parse_setting("nope:x=1")
    with pytest.raises(ValueError, match=r"expected NAME=VALUE after ':' in 'center:0.1'"):
        parse_setting("center:0.1")

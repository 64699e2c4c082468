"""The command line: one run end to end in a subprocess (as a user runs it, `--backend` after
the subcommand), the rest in this process through `main([...])`: every bad value is exit
status 2 and one line on stderr; the built-in data loaders; `compare`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import BACKEND, fails

from clusterloss.app.cli.main import main
from clusterloss.app.compare import parse_setting
from clusterloss.app.recipes import build_model
from clusterloss.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


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
    assert not list(out.glob(".tmp-*")) and not (out / ".lock").exists()
    return metrics


def test_train_tiny_digits_run_end_to_end(tmp_path):
    """A subprocess started on JAX: `--backend` after the subcommand re-runs it on this
    pass's backend."""
    out = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-m", "clusterloss", "train", "--loss", "center", "--epochs", "3",
         "--verbose", "2", "--out", str(out), "--backend", BACKEND],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    metrics = check_run_dir(out, "center")
    assert metrics["embedding_dim"] == 2 and metrics["config"]["options"]["center_weight"] == 0.1
    assert 0.3 < metrics["test_accuracy"] <= 1.0  # 3 epochs on digits is far above chance (0.1)
    assert set(metrics["history"]) >= {"loss", "classification_loss", "center_loss", "accuracy"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--epochs", "0"], "argument --epochs: must be >= 1; got 0"),
        (["train", "--batch-size", "0"], "argument --batch-size: must be >= 1; got 0"),
        (["train", "--embedding-dim", "-2"], "argument --embedding-dim: must be >= 1"),
        (["train", "--train-limit", "x"], "argument --train-limit: expected an integer; got 'x'"),
        (["train", "--learning-rate", "0"], "argument --learning-rate: must be > 0; got 0"),
        (["train", "--val-split", "1.5"], "argument --val-split: must be in [0, 1); got 1.5"),
        (["train", "--known-classes", "a-b"], "expected class ids like '0-4'"),
        (["train", "--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
        (["train", "--backbone", "vgg"], "argument --backbone: invalid choice: 'vgg'"),
        (["train", "--weights", "missing.weights.h5"], "'missing.weights.h5' does not exist"),
        (["train", "--weights", "imagenet"], "--weights imagenet needs a keras.applications"),
        (
            ["train", "--epochs", "2", "--freeze-backbone-epochs", "2"],
            "--freeze-backbone-epochs (2) must be less than --epochs (2)",
        ),
        (
            ["train", "--margin", "0.3"],
            "--margin does not apply to --loss center (its options: "
            "--center-weight, --center-alpha, --center-update, --center-lr)",
        ),
        (["train", "--loss", "arcface", "--margin", "x"], "--margin: margin must be a float; got 'x'"),
        (["train", "--loss", "arcface", "--margin", "3"], "--loss arcface: `margin` is in radians"),
        (["train", "--loss", "triplet", "--m-per-class", "1"], "--m-per-class: m_per_class must be >= 2"),
        (["train", "--center-update", "both"], "center_update must be one of paper, gradient"),
        (["train", "--overwrite", "--resume"], "--overwrite and --resume exclude each other"),
        (["--backend", "theano", "train"], "argument --backend: invalid choice: 'theano'"),
        (["train", "--backend", "theano"], "argument --backend: invalid choice: 'theano'"),
        (["search", "r", "-k", "0", "--images", "a.png"], "argument -k: must be >= 1; got 0"),
        (["search", "r"], "one of the arguments --images --npz --query/-q is required"),
        (["search", "r", "-q", "val:1"], "expected SET:INDICES"),
        (["search", "r", "-q", "test:a"], "expected indices like 0,5,7"),
        (["index", "build", "r", "--approximate", "lsh"], "invalid choice: 'lsh'"),
        (["index", "build", "r", "--far", "2"], "argument --far: must be in (0, 1]; got 2"),
        (["compare", "center:centr_weight=0.1"], "unknown option 'centr_weight' for loss center"),
        (["compare", "softmax", "--seeds", "x"], "argument --seeds: expected class ids"),
    ],
)
def test_bad_values_exit_2_with_one_line(capsys, args, message):
    assert message in fails(capsys, *args)


def test_bad_values_found_after_parsing(capsys, tmp_path):
    """Values that need the data or the run directory: still one line and status 2, and
    no directory is left behind by a refused command."""
    out = str(tmp_path / "r")
    assert "--known-classes must be at least 2 distinct ids in [0, 10)" in fails(
        capsys, "train", "--known-classes", "0-20", "--out", out
    )
    assert "mnist: no such file or folder (expected one of digits" in fails(
        capsys, "train", "--dataset", "mnist", "--out", out
    )
    assert "5 sampled classes is less than the batch size 64" in fails(
        capsys, "train", "--loss", "softmax", "--sample-rate", "0.5", "--out", out
    )
    assert not (tmp_path / "r").exists()
    for command in (["evaluate", out], ["index", "build", out], ["search", out, "-q", "test:0"]):
        line = fails(capsys, *command)
        assert f"{out}: no such run directory" in line or f"{out} holds no metrics.json" in line


def test_library_rejects_unknown_names():
    from clusterloss.data import DataError

    with pytest.raises(
        DataError, match=r"mnist: no such file or folder \(expected one of digits, fashion-mnist, olivetti"
    ):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"`loss` must be one of \[.*'softmax'.*\]; got 'hinge'"):
        build_model("hinge", None, 10, {})
    with pytest.raises(ValueError, match=r"`known_classes` must be at least 2 distinct ids in \[0, 10\)"):
        load_dataset("digits", known_classes=[0, 12])
    with pytest.raises(ValueError, match=r"`test_split` applies to a folder or an .npz file"):
        load_dataset("digits", test_split=0.2)


def test_digits_known_classes_and_validation_split():
    data = load_dataset("digits", known_classes=[5, 6, 7])
    assert data.num_classes == 3 and data.class_names == ["5", "6", "7"]
    assert set(np.unique(data.y_train)) == {0, 1, 2} and len(data.y_val) == 0
    assert set(np.unique(data.y_unknown)) == set(range(3, 10))
    assert data.x_train.shape[1:] == (8, 8, 1) and 0 <= data.x_train.min() and data.x_train.max() <= 1
    split = load_dataset("digits", val_split=0.2)
    assert len(split.y_train) + len(split.y_val) == len(load_dataset("digits").y_train)
    for c in range(10):  # about a fifth of every class, seeded
        n_val, n_train = np.sum(split.y_val == c), np.sum(split.y_train == c)
        assert abs(n_val - 0.2 * (n_val + n_train)) <= 1
    assert np.array_equal(split.x_val, load_dataset("digits", val_split=0.2).x_val)


def test_olivetti_open_set_split(data_env, monkeypatch):
    monkeypatch.setenv("SCIKIT_LEARN_DATA", data_env["SCIKIT_LEARN_DATA"])
    data = load_dataset("olivetti")
    assert data.num_classes == 30 and len(data.unknown_class_names) == 10
    assert len(data.x_train) == 210 and len(data.x_test) == 90 and len(data.x_unknown) == 100
    assert data.x_train.shape[1:] == (64, 64, 1)


def test_fashion_mnist_through_the_keras_loader(data_env, monkeypatch, tmp_path, capsys):
    # Keras reads KERAS_HOME once, at import: point its cache at the copy for this test.
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", data_env["KERAS_HOME"])
    out = tmp_path / "fm"
    assert main([
        "train", "--data", "fashion-mnist", "--loss", "softmax", "--epochs", "1",
        "--train-limit", "256", "--test-limit", "128", "--embedding-dim", "8",
        "--verbose", "0", "--no-evaluate", "--out", str(out),
    ]) == 0  # fmt: skip
    metrics = check_run_dir(out, "softmax", "fashion-mnist")
    assert metrics["num_train"] == 256 and metrics["num_test"] == 128


def test_compare_tiny_budget_writes_tables_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "softmax", "center:center_weight=0.05", "--seeds", "0,1", "--epochs", "1",
            "--train-limit", "300", "--verbose", "0", "--no-evaluate", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = (out / "results.md").read_text()
    assert "| softmax |" in table and "| center:center_weight=0.05 |" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("setting,seeds,test_accuracy,test_accuracy_std")
    assert len(rows) == 3 and rows[1].split(",")[1] == "2"
    for name in ("comparison.png", "features.png"):
        assert (out / name).read_bytes()[:8] == PNG
    run = json.loads((out / "runs" / "center_center_weight_0.05-s1" / "metrics.json").read_text())
    assert run["config"]["options"] == {
        "center_weight": 0.05,
        "center_alpha": 0.5,
        "center_update": "paper",
        "center_lr": 0.5,
    }
    assert run["seed"] == 1
    capsys.readouterr()
    assert "already holds a run" in fails(capsys, *args)  # no silent re-training over results
    assert main(args + ["--reuse"]) == 0


def test_compare_settings_are_typed():
    assert parse_setting("center:center_weight=0.1,center_update=gradient").options == (
        ("center_weight", 0.1),
        ("center_update", "gradient"),
    )
    assert parse_setting("sphereface:margin=2").options == (("margin", 2),)
    with pytest.raises(ValueError, match=r"`loss` must be one of .*; got 'nope'"):
        parse_setting("nope:x=1")
    with pytest.raises(ValueError, match=r"expected NAME=VALUE after ':' in 'center:0.1'"):
        parse_setting("center:0.1")
    with pytest.raises(ValueError, match=r"margin must be an int; got 2.5"):
        parse_setting("sphereface:margin=2.5")

"""Own-data runs under bad settings, bad files and kills: a run that could not be evaluated
is refused before training, a diverged run says so, a run killed during its evaluation is
finished by `evaluate`, a changed folder is refused, bad files and flags are one line, and a
resumed Partial FC run continues its class draws."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import BACKEND, ExplodeWeights, fails
from PIL import Image
from synthetic import make_image_folder

import clusterloss as cl
from clusterloss.app import runs
from clusterloss.app.cli.args import config_from_args, recipe_values
from clusterloss.app.cli.main import build_parser, main
from clusterloss.app.errors import RunError
from clusterloss.app.results import load_run
from clusterloss.app.runs import train

FAST = ["--epochs", "1", "--embedding-dim", "4", "--image-size", "8", "--verbose", "0"]
DIGITS = ["--epochs", "1", "--train-limit", "200", "--test-limit", "100", "--embedding-dim", "4", "--verbose", "0"]


def config(*argv: str):
    args = build_parser().parse_args(list(argv))
    return config_from_args(args, args.loss, args.seed, args.out, recipe_values(args))


class Stop(Exception):
    """Stands for a kill (the files on disk are those a kill leaves)."""


def killed(*args, **kwargs):
    raise Stop()


class StopAfter(keras.callbacks.Callback):
    """Stops training after epoch `epoch` (0-based), once its checkpoint is written."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Stop()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """photos: 3 classes x 10 images; pairs: 3 classes x 2; same: 3 x 10 identical files."""
    root = tmp_path_factory.mktemp("faults")
    make_image_folder(root / "photos", classes=3, per_class=10, size=8)
    make_image_folder(root / "pairs", classes=3, per_class=2, size=8)
    grey = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    for k in range(3):
        (root / "same" / f"c{k}").mkdir(parents=True)
        for i in range(10):
            grey.save(root / "same" / f"c{k}" / f"{i}.png")
    return root


@pytest.mark.parametrize("data, flags, message", [
    ("photos", ["--test-split", "0"], r"the test split holds 0 sample\(s\) \(none\); evaluating "
     r"needs 2 classes and 2 samples of one class in it: raise --test-split"),
    ("photos", ["--val-split", "0.99"], r"the test split holds 0 sample\(s\)"),
    ("pairs", [], r"the test split holds 0 sample\(s\) .* or add samples per class"),
    ("photos", ["--test-limit", "1"], r"the test split holds 1 sample\(s\) \(class_\d 1\); .*raise --test-limit"),
    ("photos", ["--test-limit", "2"], r"the test split holds 2 sample\(s\) \(class_\d 1, class_\d 1\)"),
    ("same", [], r"same: all 21 training files are byte for byte the same"),
    ("photos", ["--loss", "triplet"], r"--batch-size 64 makes pair-loss batches of 3 classes x 21 "
     r"samples, but class 'class_0' has only 7 training samples; use --batch-size 21 or less"),
    ("photos", ["--loss", "contrastive", "--val-split", "0.4", "--test-split", "0.5"],
     r"class 'class_0' has 1 training sample\(s\); a pair loss needs 2 per class"),
])  # fmt: skip
def test_a_run_that_could_not_be_evaluated_is_refused_before_training(folders, tmp_path, capsys, data, flags, message):
    """Found before training (before: a traceback after it, `model.keras` and `checkpoint/`
    left, and a directory that --resume, evaluate and train all refused)."""
    out = tmp_path / "run"
    err = fails(capsys, "train", "--data", str(folders / data), *FAST, *flags, "--out", str(out))
    assert err.startswith("clusterloss train: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_a_diverged_run_with_a_validation_split_says_so(folders, tmp_path, capsys):
    """The validation callback sees NaN embeddings and logs NaN (before: ``ValueError:
    `query` must be finite`` from inside it); the run ends with the divergence message.
    NaN in an .npz is named when it is read (on TensorFlow a NaN row could train to a
    finite loss and NaN validation metrics)."""
    run = config("train", "--data", str(folders / "photos"), *FAST, "--batch-size", "4", "--out", str(tmp_path / "r"))
    with pytest.raises(RunError, match=r"training diverged: the loss became nan at epoch 1, batch 3"):
        train(run, callbacks=[ExplodeWeights()])
    x = np.random.default_rng(0).normal(size=(30, 5)).astype("float32")
    x[4, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.repeat(np.arange(3), 10))
    err = fails(capsys, "train", "--data", str(tmp_path / "nan.npz"), *FAST, "--out", str(tmp_path / "n"))
    assert f"{tmp_path / 'nan.npz'}: 'x' holds NaN or inf in 1 row(s) (first: row 4)" in err


def test_an_empty_validation_set_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"`x` must hold at least one validation sample; got an empty set\."):
        cl.RetrievalEvaluation(np.zeros((0, 4)), np.zeros(0, int))
    with pytest.raises(ValueError, match=r"`reference` must hold at least one sample; got an empty set\."):
        cl.RetrievalEvaluation(np.zeros((3, 4)), np.arange(3), reference=(np.zeros((0, 4)), []))


def test_a_run_killed_during_its_evaluation_is_finished_by_evaluate(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    with monkeypatch.context() as patch:
        patch.setattr(runs, "evaluate_run", killed)
        with pytest.raises(Stop):
            main(["train", *DIGITS, "--out", out])
    finish = (
        f"{out} finished training but its evaluation did not end (stopped during it?); "
        f"`clusterloss evaluate {out}` finishes it"
    )
    assert finish in fails(capsys, "train", *DIGITS, "--out", out, "--resume")
    assert f"{finish}; or pass --overwrite" in fails(capsys, "train", *DIGITS, "--out", out)
    assert main(["evaluate", out, "--verbose", "0"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluate_seconds"] > 0 and 0 <= metrics["map_at_r"] <= 1
    assert "holds no checkpoint to resume" in fails(capsys, "train", *DIGITS, "--out", out, "--resume")


def test_a_changed_folder_is_refused_by_evaluate_and_resume(folders, tmp_path, capsys):
    """The run records its files and split (`files.json`); added, removed or changed files
    are named (before: the folder was silently split again, test images among training ones)."""
    photos = tmp_path / "photos"
    shutil.copytree(folders / "photos", photos)
    out = tmp_path / "run"
    argv = ["train", "--data", str(photos), *FAST, "--epochs", "2", "--batch-size", "8",
            "--no-evaluate", "--out", str(out)]  # fmt: skip
    with pytest.raises(Stop):
        train(config(*argv), callbacks=[StopAfter(0)])
    record = json.loads((out / "files.json").read_text())
    assert len(record["files"]) == 30 and record["files"]["class_0/img_000.png"][0] > 0
    assert sorted(sum(record["split"].values(), [])) == sorted(record["files"])
    extra = photos / "class_0" / "new.png"
    shutil.copy(photos / "class_1" / "img_000.png", extra)
    err = fails(capsys, *argv, "--resume")
    assert f"{photos} changed since {out} was trained (added class_0/new.png): its split would not be" in err
    extra.unlink()
    assert main([*argv, "--resume"]) == 0
    _, data, _ = load_run(out)
    assert [p.split("photos/")[1] for p in data.x_test.paths] == record["split"]["test"]
    (photos / "class_2" / "img_001.png").unlink()
    shutil.copy(photos / "class_1" / "img_000.png", photos / "class_2" / "img_000.png")
    err = fails(capsys, "evaluate", str(out))
    assert "(removed class_2/img_001.png; changed class_2/img_000.png)" in err


@pytest.mark.parametrize(
    "problem",
    [
        "truncated npz",
        "0-d npz",
        "object npz",
        "string npz",
        "out is a file",
        "damaged weights",
        "foreign weights",
        "imagenet offline",
        "backend not installed",
    ],
)
def test_bad_files_and_flags_are_one_line(tmp_path, capsys, monkeypatch, problem):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)).astype("float32"), np.repeat(np.arange(3), 10)
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=y)
    bad = tmp_path / "bad.npz"
    argv = ["train", "--data", str(bad), *FAST, "--no-evaluate", "--out", str(tmp_path / "run")]
    if problem == "truncated npz":
        bad.write_bytes(good.read_bytes()[:300])
        message = f"{bad}: not a readable .npz file (File is not a zip file)"
    elif problem == "0-d npz":
        np.savez(bad, x=np.float32(1), y=np.int64(1))
        message = f"{bad}: 'y' must be integer class ids of shape (n,); got int64 ()"
    elif problem == "object npz":
        np.savez(bad, x=x, y=y, class_names=np.array([b"a", "b", 3], dtype=object))
        message = f"{bad}: 'class_names' is an object array (Python objects, loaded only with pickle"
    elif problem == "string npz":
        np.savez(bad, x=x.astype(str), y=y)
        message = f"{bad}: 'x' must be numbers, (n, d) features or (n, h, w[, c]) images; got <U"
    elif problem == "out is a file":
        (tmp_path / "run").write_text("notes")
        argv[2] = str(good)
        message = f"--out {tmp_path / 'run'} is a file, not a run directory"
    elif problem in ("damaged weights", "foreign weights"):
        weights = tmp_path / "trunk.weights.h5"
        if problem == "damaged weights":
            weights.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
        else:
            keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(weights)
        argv[2:3] = [str(good), "--weights", str(weights)]
        message = f"--weights: cannot load '{weights}', not weights of this trunk: "
    elif problem == "imagenet offline":
        np.savez(bad, x=rng.integers(0, 256, (30, 32, 32, 3), np.uint8), y=y)
        argv += ["--backbone", "mobilenetv3small", "--image-size", "32", "--weights", "imagenet"]

        monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
        message = (
            "--weights: cannot load ImageNet weights (Keras downloads them once into "
            "~/.keras/models: offline?): URL fetch failure"
        )
    else:
        other = next(b for b in ("jax", "tensorflow", "torch") if b != BACKEND)
        monkeypatch.setattr("clusterloss.app.cli.main.installed_backends", lambda: [BACKEND])
        argv[2] = str(good)
        argv[1:1] = ["--backend", other]
        message = f"--backend {other}: {other} is not installed (installed: {BACKEND}); pip install {other}"
    assert message in fails(capsys, *argv)


def offline(*args, **kwargs):
    """Keras's download without a network (its bare `Exception`)."""
    raise Exception(
        "URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
        "[Errno -3] Temporary failure in name resolution"
    )


def test_a_resumed_partial_fc_run_continues_the_class_draws(tmp_path):
    """The head's SeedGenerator state is in the checkpoint (before: a resumed run drew the
    negative classes of epoch 1 again, and ended elsewhere than the uninterrupted run)."""
    argv = ["train", "--loss", "softmax", "--sample-rate", "0.5", "--batch-size", "4", "--epochs",
            "3", "--train-limit", "120", "--test-limit", "60", "--embedding-dim", "4",
            "--verbose", "0", "--no-evaluate"]  # fmt: skip
    resumed = config(*argv, "--out", str(tmp_path / "resumed"))
    with pytest.raises(Stop):
        train(resumed, callbacks=[StopAfter(1)])
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert len(state["seeds"]) == 1 and state["seeds"][0] != [0, 0]  # the head's, advanced
    a = train(resumed, resume=True)
    b = train(config(*argv, "--out", str(tmp_path / "whole")))
    for key, values in b["history"].items():
        np.testing.assert_allclose(a["history"][key], values, rtol=1e-6, atol=1e-6, err_msg=key)
    assert a["knn_accuracy"] == pytest.approx(b["knn_accuracy"], abs=1e-6)

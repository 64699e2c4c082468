"""The settings of a run resolved once into a frozen config (`resolve_config`), and the
evaluation's three pieces (`compute_metrics`, `write_figures`, `merge_metrics`)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from clusterloss.app import recipes
from clusterloss.app.cli.main import main
from clusterloss.app.config import ResolvedConfig, TrainConfig, resolve_config
from clusterloss.app.errors import RunError
from clusterloss.app.evaluate import compute_metrics, evaluate_run, merge_metrics, write_figures
from clusterloss.app.results import load_embeddings, load_run
from clusterloss.app.runs import train
from clusterloss.app.summaries import run_title


def test_the_config_is_frozen_and_resolved_once():
    given = TrainConfig(data="own.npz", optimizer="adamw", options={"center_weight": 0.2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.epochs = 3
    config = resolve_config(given)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0
    assert isinstance(config, ResolvedConfig) and resolve_config(config) is config
    # the center recipe's options (0.1 is the recipe's weight, CenterLoss keeps alpha 0.5),
    # the own-data learning rate 1e-3, AdamW's decay 0.004, the path made absolute
    assert config.options == {"center_weight": 0.2, "center_alpha": 0.5, "center_update": "paper", "center_lr": 0.5}
    assert (config.learning_rate, config.weight_decay) == (1e-3, 0.004)
    assert config.data == os.path.join(os.getcwd(), "own.npz") and given.data == "own.npz"
    assert resolve_config(TrainConfig()).learning_rate == 1e-2  # digits' own rate
    # a replaced value is resolved too: the triplet recipe's other options are filled
    triplet = dataclasses.replace(config, loss="triplet", options={"margin": 0.3})
    assert triplet.options == {"margin": 0.3, "type_of_triplets": "semihard", "m_per_class": 4}
    with pytest.raises(RunError, match=r"--warmup-epochs must be < --epochs \(2\); got 2\."):
        resolve_config(TrainConfig(epochs=2, warmup_epochs=2))
    with pytest.raises(RunError, match=r"unknown option 'margin' for loss center"):
        dataclasses.replace(config, options={"margin": 0.3})


@pytest.fixture
def counted(monkeypatch):
    """Counts of `Recipe.resolve` and of each recipe's `make` (the loss parts built)."""
    calls = {"resolve": 0, "make": 0}
    resolve = recipes.Recipe.resolve

    def counted_resolve(self, *args):
        calls["resolve"] += 1
        return resolve(self, *args)

    def counted_make(make):
        def wrapped(*args):
            calls["make"] += 1
            return make(*args)

        return wrapped

    monkeypatch.setattr(recipes.Recipe, "resolve", counted_resolve)
    for name, recipe in recipes.RECIPES.items():
        monkeypatch.setitem(recipes.RECIPES, name, dataclasses.replace(recipe, make=counted_make(recipe.make)))
    return calls


def test_train_compare_and_tune_leave_each_run_one_resolution(counted, monkeypatch, tmp_path):
    """`train` resolves a TrainConfig (a ResolvedConfig as it is); compare resolves every run
    before training any; tune resolves nothing itself: each trial's `train` does, once. (The
    command line's `train`, with the loss parts built once: the evaluation test below.)"""
    pytest.importorskip("optuna")
    from clusterloss.app import compare, runs, tune

    with monkeypatch.context() as patch:
        patch.setattr(runs, "_train", lambda config, *args: config)  # what `train` would train
        resolved = train(TrainConfig(out=str(tmp_path / "r")))
        assert isinstance(resolved, ResolvedConfig) and train(resolved) is resolved
    assert counted == {"resolve": 1, "make": 0}

    started = []
    monkeypatch.setattr(compare, "train", lambda config, overwrite: started.append(config) or {})
    monkeypatch.setattr(compare, "plot_feature_panels", lambda *args: None)
    settings = [compare.parse_setting("softmax"), compare.parse_setting("triplet:margin=0.3")]
    compare.run_comparison(settings, [0, 1], TrainConfig(learning_rate=0.05), tmp_path / "c")
    assert counted == {"resolve": 5, "make": 0} and len(started) == 4
    assert all(isinstance(c, ResolvedConfig) for c in started)
    assert [c.options.get("margin") for c in started] == [None, None, 0.3, 0.3]
    assert {c.learning_rate for c in started} == {0.05}

    trials = []
    history = {"history": {"val_map_at_r": [0.5]}}
    monkeypatch.setattr(tune, "train", lambda config, overwrite, callbacks: trials.append(config) or history)
    tune.tune(TrainConfig(epochs=1, train_limit=120, verbose=0), ["center"], tmp_path / "u", trials=1, folds=2)
    assert counted == {"resolve": 5, "make": 0} and len(trials) == 2
    assert not any(isinstance(c, ResolvedConfig) for c in trials)


def test_the_evaluation_pieces_make_evaluate_runs_metrics(counted, tmp_path):
    """compute_metrics + write_figures + merge_metrics on a tiny digits run (classes 7-9
    unseen) give what `evaluate_run` writes, byte for byte for the figures. The run's
    settings were resolved once, its loss parts built once."""
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    assert main(["train", "--loss", "softmax", "--known-classes", "0-6", "--train-limit", "300", "--test-limit",
                 "150", "--epochs", "1", "--embedding-dim", "4", "--verbose", "0", "--no-evaluate",
                 "--out", str(out)]) == 0  # fmt: skip
    assert counted == {"resolve": 1, "make": 1}
    _, data, trained = load_run(out)
    embeddings = load_embeddings(out)
    found, curves = compute_metrics(data, embeddings, seed=trained["seed"])
    evaluated = evaluate_run(out, report=False)  # recomputes the embeddings from the model

    pieces.mkdir()
    write_figures(pieces, data, embeddings, curves, run_title(trained), seed=trained["seed"])
    merged = merge_metrics(pieces, trained, {**found, "evaluate_seconds": evaluated["evaluate_seconds"]}, report=False)
    assert merged == evaluated == json.loads((out / "metrics.json").read_text())
    assert json.loads((pieces / "metrics.json").read_text()) == merged
    for name in ("roc.png", "neighbors.png", "neighbors_unseen.png"):
        assert (pieces / name).read_bytes() == (out / name).read_bytes(), name

    # an independent 1-NN by cosine: precision@1 of the test queries against the training set
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nearest = np.argmax(unit(embeddings["test"]) @ unit(embeddings["train"]).T, axis=1)
    assert merged["precision_at_1"] == pytest.approx(np.mean(data.y_train[nearest] == data.y_test), abs=1e-12)
    assert merged["verification_set"] == "unseen" and merged["num_unknown_classes"] == 3

    # the keys of an earlier evaluation that no longer apply go; the rest stay
    again = merge_metrics(pieces, {**merged, "unseen_map_at_r": 0.5}, {"map_at_r": 0.25}, report=False)
    assert again["map_at_r"] == 0.25 and "unseen_map_at_r" not in again and again["loss"] == "softmax"


def test_a_refused_setting_leaves_the_run_it_would_overwrite(tmp_path, capsys):
    """The loss's ranges are checked by building its parts, in `train`: before `--overwrite`
    deletes anything."""
    (tmp_path / "metrics.json").write_text("{}\n")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--loss", "arcface", "--margin", "3", "--overwrite", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--loss arcface: `margin` is in radians" in err
    assert (tmp_path / "metrics.json").read_text() == "{}\n"


def test_a_checkpoint_that_no_longer_resolves_is_compared_as_saved():
    """`--resume` compares an older checkpoint's settings with today's defaults filled in;
    settings that today's checks refuse (here warm-up as long as training) are compared as
    saved, so the resume names what differs instead of failing in the check."""
    from clusterloss.app.runs import _started_with

    older = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k != "patience"}
    filled = _started_with(older)
    assert filled["patience"] == TrainConfig().patience and filled["options"] == recipes.get_recipe(
        TrainConfig().loss
    ).resolve(TrainConfig().loss, {})
    refused = {**older, "warmup_epochs": older["epochs"]}
    assert _started_with(refused) is refused

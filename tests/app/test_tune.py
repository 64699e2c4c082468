"""`clusterloss tune`: search spaces declared in the recipes, class-disjoint folds that never
hold a test class, the pruning hook, and a tiny tuning (digits, 1 epoch) that is killed in
its second trial, resumes with the same command, and whose best trial `train` replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from helpers import BACKEND  # noqa: E402

from clusterloss.app.cli.main import main  # noqa: E402
from clusterloss.app.config import TrainConfig  # noqa: E402
from clusterloss.app.folds import class_folds  # noqa: E402
from clusterloss.app.recipes import RECIPES  # noqa: E402
from clusterloss.app.runs import train  # noqa: E402
from clusterloss.app.tune import Pruning, fold_score, parse_space, search_space, trial_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPACES = [(name, o) for name, r in RECIPES.items() for o in r.options if o.space]


@pytest.mark.parametrize("name,option", SPACES, ids=[f"{n}-{o.key}" for n, o in SPACES])
def test_every_declared_range_builds_the_loss(name, option):
    """Both ends of a range (every value of a choice) are accepted by the class itself."""
    recipe = RECIPES[name]
    ends = option.space if option.type is str else option.space[:2]
    for value in ends:
        recipe.make(5, recipe.resolve(name, {option.key: option.check(value)}))


def test_misspelt_search_key_is_an_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown search-space key 'scael' for arcface \(their options: .*scale"):
        search_space(["arcface"], {"scael": (1.0, 8.0)})
    with pytest.raises(ValueError, match="low < high"):
        search_space(["arcface"], {"scale": (8.0, 1.0)})
    with pytest.raises(ValueError, match="no search space"):
        search_space(["softmax"])
    assert parse_space("scale=2:32:log") == ("scale", (2.0, 32.0, "log"))
    assert parse_space("type-of-triplets=hard|all") == ("type_of_triplets", ("hard", "all"))
    space = search_space(["arcface", "triplet"], {"margin": (0.1, 0.3)})
    assert space["arcface"]["margin"].space == space["triplet"]["margin"].space == (0.1, 0.3)
    assert space["arcface"]["scale"].space == (4.0, 64.0, "log") and space["arcface"]["scale"].log

    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--loss", "arcface", "--space", "scael=1:8", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown search-space key 'scael'" in err and not (tmp_path / "t").exists()


def original_classes(data) -> dict[str, set[str]]:
    """The class names (digits: the digit itself) present in each part of `data`."""
    names = data.all_class_names
    return {
        part: {names[label] for label in getattr(data, f"y_{part}")} for part in ("train", "val", "test", "unknown")
    }


def test_folds_never_hold_a_test_class():
    base = TrainConfig(data="digits", known_classes=[0, 2, 3, 5, 7, 8], seed=3)
    training = {"0", "2", "3", "5", "7", "8"}
    folds = class_folds(base.known_classes, 3, base.seed)
    assert sorted(c for f in folds for c in f) == [0, 2, 3, 5, 7, 8]  # a partition
    assert all(len(f) == 2 for f in folds)
    for fold in folds:
        data = trial_config(base, "center", {}, fold, Path("unused")).load_data()
        parts = original_classes(data)
        assert set().union(*parts.values()) <= training  # never 1, 4, 6, 9
        assert parts["val"] == parts["unknown"] == {str(c) for c in fold}
        assert parts["train"] == parts["test"] == training - parts["val"]
        assert len(data.y_val) == np.isin(base.load_data().y_train, [base.known_classes.index(c) for c in fold]).sum()
    with pytest.raises(ValueError, match="among the training classes"):
        TrainConfig(data="digits", known_classes=[0, 1, 2, 3], val_classes=[3, 4]).load_data()
    with pytest.raises(ValueError, match="--folds 2 or fewer"):
        class_folds([0, 1, 2, 3, 4], 3, 0)


def study_with(values: list[float], steps: int = 3):
    """An in-memory study whose finished trials reported `value` at every step."""
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    )
    for value in values:
        trial = study.ask()
        for step in range(steps):
            trial.report(value, step)
        study.tell(trial, value)
    return study


def test_pruning_stops_a_poor_trial_early():
    study = study_with([0.6, 0.8])
    poor = Pruning(study.ask(), "val_map_at_r")
    poor.on_epoch_end(0, {"val_map_at_r": 0.1})  # step 0: within the warm-up
    with pytest.raises(optuna.TrialPruned, match="val_map_at_r 0.1000 at step 1"):
        poor.on_epoch_end(1, {"val_map_at_r": 0.1})
    good = Pruning(study.ask(), "val_map_at_r")
    for epoch in range(3):
        good.on_epoch_end(epoch, {"val_map_at_r": 0.75})  # above the median 0.7: goes on
    good.on_epoch_end(3, {"loss": 1.0})  # no evaluation this epoch: nothing reported
    # a second fold reports the running mean over folds, at steps after the first fold's
    trial = study_with([0.6, 0.8], steps=4).ask()
    Pruning(trial, "val_map_at_r", first_step=2, done=[1.0]).on_epoch_end(1, {"val_map_at_r": 0.5})
    assert trial.study.trials[-1].intermediate_values == {3: pytest.approx(0.75)}


TUNE = ["tune", "--loss", "center", "--trials", "3", "--epochs", "1", "--folds", "2", "--train-limit",
        "400", "--embedding-dim", "4", "--verbose", "0"]  # fmt: skip
KILLER = textwrap.dedent("""
    import os, signal, sys, keras
    import clusterloss.app.tune as tune
    from clusterloss.app.cli.main import main

    class Kill(keras.callbacks.Callback):  # in the first batch of trial 1 (the second trial)
        def on_train_batch_end(self, batch, logs=None):
            os.kill(os.getpid(), signal.SIGKILL)

    trained = tune.train

    def train(config, **kwargs):
        if config.out.endswith("t1-f0"):
            kwargs["callbacks"] = [*kwargs["callbacks"], Kill()]
        return trained(config, **kwargs)

    tune.train = train
    main(sys.argv[1:])
""")


@pytest.mark.slow
def test_killed_tuning_resumes_and_train_replays_the_best(tmp_path, capsys):
    out = str(tmp_path / "tune")
    env = {
        **os.environ,
        "KERAS_BACKEND": BACKEND,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run([sys.executable, "-c", KILLER, *TUNE, "--out", out], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    storage = f"sqlite:///{tmp_path / 'tune' / 'study.db'}"
    states = [t.state.name for t in optuna.load_study(study_name="center", storage=storage).trials]
    assert states[1] == "RUNNING" and len(states) == 2  # trial 1 was running when killed

    assert main([*TUNE, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "1 stopped trial(s) marked failed and redone" in printed
    trials = optuna.load_study(study_name="center", storage=storage).trials
    assert [t.state.name for t in trials][1] == "FAIL" and len(trials) == 4
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials[:1] + trials[2:])
    result = json.loads((tmp_path / "tune" / "tune.json").read_text())
    entry = result["losses"]["center"]
    assert entry["finished"] == 3 and [t["number"] for t in entry["trials"]] == [0, 1, 2, 3]
    assert entry["command"] in printed and entry["command"].startswith("clusterloss train --loss center")
    assert set(result["training_classes"]) == set(range(10)) and len(result["folds"]) == 2
    for name in ("trials.png", "params.png"):
        assert (tmp_path / "tune" / name).stat().st_size > 1000, name
    assert entry["command"].replace("'", "&#x27;") in (tmp_path / "tune" / "tune.html").read_text()

    assert main([*TUNE, "--out", out]) == 0  # done: nothing more is trained
    assert len(optuna.load_study(study_name="center", storage=storage).trials) == 4
    # more trials, but the time the finished ones took already exceeds --timeout: none starts
    assert main([*TUNE, "--out", out, "--trials", "9", "--timeout", "1"]) == 0
    assert len(optuna.load_study(study_name="center", storage=storage).trials) == 4
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*TUNE, "--out", out, "--embedding-dim", "8"])
    assert "started with other settings (embedding_dim differ)" in capsys.readouterr().err

    best = next(t for t in trials if t.number == entry["best_trial"])
    assert entry["best_value"] == best.value == pytest.approx(np.mean(best.user_attrs["fold_scores"]))
    base = TrainConfig(**{**result["config"], "options": {}})
    replay = train(trial_config(base, "center", best.params, result["folds"][0], tmp_path / "replay"))
    assert fold_score(replay, "val_map_at_r") == pytest.approx(best.user_attrs["fold_scores"][0], abs=1e-6)


def test_compare_takes_the_tuned_settings(tmp_path):
    from clusterloss.app.compare import parse_setting, tuned_settings
    from clusterloss.app.errors import RunError

    tuned = {
        "config": {"data": "digits", "known_classes": [0, 1, 2, 3, 4, 5]},
        "losses": {
            "arcface": {"best_options": {"scale": 6.385, "scale_rule": "adacos", "margin": 0.08706}},
            "triplet": {"best_options": {"margin": 0.1252, "type_of_triplets": "all"}},
        },
    }
    (tmp_path / "tune.json").write_text(json.dumps(tuned))
    settings = tuned_settings(tmp_path, "digits", [0, 1, 2, 3, 4, 5])
    assert settings == [
        parse_setting("arcface:scale=6.385,scale_rule=adacos,margin=0.08706"),
        parse_setting("triplet:margin=0.1252,type_of_triplets=all"),
    ]
    with pytest.raises(RunError, match=r"tuned with --known-classes \[0, 1, 2, 3, 4, 5\], not None"):
        tuned_settings(tmp_path, "digits", None)
    with pytest.raises(RunError, match="holds no tune.json"):
        tuned_settings(tmp_path / "nothing", "digits", None)


def test_a_setting_the_fold_refuses_scores_nothing_and_tuning_goes_on(tmp_path):
    """AdaCos's scale needs 3 classes: a fold training on 2 refuses it. The trial scores 0
    with the reason kept (was: the whole tuning stopped with the error)."""
    from clusterloss.app.tune import _objective

    base = TrainConfig(data="digits", known_classes=[0, 1, 2, 3], epochs=1, embedding_dim=4, train_limit=200,
                       verbose=0)  # fmt: skip
    space = search_space(["arcface"], {"scale_rule": ("adacos",)})["arcface"]
    study = optuna.create_study(direction="maximize")
    study.optimize(_objective(base, "arcface", space, [[0, 1], [2, 3]], "val_map_at_r", tmp_path), n_trials=2)
    assert [t.value for t in study.trials] == [0.0, 0.0]
    assert "needs num_classes >= 3" in study.trials[0].user_attrs["refused"]

"""`tune(...)`: each loss's options searched with Optuna (TPE sampler, median pruning) on
class-disjoint folds of the training classes (`clusterloss.app.folds`), never on the test
classes.

A trial trains one run per fold with `train()` (`TUNE_DIR/trials/LOSS/tN-fK/`), each holding
that fold's classes out of training and logging retrieval on them every epoch; the trial's
value is the mean over folds of the best epoch's metric, and every epoch reports the running
mean so that the pruner can stop a poor trial early. The studies live in Optuna's SQLite
storage `TUNE_DIR/study.db` (one study per loss): the same command resumes a killed tuning;
a trial left running by the killed process is marked failed and does not count. The result
is `tune.json` (best settings, the `clusterloss train` command line, every trial),
`trials.png`, `params.png` and `tune.html`.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna

from clusterloss.app.config import CLI_FIELDS, PRESENTATION, TrainConfig, recorded_data
from clusterloss.app.errors import RunError
from clusterloss.app.folds import DEFAULT_FOLDS, VALIDATION_METRICS, class_folds
from clusterloss.app.options import Option
from clusterloss.app.recipes import get_recipe
from clusterloss.app.report.plots import _pyplot, save_figure
from clusterloss.app.rundir import RunDir, write_text
from clusterloss.app.runs import MONITOR, DivergedError, SettingError, train

STUDY = "study.db"
RESULT = "tune.json"
SIGNIFICANT = 4  # digits of the tuned values in the command line, tune.json's best and compare
# Settings of a tuning that its resumption must repeat (besides the base config).
_FIXED = ("metric", "folds", "space")


def parse_space(text: str) -> tuple[str, tuple]:
    """`'margin=0.1:0.5'`, `'scale=4:64:log'` or `'type_of_triplets=hard|semihard'` ->
    (key, space); the values are checked against the option when applied."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not value:
        raise ValueError(f"expected KEY=LOW:HIGH[:log] or KEY=A|B; got {text!r}")
    if "|" in value:
        return key, tuple(value.split("|"))
    parts = value.split(":")
    try:
        bounds = tuple(float(p) for p in parts[:2])
    except ValueError:
        raise ValueError(f"expected KEY=LOW:HIGH[:log] or KEY=A|B; got {text!r}") from None
    if len(parts) not in (2, 3) or parts[2:] not in ([], ["log"]):
        raise ValueError(f"expected KEY=LOW:HIGH[:log] or KEY=A|B; got {text!r}")
    return key, bounds + tuple(parts[2:])


def search_space(losses: Sequence[str], overrides: Mapping[str, tuple] = {}) -> dict[str, dict[str, Option]]:
    """Each loss's searched options: those its recipe declares a `space` for, with the
    `overrides` (key -> space) applied to every loss that has the key. ValueError for a key
    that none of the losses has, a bad range, or a loss with nothing to search."""
    found: dict[str, dict[str, Option]] = {}
    options = {loss: {o.key: o for o in get_recipe(loss).options} for loss in losses}
    for key in overrides:
        if not any(key in mine for mine in options.values()):
            listed = ", ".join(sorted({k for mine in options.values() for k in mine}))
            raise ValueError(f"unknown search-space key {key!r} for {', '.join(losses)} (their options: {listed})")
    for loss, mine in options.items():
        space = {k: o for k, o in mine.items() if o.space}
        for key, bounds in overrides.items():
            if key in mine:
                converted = tuple(mine[key].parse(str(b)) for b in bounds if b != "log")
                space[key] = dataclasses.replace(mine[key], space=converted + tuple(b for b in bounds if b == "log"))
        if not space:
            raise ValueError(
                f"loss {loss} has no search space (no option declares one); give one with --space KEY=LOW:HIGH"
            )
        found[loss] = space
    return found


def suggest(trial: optuna.Trial, space: Mapping[str, Option]) -> dict[str, Any]:
    """One value per option of `space`, drawn by the trial's sampler."""
    values = {}
    for key, o in space.items():
        if o.type is str:
            values[key] = trial.suggest_categorical(key, list(o.space))
        elif o.type is int:
            values[key] = trial.suggest_int(key, int(o.space[0]), int(o.space[1]), log=o.log)
        else:
            values[key] = trial.suggest_float(key, float(o.space[0]), float(o.space[1]), log=o.log)
    return values


class Pruning(keras.callbacks.Callback):
    """Reports the running mean of the trial's folds (`done`: the finished folds' values,
    and this fold's `metric` now) at step `first_step + epoch`; raises `optuna.TrialPruned`
    when the trial's pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, first_step: int = 0, done: Sequence[float] = ()):
        super().__init__()
        self.trial, self.metric, self.first_step, self.done = trial, metric, first_step, list(done)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None:  # not evaluated this epoch (eval_every)
            return
        value = float(value) if math.isfinite(float(value)) else 0.0
        step = self.first_step + epoch
        self.trial.report(float(np.mean(self.done + [value])), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {step}")


def fold_score(metrics: Mapping[str, Any], metric: str) -> float:
    """The run's `metric` at its kept (best) epoch."""
    history = metrics["history"][metric]
    epoch = metrics.get("best_epoch") or len(history)
    return float(history[epoch - 1])


def trial_config(
    base: TrainConfig, loss: str, values: Mapping[str, Any], fold: Sequence[int], out: Path
) -> TrainConfig:
    """The run of one (trial, fold): `base` with the loss, its option values, the fold's
    classes held out for validation, no final evaluation."""
    return dataclasses.replace(base, loss=loss, options=dict(values), val_classes=list(fold),
                               val_split=None, evaluate=False, verbose=0, out=str(out))  # fmt: skip


def _objective(
    base: TrainConfig, loss: str, space: Mapping[str, Option], folds: list[list[int]], metric: str, out: Path
):
    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        scores: list[float] = []
        for i, fold in enumerate(folds):
            config = trial_config(base, loss, values, fold, out / "trials" / loss / f"t{trial.number}-f{i}")
            callback = Pruning(trial, metric, i * base.epochs, scores)
            try:
                metrics = train(config, overwrite=True, callbacks=[callback])
            except (DivergedError, SettingError) as error:  # a setting that does not train scores nothing
                trial.set_user_attr("diverged" if isinstance(error, DivergedError) else "refused", str(error))
                scores.append(0.0)
                continue
            scores.append(fold_score(metrics, metric))
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective


def _storage(out: Path) -> str:
    return f"sqlite:///{(out / STUDY).resolve()}"


def _settings(base: TrainConfig, losses, metric, folds, space) -> dict[str, Any]:
    config = {k: v for k, v in dataclasses.asdict(base).items() if k not in PRESENTATION + ("options",)}
    spaces = {loss: {k: list(o.space) for k, o in s.items()} for loss, s in space.items()}
    return {"config": config, "losses": list(losses), "metric": metric, "folds": folds, "space": spaces}


def _check_same(study: optuna.Study, settings: dict[str, Any], out: Path) -> None:
    """RunError when `out`'s study was started with other settings (else records them)."""
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
        return
    saved = {**saved, "losses": settings["losses"]}  # the losses may grow
    if json.loads(json.dumps(settings)) != saved:
        changed = [k for k in settings["config"] if settings["config"][k] != saved["config"].get(k)]
        changed += [k for k in _FIXED if json.loads(json.dumps(settings[k])) != saved[k]]
        raise RunError(
            f"{out} holds a tuning started with other settings ({', '.join(changed)} "
            "differ); resume it with the same command, or use another --out"
        )


def _fail_stale(study: optuna.Study) -> int:
    """Mark the trials a killed tuning left RUNNING as failed (they are redone); the count."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count: complete or pruned."""
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


def _seconds(study: optuna.Study) -> float:
    """The seconds the finished trials of `study` took (those of earlier runs included)."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished(study))


def tune(base: TrainConfig, losses: Sequence[str], out: str | Path, trials: int = 20,
         timeout: float | None = None, metric: str = MONITOR, folds: int = DEFAULT_FOLDS,
         space: Mapping[str, tuple] = {}) -> dict[str, Any]:  # fmt: skip
    """Tune each loss in `losses` for `trials` finished trials (or until its finished trials
    have taken `timeout` seconds, those of a stopped run included: no trial starts later),
    resuming what `out` holds; write and return `tune.json`'s contents.

    `base` sets everything else (data, training classes, epochs, seed: that of the folds,
    the sampler and every run); its `known_classes` are the training classes, split into
    `folds` class folds; the classes outside them (the test classes) are never loaded into
    a trial.
    """
    if metric not in VALIDATION_METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(VALIDATION_METRICS)}; got {metric!r}.")
    if trials < 1:
        raise ValueError(f"`trials` must be >= 1; got {trials}.")
    losses = list(dict.fromkeys(losses))
    base.check()  # each trial's settings are resolved by its `train`
    base = dataclasses.replace(base, data=recorded_data(base.data))
    spaces = search_space(losses, space)
    data = base.load_data()  # the training classes, once, to split them into folds
    class_folds_ = class_folds(base.training_classes(data), folds, base.seed)
    out = Path(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with RunDir(out).lock():
        settings = _settings(base, losses, metric, class_folds_, spaces)
        for loss in losses:
            study = optuna.create_study(
                study_name=loss,
                storage=_storage(out),
                direction="maximize",
                load_if_exists=True,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            )
            _check_same(study, {**settings, "space": {loss: settings["space"][loss]}}, out)
            stale = _fail_stale(study)
            # seeded by the trials so far: a resumed tuning does not redraw the first ones
            study.sampler = optuna.samplers.TPESampler(
                seed=base.seed + len(study.trials), n_startup_trials=max(2, min(10, trials // 3))
            )
            objective = _objective(base, loss, spaces[loss], class_folds_, metric, out)
            began = time.monotonic() - _seconds(study)  # a resumed tuning has the time left
            done = len(finished(study))
            print(
                f"[tune] {loss}: {done} of {trials} trials done"
                + (f", {stale} stopped trial(s) marked failed and redone" if stale else ""),
                flush=True,
            )
            while len(finished(study)) < trials and (timeout is None or time.monotonic() - began < timeout):
                study.optimize(objective, n_trials=1)
                last = study.get_trials(deepcopy=False)[-1]
                value = "pruned" if last.state == optuna.trial.TrialState.PRUNED else f"{last.value:.4f}"
                print(f"[tune] {loss} trial {last.number}: {metric} {value} {last.params}", flush=True)
        result = summarize(out, base, losses, metric, class_folds_)
        write_text(out / RESULT, json.dumps(result, indent=2) + "\n")
        plot_trials(result, out / "trials.png")
        plot_params(result, spaces, out / "params.png")
        write_report(result, out / "tune.html")
    return result


def rounded(value: Any) -> Any:
    """A float to SIGNIFICANT digits (others as they are)."""
    return float(f"{value:.{SIGNIFICANT}g}") if isinstance(value, float) else value


def _flag_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def train_command(config: TrainConfig) -> str:
    """`clusterloss train ...` with the flags of `config` that differ from the defaults."""
    default = TrainConfig()
    words = ["clusterloss", "train", "--loss", config.loss]
    for key, value in config.options.items():
        words += ["--" + key.replace("_", "-"), _flag_value(value)]
    for f in CLI_FIELDS:
        value = getattr(config, f.name)
        if f.name in PRESENTATION or value == getattr(default, f.name):
            continue
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        words += [flag] if isinstance(value, bool) else [flag, _flag_value(value)]
    return shlex.join(words)


def summarize(
    out: Path, base: TrainConfig, losses: Sequence[str], metric: str, folds: list[list[int]]
) -> dict[str, Any]:
    """`tune.json`: per loss, the best trial's settings and command, and every trial."""
    result: dict[str, Any] = {
        "metric": metric,
        "folds": folds,
        "training_classes": sorted(c for f in folds for c in f),
        "config": {k: v for k, v in dataclasses.asdict(base).items() if k not in ("options", "out")},
        "losses": {},
    }
    for loss in losses:
        study = optuna.load_study(study_name=loss, storage=_storage(out))
        rows = [{
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "fold_scores": t.user_attrs.get("fold_scores"),
            "last_reported": t.intermediate_values.get(max(t.intermediate_values, default=-1)),
            "diverged": t.user_attrs.get("diverged"),
            "seconds": t.duration.total_seconds() if t.duration else None,
        } for t in study.get_trials(deepcopy=False)]  # fmt: skip
        entry: dict[str, Any] = {"trials": rows, "finished": len(finished(study))}
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            best = max(complete, key=lambda t: t.value)
            options = {k: rounded(v) for k, v in best.params.items()}
            config = dataclasses.replace(base, loss=loss, options=options)
            entry.update(
                best_trial=best.number,
                best_value=best.value,
                best_params=best.params,
                best_options=options,
                command=train_command(config),
            )
        result["losses"][loss] = entry
    return result


def plot_trials(result: Mapping[str, Any], path: Path) -> None:
    """One panel per loss: each trial's value (pruned: its last report, as x) and the best
    so far."""
    plt = _pyplot()
    losses = list(result["losses"])
    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.4), dpi=100, squeeze=False)
    for ax, loss in zip(axes.flat, losses):
        rows = result["losses"][loss]["trials"]
        done = [r for r in rows if r["state"] == "COMPLETE"]
        pruned = [r for r in rows if r["state"] == "PRUNED" and r["last_reported"] is not None]
        ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", label="complete")
        ax.plot(
            [r["number"] for r in pruned],
            [r["last_reported"] for r in pruned],
            "x",
            color="C3",
            label="pruned (last report)",
        )
        if done:
            ax.step(
                [r["number"] for r in done],
                np.maximum.accumulate([r["value"] for r in done]),
                where="post",
                color="k",
                label="best so far",
            )
        ax.set_title(loss, fontsize=10)
        ax.set_xlabel("trial")
        ax.set_ylabel(result["metric"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_params(result: Mapping[str, Any], spaces: Mapping[str, Mapping[str, Option]], path: Path) -> None:
    """A row per loss, a panel per searched option: its value against the metric."""
    plt = _pyplot()
    losses = list(result["losses"])
    columns = max(len(spaces[loss]) for loss in losses)
    fig, axes = plt.subplots(len(losses), columns, figsize=(3.4 * columns, 3.0 * len(losses)), dpi=100, squeeze=False)
    for row, loss in zip(axes, losses):
        done = [r for r in result["losses"][loss]["trials"] if r["state"] == "COMPLETE"]
        for ax, (key, o) in zip(row, spaces[loss].items()):
            values = [r["params"][key] for r in done if key in r["params"]]
            metric = [r["value"] for r in done if key in r["params"]]
            ax.plot(values, metric, "o", alpha=0.8)
            if o.log:
                ax.set_xscale("log")
            ax.set_title(f"{loss}: {key}", fontsize=9)
            ax.set_ylabel(result["metric"], fontsize=8)
            ax.grid(alpha=0.3)
        for ax in row[len(spaces[loss]) :]:
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def write_report(result: Mapping[str, Any], path: Path) -> None:
    """`tune.html`: the best settings and command of each loss, and the two plots."""
    rows = []
    for loss, entry in result["losses"].items():
        best = entry.get("best_value")
        rows.append(
            f"<tr><td>{html.escape(loss)}</td><td>{entry['finished']}</td>"
            f"<td>{'—' if best is None else f'{best:.4f}'}</td>"
            f"<td><code>{html.escape(json.dumps(entry.get('best_options', {})))}</code></td>"
            f"<td><code>{html.escape(entry.get('command', ''))}</code></td></tr>"
        )
    folds = "; ".join(",".join(map(str, f)) for f in result["folds"])
    text = f"""<!doctype html><meta charset="utf-8"><title>clusterloss tune</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px}}
table{{border-collapse:collapse}}</style>
<h1>Tuning: {html.escape(result["config"]["data"])}, {html.escape(result["metric"])}</h1>
<p>Class-disjoint folds of the training classes (validation classes per fold): {html.escape(folds)}.
The test classes were never used.</p>
<table><tr><th>loss</th><th>trials</th><th>best {html.escape(result["metric"])} (mean over folds)</th>
<th>best settings</th><th>command</th></tr>{"".join(rows)}</table>
<h2>Trials</h2><img src="trials.png" alt="metric per trial">
<h2>Settings against the metric</h2><img src="params.png" alt="each option against the metric">
"""
    write_text(path, text)


def tuned_options(directory: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """`[(loss, best options), ...]` and the base config of the tuning in `directory`
    (`tune.json`); RunError when it is missing or a loss has no complete trial."""
    path = Path(directory) / RESULT
    if not path.is_file():
        raise RunError(f"{directory} holds no {RESULT} (run `clusterloss tune --out {directory}` first)")
    result = json.loads(path.read_text())
    empty = [loss for loss, entry in result["losses"].items() if "best_options" not in entry]
    if empty:
        raise RunError(f"{path}: no complete trial for {', '.join(empty)}; tune them further")
    return [(loss, entry["best_options"]) for loss, entry in result["losses"].items()], result["config"]

"""One training run: `train(config)` makes a run directory.

It holds `model.keras` (the best epoch's by validation MAP@R when there is a validation
split, else the last), `metrics.json` (the settings, the history and every number),
`embeddings.npz`, `features.png`, `history.png`; unless `evaluate=False`, also the
retrieval, verification and open-set metrics, `roc.png`, `neighbors.png` and `report.html`
(`clusterloss.app.evaluate`); with `tensorboard`, `logs/` (scalars and the projector).
While training, `checkpoint/` lets `train(..., resume=True)` continue a killed run.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from clusterloss.app.checkpoint import TrainingCheckpoint
from clusterloss.app.config import CLI_FIELDS, PRESENTATION, ResolvedConfig, TrainConfig, resolve_config
from clusterloss.app.devices import Devices, plan
from clusterloss.app.errors import RunError
from clusterloss.app.evaluate import evaluate_run, write_embedding_files
from clusterloss.app.projector import export_projector
from clusterloss.app.recipes import Recipe, build_model
from clusterloss.app.results import (
    check_data,
    check_split,
    read_metrics,
    record_data,
    summarize,
    write_metrics,
)
from clusterloss.app.rundir import CHECKPOINT, LOGS, RunDir, atomic_path
from clusterloss.app.tensorboard import EpochScalars
from clusterloss.app.training import (
    LearningRateLog,
    Patience,
    make_learning_rate,
    make_optimizer,
    precision,
    wrap_backbone,
)
from clusterloss.data import Batches, DataError, Dataset, ImageFiles
from clusterloss.evaluation import RetrievalEvaluation
from clusterloss.layers import ClassHead
from clusterloss.models import ClusterModel, make_backbone
from clusterloss.models.backbones import APPLICATIONS, TRUNK, settle_batch_norm
from clusterloss.optimizers import center_optimizer
from clusterloss.sampling import MPerClassSampler

# A run killed during its final evaluation: neither --resume (nothing left to train) nor a
# new `train` (it holds a run) continues it.
_UNEVALUATED = (
    "{0} finished training but its evaluation did not end (stopped during it?); `clusterloss evaluate {0}` finishes it"
)
# Said at the start of a run with a keras.applications trunk and no weights (docs/cli.md,
# "Backbones", has the measurement behind it).
RANDOM_TRUNK = (
    "warning: a randomly initialised {} trunk (--weights none) is made for "
    "ImageNet-sized data: on a few thousand images expect lower accuracy than with "
    "--weights imagenet (or a weights file) or --backbone cnn"
)
MONITOR = "val_map_at_r"  # the validation metric that picks the model kept


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs [begin, end) trained with the trunk frozen or not."""

    begin: int
    end: int
    frozen: bool


def _phases(config: ResolvedConfig) -> list[Phase]:
    frozen = min(config.freeze_backbone_epochs, config.epochs)
    phases = [Phase(0, frozen, True), Phase(frozen, config.epochs, False)]
    return [p for p in phases if p.end > p.begin]


def _as_flags(message: str) -> str:
    """`known_classes` in a library message -> --known-classes, for the command line."""
    names = {f.name for f in CLI_FIELDS}
    return re.sub(r"`(\w+)`", lambda m: "--" + m[1].replace("_", "-") if m[1] in names else m[0], message)


def _trunk(model: ClusterModel) -> keras.layers.Layer:
    """The layer named "trunk" inside the backbone (nested models searched)."""
    todo = [model.backbone]
    while todo:
        layer = todo.pop()
        if layer.name == TRUNK:
            return layer
        todo += getattr(layer, "layers", [])
    raise ValueError("the backbone has no layer named 'trunk' (make it with make_backbone).")


def _optimizer(config: ResolvedConfig, model: ClusterModel, base: keras.optimizers.Optimizer):
    """`base` for the model, or with trainable centers `center_optimizer(base, ...)`."""
    layer = model.center_loss
    if layer is not None and layer.update == "gradient":
        return center_optimizer(base, centers=config.options["center_lr"])
    return base


def _configure(
    model: ClusterModel, loss, config: ResolvedConfig, phase: Phase, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    """Freeze or unfreeze the trunk and compile with a new optimizer, built (so that a
    checkpoint's optimizer state can be loaded into it); returns the optimizer that holds
    the learning rate (its schedule continues from `phase.begin`)."""
    if config.freeze_backbone_epochs:
        _trunk(model).trainable = not phase.frozen
    rate = make_learning_rate(
        config.learning_rate, config.lr_schedule, config.epochs, config.warmup_epochs, steps_per_epoch, phase.begin
    )
    base = make_optimizer(config.optimizer, rate, config.weight_decay)
    model.compile(
        optimizer=_optimizer(config, model, base), loss=loss, metrics=["accuracy"] if model.head is not None else None
    )
    model.optimizer.build(model.trainable_variables)
    return base


def _sampler_shape(config: ResolvedConfig, data: Dataset) -> tuple[int, int]:
    """`(m, classes)` of the M-per-class batches: as many classes per batch as fit (at most
    all of them), each with `batch_size // classes` samples."""
    classes = max(2, min(config.batch_size // config.options["m_per_class"], data.num_classes))
    return config.batch_size // classes, classes


def _training_data(config: ResolvedConfig, data: Dataset, recipe: Recipe, epoch: int):
    """Batches for `fit` from `epoch` on: shuffled rows, or M-per-class batches for losses
    that need pairs; both drawn from (seed, epoch), so a resumed run sees the same ones.
    Image files are read on all cores, inside each batch (`ImageFiles`) and ahead of it
    (`ReadAhead`); never by Keras's `workers`, which read across the end of an epoch."""
    if not recipe.pairs:
        return Batches(data.x_train, data.y_train, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch)
    m, classes = _sampler_shape(config, data)
    return MPerClassSampler(data.x_train, data.y_train, m=m, batch_size=m * classes, seed=config.seed, epoch=epoch)


def _check_pair_batches(config: ResolvedConfig, data: Dataset) -> None:
    """RunError unless every class has the training samples an M-per-class batch takes."""
    m, classes = _sampler_shape(config, data)
    counts = np.bincount(data.y_train, minlength=data.num_classes)
    fewest = int(counts.min())
    if fewest >= m:
        return
    name = data.class_names[int(counts.argmin())]
    if fewest < 2:
        raise RunError(
            f"class {name!r} has {fewest} training sample(s); a pair loss needs 2 "
            "per class: use more samples per class, or lower --val-split / "
            "--test-split"
        )
    fix = f"--batch-size {fewest * classes} or less"
    if fewest < config.options["m_per_class"]:
        fix += f" and --m-per-class {fewest}"
    raise RunError(
        f"--batch-size {config.batch_size} makes pair-loss batches of {classes} classes x {m} "
        f"samples, but class {name!r} has only {fewest} training samples; use {fix}"
    )


def _identical(x: Any) -> bool:
    """Whether every sample of `x` is the same (files: byte for byte); stops at the first
    that differs."""
    if isinstance(x, ImageFiles):
        first = Path(x.paths[0]).read_bytes()
        return all(Path(p).read_bytes() == first for p in x.paths[1:])
    return all(np.array_equal(x[i], x[0]) for i in range(1, len(x)))


def _check_evaluable(config: ResolvedConfig, data: Dataset) -> None:
    """RunError, before anything is trained or written, when the run could not be
    evaluated: a test split without 2 classes and 2 samples of one class (no verification
    pairs, no retrieval), or training samples that are all the same."""
    counts = np.bincount(data.y_test, minlength=data.num_classes)
    if (counts > 0).sum() < 2 or counts.max() < 2:
        held = ", ".join(f"{data.class_names[c]} {counts[c]}" for c in np.flatnonzero(counts)[:4])
        hint = "raise --test-limit" if config.test_limit else "raise --test-split (or lower --val-split)"
        raise RunError(
            f"the test split holds {len(data.y_test)} sample(s) ({held or 'none'}); evaluating "
            "needs 2 classes and 2 samples of one class in it: "
            f"{hint}{'' if config.is_builtin else ', or add samples per class'}"
        )
    if _identical(data.x_train):
        what = "files are byte for byte" if isinstance(data.x_train, ImageFiles) else "samples are"
        raise RunError(
            f"{config.data}: all {len(data.y_train)} training {what} the same; nothing tells the classes apart"
        )


def _unevaluated(run_dir: RunDir) -> bool:
    """A run whose training finished and whose evaluation was asked for but did not end
    (killed during it): `metrics.json` without `evaluate_seconds`."""
    try:
        metrics = read_metrics(run_dir.path)
    except (RunError, ValueError):
        return False
    return bool(metrics.get("config", {}).get("evaluate")) and "evaluate_seconds" not in metrics


def _started_with(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint holds, with those added to clusterloss since it was written
    (fields, loss options) at their defaults: a run stopped by an older version resumes if
    it used nothing else. As saved where they no longer resolve."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return dataclasses.asdict(resolve_config(TrainConfig(**{k: v for k, v in saved.items() if k in names})))
    except (TypeError, ValueError, RunError):  # RunError: what `resolve_config` refuses today
        return saved


def _check_resume(config: ResolvedConfig, state: dict[str, Any] | None, run_dir: RunDir) -> None:
    if state is None and _unevaluated(run_dir):
        raise RunError(_UNEVALUATED.format(run_dir.path))
    if state is None:
        raise RunError(
            f"{run_dir.path} holds no checkpoint to resume (nothing was stopped there, "
            "or it finished); train without --resume"
        )
    saved, now = _started_with(state["config"]), dataclasses.asdict(config)
    changed = [k for k in now if k not in PRESENTATION and saved.get(k) != now[k]]
    if changed:
        diffs = ", ".join(f"{k} {saved.get(k)!r} (now {now[k]!r})" for k in changed[:3])
        raise RunError(
            f"--resume continues {run_dir.path} with the settings it started with; "
            f"these differ: {diffs}; run the same command with --resume"
        )


def train(
    config: TrainConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: Iterable[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train, evaluate and write the run directory; returns the contents of `metrics.json`.

    Args:
        config: the run's settings; resolved here (`resolve_config`) unless they are a
            `ResolvedConfig` already.
        overwrite: replace a run already in `config.run_dir()` (else a `RunError`).
        resume: continue the run stopped in `config.run_dir()` (same settings).
        callbacks: more Keras callbacks for `fit` (after the run's own).
    """
    config = resolve_config(config)
    run_dir = RunDir(config.run_dir())
    if config.backbone in APPLICATIONS and config.weights is None:
        print(RANDOM_TRUNK.format(config.backbone), file=sys.stderr)
    if resume:  # checked before taking the lock: a mistake leaves a stopped run as it is
        _check_resume(config, TrainingCheckpoint.read(run_dir / CHECKPOINT), run_dir)
        check_data(run_dir.path, config)
    elif not overwrite:
        if _unevaluated(run_dir):
            raise RunError(_UNEVALUATED.format(run_dir.path) + "; or pass --overwrite to replace it")
        run_dir.prepare()  # a run already there is refused before the data loads
    with run_dir.lock():
        with precision(config.mixed_precision):
            return _train(config, run_dir, overwrite, resume, list(callbacks))


def _check_controls(config: ResolvedConfig, data: Dataset) -> None:
    """ValueError for training controls this data cannot take."""
    if config.augment != "none" and len(data.input_shape) != 3:
        raise ValueError(
            f"`augment` {config.augment} needs images; {data.name} holds feature "
            f"vectors of shape {tuple(data.input_shape)}"
        )
    if config.patience and not len(data.y_val):
        raise ValueError(
            f"`patience` stops on validation MAP@R, and {data.name} has no validation split: set `val_split` (e.g. 0.1)"
        )


def _build(config: ResolvedConfig) -> tuple[ClusterModel, Any, Recipe, Dataset]:
    try:
        data = config.load_data()
        _check_evaluable(config, data)
        _check_controls(config, data)
        backbone = make_backbone(
            data.input_shape,
            config.embedding_dim,
            config.backbone_kind(data),
            weights=config.weights,
            feature=config.feature,
            batch_norm=config.batch_norm,
        )
        if config.augment != "none" or config.mixed_precision != "none":
            backbone = wrap_backbone(
                backbone, config.augment, config.seed, float32_output=config.mixed_precision != "none"
            )
        try:  # the loss's parts, built once: their classes check the options' ranges
            model, loss, recipe = build_model(config.loss, backbone, data.num_classes, config.options)
        except ValueError as error:
            raise SettingError(f"--loss {config.loss}: {error}") from None
        if isinstance(model.head, ClassHead):
            model.head.check_batch_size(config.batch_size)
        if recipe.pairs:
            m = config.options["m_per_class"]
            if config.batch_size < 2 * m:
                raise ValueError(
                    f"`batch_size` must hold 2 classes of `m_per_class` = {m} "
                    f"samples (>= {2 * m}); got {config.batch_size}."
                )
            _check_pair_batches(config, data)
        model.build((None, *data.input_shape))
    except ValueError as error:  # bad data (DataError), or settings that do not fit it
        raise (RunError if isinstance(error, DataError) else SettingError)(_as_flags(str(error))) from None
    return model, loss, recipe, data


class SettingError(RunError):
    """The loss's options do not fit this data (e.g. AdaCos's scale for 2 classes)."""


class DivergedError(RunError):
    """Training stopped at a non-finite loss (a setting that does not train)."""


class _Divergence(keras.callbacks.Callback):
    """Stops training at the first non-finite loss (as `TerminateOnNaN`) and remembers where."""

    def __init__(self):
        super().__init__()
        self.epoch, self.found = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.found = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True

    def check(self, config: ResolvedConfig) -> None:
        """RunError when training diverged (after `fit` stopped on it)."""
        if self.found:
            epoch, batch, loss = self.found
            raise DivergedError(
                f"training diverged: the loss became {loss} at epoch {epoch}, batch {batch}, "
                f"so nothing was evaluated; lower --learning-rate (was {config.learning_rate:g}) "
                f"or the loss's weights and run again with --overwrite"
            )


def _train(config: ResolvedConfig, run_dir: RunDir, overwrite: bool, resume: bool, callbacks: list) -> dict[str, Any]:
    state = TrainingCheckpoint.read(run_dir / CHECKPOINT) if resume else None
    keras.utils.set_random_seed(config.seed)
    sample_rate = config.options.get("sample_rate", 1.0)
    devices = plan(config.distribute, partial_fc=sample_rate < 1.0)
    with devices.scope():  # the variables are made for the devices
        model, loss, recipe, data = _build(config)
    devices.check(
        math.prod(_sampler_shape(config, data)) if recipe.pairs else config.batch_size, recipe.pairs, sample_rate
    )
    unfrozen = config.epochs - config.freeze_backbone_epochs  # the BatchNormalization settles in them
    settle_batch_norm(_trunk(model), len(_training_data(config, data, recipe, 0)) * unfrozen)
    run_dir.prepare(overwrite=overwrite, resume=resume)  # after the checks: a refused run leaves the old one
    if resume:
        check_split(run_dir.path, config, data)
    else:
        record_data(run_dir.path, config, data)
    has_val = len(data.y_val) > 0
    checkpoint = TrainingCheckpoint(
        run_dir / CHECKPOINT, dataclasses.asdict(config), MONITOR if has_val else None, "max", state
    )
    own: list[keras.callbacks.Callback] = devices.callbacks()
    if has_val:
        own.append(RetrievalEvaluation(data.x_val, data.y_val, every=config.eval_every, seed=config.seed))
    patience = Patience(MONITOR, config.patience, checkpoint.history, verbose=int(config.verbose != 0))
    if config.patience:
        own.append(patience)
    divergence, rates = _Divergence(), LearningRateLog()
    own += [rates, divergence, checkpoint]
    if config.tensorboard:
        own.append(EpochScalars(run_dir / LOGS))
    start, phases = checkpoint.epoch, _phases(config)
    saved = next((p for p in phases if p.begin < start <= p.end), None)  # the checkpoint's phase
    with devices.scope():
        for phase in phases:
            if phase.end <= start and phase is not saved:
                continue
            first = max(start, phase.begin)
            batches = _training_data(config, data, recipe, first)
            rates.optimizer = _configure(model, loss, config, phase, len(batches))
            if phase is saved:
                checkpoint.restore(model)
            if phase.end <= start:
                continue
            model.fit(devices.batches(batches), initial_epoch=first, epochs=phase.end, callbacks=own + callbacks,
                      verbose=config.verbose, shuffle=False)  # fmt: skip
            divergence.check(config)
            if patience.stopped:
                break
    train_seconds = checkpoint.seconds()  # with the parts before a resume
    best = checkpoint.state["best_weights"]
    if best:
        checkpoint.restore(model, best=True)
    return _write_run(config, run_dir, model, data, checkpoint, train_seconds, devices, patience.stopped)


def _write_run(config: ResolvedConfig, run_dir: RunDir, model: ClusterModel, data: Dataset,
               checkpoint: TrainingCheckpoint, train_seconds: float,
               devices: Devices, stopped: int | None) -> dict[str, Any]:  # fmt: skip
    out = run_dir.path
    with atomic_path(out / "model.keras") as temporary:
        model.save(temporary)
    stats, emb = summarize(model, data)
    state = checkpoint.state
    metrics = {
        "dataset": data.name,
        "loss": config.loss,
        "backend": keras.backend.backend(),
        "devices": devices.record(),
        "embedding_dim": config.embedding_dim,
        "epochs": config.epochs,
        "seed": config.seed,
        **stats,
        "train_seconds": round(train_seconds, 3),
        "num_classes": data.num_classes,
        "num_train": int(len(data.y_train)),
        "num_val": int(len(data.y_val)),
        "num_test": int(len(data.y_test)),
        "config": dataclasses.asdict(config),
        "resolved": config.resolved(data),
        "history": state["history"],
    }
    if config.patience:
        metrics["stopped_epoch"] = stopped  # None: it ran all epochs
    if state["best_epoch"] is not None:
        metrics["best_epoch"] = state["best_epoch"]
        metrics["best_" + MONITOR] = state["best"]
    write_embedding_files(out, data, emb, metrics)
    write_metrics(out, metrics)  # before the evaluation: a run killed during it is finished by `evaluate`
    if config.tensorboard:
        export_projector(out / LOGS / "projector", emb["test"], data.y_test, data.all_class_names,
                         images=data.x_test, paths=getattr(data.x_test, "paths", None),
                         seed=config.seed)  # fmt: skip
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    if config.evaluate:  # retrieval, verification, open set, roc.png, report.html
        metrics = evaluate_run(out, model, data, metrics, embeddings=emb, verbose=config.verbose)
    return metrics

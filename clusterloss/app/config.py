"""`TrainConfig`: every setting that decides a run, as given; `resolve_config` checks it and
fills what it leaves to a default, once, into a `ResolvedConfig` (stored in `metrics.json`
under `"config"`), which `train` and everything after it take. Each field's metadata (help,
parser, flag) is what the command line's flags are made from, so a default is written once,
here."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clusterloss.app.devices import DISTRIBUTE
from clusterloss.app.errors import RunError
from clusterloss.app.folds import hold_out_classes
from clusterloss.app.recipes import get_recipe
from clusterloss.app.training import AUGMENTATIONS, OPTIMIZERS, PRECISIONS, SCHEDULES, default_weight_decay
from clusterloss.data import DATASETS, Dataset, load_dataset
from clusterloss.data.datasets import DEFAULT_KNOWN, DEFAULT_TEST_SPLIT, DEFAULT_VAL_SPLIT
from clusterloss.models.backbones import APPLICATIONS, BACKBONES, FEATURES, default_image_size, resolve_kind

# Adam learning rates that train each built-in data set's default backbone well in a few
# epochs; own data gets DEFAULT_LEARNING_RATE.
LEARNING_RATES = {"digits": 1e-2, "fashion-mnist": 1e-3, "olivetti": 1e-3}
DEFAULT_LEARNING_RATE = 1e-3


# ----------------------------------------------------------------------------- value parsers


def _number(text: str, kind: type, low: float, low_open: bool = False, high: float | None = None):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}; got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    if value < low or (low_open and value == low) or (high is not None and value >= high):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        if high is not None:
            bound = f"in [{low:g}, {high:g})"
        raise argparse.ArgumentTypeError(f"must be {bound}; got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1)


def count(text: str) -> int:
    """An int >= 0."""
    return _number(text, int, 0)


def positive_float(text: str) -> float:
    return _number(text, float, 0.0, low_open=True)


def non_negative_float(text: str) -> float:
    return _number(text, float, 0.0)


def fraction(text: str) -> float:
    return _number(text, float, 0.0, high=1.0)


def rate(text: str) -> float:
    """A rate in (0, 1] (a FAR or TAR target)."""
    value = _number(text, float, float("-inf"))
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]; got {text}")
    return value


def class_ids(text: str) -> list[int]:
    """'0-4' or '0,2,5' or '0-4,7' -> a list of class ids."""
    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class ids like '0-4' or '0,2,5'; got {text!r}") from None
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"expected distinct ids >= 0; got {text!r}")
    return ids


def weights_source(text: str) -> str | None:
    """'none', 'imagenet' or an existing weights file."""
    if text == "none":
        return None
    if text != "imagenet" and not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"expected none, imagenet or a weights file; {text!r} does not exist")
    return text


def verbosity(text: str):
    """ "auto" stays; digits become Keras' 0/1/2."""
    if text not in ("auto", "0", "1", "2"):
        raise argparse.ArgumentTypeError(f"expected auto, 0, 1 or 2; got {text!r}")
    return text if text == "auto" else int(text)


def recorded_data(data: str) -> str:
    """`data` as a run records it: a built-in name as it is, own data as an absolute path
    (the run can be re-read from elsewhere)."""
    return data if data in DATASETS else os.path.abspath(data)


def arg(help: str, parse: Callable | None = None, *, flag: str | None = None,
        choices: tuple | None = None, metavar: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Field metadata: how the command line sets this field."""
    return {"help": help, "parse": parse, "flag": flag, "choices": choices, "metavar": metavar}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run (`clusterloss train` flags of the same names), as given:
    `options`, `learning_rate` and `weight_decay` may leave values to their defaults.
    Frozen: a changed setting is a new config (`dataclasses.replace`)."""

    data: str = field(
        default="digits",
        metadata=arg(
            f"a built-in data set ({', '.join(DATASETS)}), a folder with one sub-folder of images "
            "per class, or an .npz file with arrays x and y",
            metavar="DATA",
        ),
    )
    loss: str = "center"  # the recipe (clusterloss.app.recipes); its flag is made there
    options: dict[str, Any] = field(default_factory=dict)  # the recipe's option values
    embedding_dim: int = field(default=2, metadata=arg("embedding size", positive_int))
    epochs: int = field(default=30, metadata=arg("training epochs", positive_int))
    seed: int = field(default=0, metadata=arg("seed of the weights, splits and batches", count))
    batch_size: int = field(default=64, metadata=arg("samples per batch", positive_int))
    learning_rate: float | None = field(
        default=None,
        metadata=arg(
            "the learning rate (default, tuned for adam: "
            + ", ".join(f"{v:g} {k}" for k, v in LEARNING_RATES.items())
            + f", {DEFAULT_LEARNING_RATE:g} own data); the peak of --lr-schedule",
            positive_float,
        ),
    )
    optimizer: str = field(default="adam", metadata=arg("adam, adamw or sgd (momentum 0.9)", choices=OPTIMIZERS))
    weight_decay: float | None = field(
        default=None,
        metadata=arg(
            "decoupled weight decay, w -= learning rate x decay x w each step (default: "
            f"AdamW's {default_weight_decay('adamw'):g} for adamw, 0 = off for adam and sgd)",
            non_negative_float,
        ),
    )
    lr_schedule: str = field(
        default="constant",
        metadata=arg(
            "learning rate per step after the warm-up: constant, cosine (to 0 at the end) or step "
            "(x0.1 from half and from three quarters of the steps)",
            choices=SCHEDULES,
        ),
    )
    warmup_epochs: int = field(
        default=0, metadata=arg("raise the learning rate linearly over the first N epochs' steps", count, metavar="N")
    )
    patience: int = field(
        default=0,
        metadata=arg(
            "stop when validation MAP@R has not improved for N evaluations (0: off; needs --val-split)",
            count,
            metavar="N",
        ),
    )
    augment: str = field(
        default="none",
        metadata=arg(
            "random changes of each training image (keras.layers, seeded): flip, crop-flip, crop-flip-color",
            choices=AUGMENTATIONS,
        ),
    )
    mixed_precision: str = field(
        default="none",
        metadata=arg(
            "compute in float16 or bfloat16 (Keras's mixed_float16 / mixed_bfloat16 policy; "
            "variables and losses stay float32)",
            choices=PRECISIONS,
        ),
    )
    backbone: str = field(
        default="auto",
        metadata=arg(
            "the trunk: auto (mlp for vectors and images up to 16x16, else cnn), or a keras.applications network",
            choices=("auto", *BACKBONES),
        ),
    )
    weights: str | None = field(
        default=None,
        metadata=arg(
            "trunk weights: none, imagenet (keras.applications trunks; downloaded once by Keras) or a weights file",
            weights_source,
            metavar="none|imagenet|FILE",
        ),
    )
    freeze_backbone_epochs: int = field(
        default=0,
        metadata=arg(
            "train only the embedding layer (and head) for this many epochs, then everything "
            "(needs --weights: a random trunk is not frozen)",
            count,
            metavar="N",
        ),
    )
    feature: str = field(
        default="linear",
        metadata=arg(
            "activation of the embedding layer: linear (metric learning) or prelu (LeNets++, slope 0.25 at start)",
            choices=FEATURES,
        ),
    )
    batch_norm: bool = field(default=False, metadata=arg("BatchNormalization after the embedding layer"))
    image_size: int | None = field(
        default=None,
        metadata=arg(
            "side images of a folder are resized to (default: 224 for keras.applications trunks, else 64)", positive_int
        ),
    )
    val_split: float | None = field(
        default=None,
        metadata=arg(
            f"share of each class held out for validation (default {DEFAULT_VAL_SPLIT:g} for "
            "own data, 0 for built-in sets); retrieval on it is logged every epoch and the best "
            "model is kept",
            fraction,
        ),
    )
    test_split: float | None = field(
        default=None,
        metadata=arg(f"share of each class held out for testing, own data (default {DEFAULT_TEST_SPLIT:g})", fraction),
    )
    known_classes: list[int] | None = field(
        default=None,
        metadata=arg(
            "train on these class ids only, e.g. 0-4 (the rest are unseen at evaluation; "
            "olivetti defaults to people 0-29)",
            class_ids,
        ),
    )
    val_classes: list[int] | None = field(
        default=None,
        metadata=arg(
            "class-disjoint validation: hold these training class ids out of training and log "
            "retrieval on them every epoch, e.g. 7-9 (classes outside --known-classes are "
            "dropped; what `clusterloss tune` runs per fold; excludes --val-split)",
            class_ids,
        ),
    )
    train_limit: int | None = field(default=None, metadata=arg("use a random subset of the training set", positive_int))
    test_limit: int | None = field(default=None, metadata=arg("use a random subset of the test set", positive_int))
    eval_every: int = field(
        default=1, metadata=arg("validation retrieval every N epochs (and at the last)", positive_int, metavar="N")
    )
    distribute: str = field(
        default="auto",
        metadata=arg(
            "auto: train on every local device when there are several (JAX DataParallel, "
            "TensorFlow MirroredStrategy; --batch-size is the global batch), and on every process "
            "of KERAS_DISTRIBUTION_* (JAX); none: one device",
            choices=DISTRIBUTE,
        ),
    )
    tensorboard: bool = field(
        default=False, metadata=arg("write TensorBoard logs and the test embeddings for its projector to RUN_DIR/logs")
    )
    evaluate: bool = field(
        default=True,
        metadata=arg(
            "skip the evaluation after training (retrieval, verification, open set, plots, "
            "report.html); "
            "`clusterloss evaluate RUN_DIR` does it later",
            flag="--no-evaluate",
        ),
    )
    verbose: Any = field(
        default="auto",
        metadata=arg(
            "Keras progress: 1 (or auto) a bar, 2 one line per epoch, 0 silent", verbosity, choices=("auto", 0, 1, 2)
        ),
    )
    out: str = ""

    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{Path(self.data).stem}-{self.loss}-s{self.seed}")

    @property
    def is_builtin(self) -> bool:
        return self.data in DATASETS

    def load_data(self) -> Dataset:
        """The data set and split of this run (the same every time for the same config)."""
        kind = self.backbone if self.backbone != "auto" else "cnn"
        size = self.image_size or default_image_size(kind)
        if self.val_classes and self.val_split:
            raise ValueError(
                "`val_classes` and `val_split` exclude each other (validation on "
                "held-out classes or on held-out samples)."
            )
        data = load_dataset(
            self.data,
            seed=self.seed,
            known_classes=self.known_classes,
            train_limit=self.train_limit,
            test_limit=self.test_limit,
            val_split=0.0 if self.val_classes else self.val_split,
            test_split=self.test_split,
            image_size=size,
        )
        if not self.val_classes:
            return data
        return hold_out_classes(data, self.val_classes, self.training_classes(data))

    def training_classes(self, data: Dataset) -> list[int]:
        """The class ids the run trains on (`known_classes` or the data set's default),
        in label order of `data` loaded without `val_classes`."""
        if self.known_classes is not None:
            return list(self.known_classes)
        return list(DEFAULT_KNOWN.get(self.data, range(len(data.all_class_names))))

    def backbone_kind(self, data: Dataset) -> str:
        return resolve_kind(self.backbone, data.input_shape)

    @property
    def uses_application(self) -> bool:
        return self.backbone in APPLICATIONS

    def check(self) -> None:
        """RunError for settings that contradict each other, whatever the data and loss."""
        frozen, epochs = self.freeze_backbone_epochs, self.epochs
        if frozen and frozen >= epochs:
            raise RunError(f"--freeze-backbone-epochs ({frozen}) must be less than --epochs ({epochs})")
        if frozen and self.weights is None:
            raise RunError(
                f"--freeze-backbone-epochs {frozen} would freeze a randomly initialised trunk "
                "(--weights none): pass --weights imagenet or a weights file, or drop "
                "--freeze-backbone-epochs"
            )
        if self.weights == "imagenet" and not self.uses_application:
            raise RunError("--weights imagenet needs a keras.applications --backbone (" + ", ".join(APPLICATIONS) + ")")
        if self.warmup_epochs >= epochs:
            raise RunError(f"--warmup-epochs must be < --epochs ({epochs}); got {self.warmup_epochs}.")


@dataclass(frozen=True)
class ResolvedConfig(TrainConfig):
    """A `TrainConfig` checked and complete: every option of the loss's recipe (defaults
    filled), the learning rate and weight decay set, own data as `recorded_data`. Made by
    `resolve_config` (or `dataclasses.replace` of one, which resolves the new values); what
    `train`, the checkpoint, `metrics.json`'s `"config"` and the report take; never resolved
    again.

    Derive other settings from the `TrainConfig`, not from this: its filled values (the
    learning rate of the data set, the weight decay of the optimizer) stay in a copy."""

    def __post_init__(self) -> None:
        self.check()
        try:
            options = get_recipe(self.loss).resolve(self.loss, self.options)
        except ValueError as error:
            raise RunError(str(error)) from None
        filled = {
            "options": options,
            "learning_rate": LEARNING_RATES.get(self.data, DEFAULT_LEARNING_RATE)
            if self.learning_rate is None
            else self.learning_rate,
            "weight_decay": default_weight_decay(self.optimizer) if self.weight_decay is None else self.weight_decay,
            "data": recorded_data(self.data),
        }
        for name, value in filled.items():
            object.__setattr__(self, name, value)  # frozen: set once, while being made

    def resolved(self, data: Dataset) -> dict[str, Any]:
        """The values the run used where a field left them to a default (`metrics.json`
        "resolved"; the report and the plots' titles show them)."""
        shape = data.input_shape
        return {
            "backbone": self.backbone_kind(data),
            "weights": os.path.basename(self.weights) if self.weights else "none",
            "image_size": f"{shape[0]}x{shape[1]}" if len(shape) == 3 else None,
            "val_split": (
                (0.0 if self.is_builtin else DEFAULT_VAL_SPLIT) if self.val_split is None else self.val_split
            ),
            "test_split": (
                "the set's own"
                if self.is_builtin
                else DEFAULT_TEST_SPLIT
                if self.test_split is None
                else self.test_split
            ),
            "learning_rate": self.learning_rate,
        }


def resolve_config(config: TrainConfig) -> ResolvedConfig:
    """`config` checked and completed, once (a `ResolvedConfig` is returned as it is);
    RunError, worded with the command line's flags, for a bad or inconsistent value."""
    if isinstance(config, ResolvedConfig):
        return config
    return ResolvedConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig)})


# Fields that do not change what a run computes: a resumed run may differ in them.
PRESENTATION = ("verbose", "tensorboard", "evaluate", "out")
CLI_FIELDS = tuple(f for f in fields(TrainConfig) if f.metadata)

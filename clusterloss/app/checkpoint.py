"""`TrainingCheckpoint`: what `train --resume` needs to continue a killed run exactly.

Like `keras.callbacks.BackupAndRestore` (weights with the optimizer state at every epoch
end), plus what that callback does not keep: the history of the epochs already done and the
best monitored value with its weights (the best model of a run with validation), the
seconds trained so far (`seconds()` adds up the parts of a resumed run), the state of every
`keras.random.SeedGenerator` of the model and its loss (Partial FC's class sampling, a
sampling miner: a resumed run continues their draws instead of replaying them), and
atomicity. Each epoch writes `epoch-<N>.weights.h5` (and `best-<N>.weights.h5` when the
monitored value improves), then `state.json` by rename, which names the weights files it
belongs to, then deletes the files it no longer names; a process killed at any moment
leaves a consistent checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from clusterloss.app.rundir import atomic_path, write_text
from clusterloss.miners import Miner

STATE = "state.json"
# Objects whose attributes may hold a seed generator outside the model's layers (a loss's
# miner, a loss layer's miner).
_HOLDERS = (keras.layers.Layer, keras.losses.Loss, Miner)


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """Every `SeedGenerator` of `model`'s layers and of its compiled loss (through miners),
    in a fixed order."""
    found: list[keras.random.SeedGenerator] = []
    seen: dict[int, Any] = {}  # holds what it saw: no id is reused by a new object meanwhile
    todo: list[Any] = [model, model.loss]
    while todo:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen[id(item)] = item
        if isinstance(item, keras.random.SeedGenerator):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            todo += list(item)
        elif isinstance(item, dict):
            todo += list(item.values())
        elif isinstance(item, _HOLDERS):
            todo += [v for k, v in vars(item).items() if not k.startswith("_")]
            if isinstance(item, keras.layers.Layer):
                todo += list(item._seed_generators) + item._flatten_layers(include_self=False)
    return found


class TrainingCheckpoint(keras.callbacks.Callback):
    """Save the training state to `directory` at each epoch end (see the module docstring).

    Args:
        directory: the checkpoint folder (created).
        config: the run's settings, stored so that a resume can check it continues the
            same run.
        monitor, mode: the logged value whose best epoch is kept ("max" or "min"; a tie
            goes to the later epoch, trained longer); None: no best model.
        state: a loaded `state.json` to continue from (`TrainingCheckpoint.read`).
    """

    def __init__(self, directory: str | Path, config: dict[str, Any], monitor: str | None = None,
                 mode: str = "max", state: dict[str, Any] | None = None):  # fmt: skip
        super().__init__()
        self.directory = Path(directory)
        self.monitor, self.mode = monitor, mode
        self.state = state or {
            "config": config, "epoch": 0, "history": {}, "weights": None,
            "monitor": monitor, "best": None, "best_epoch": None, "best_weights": None,
        }  # fmt: skip
        self._before = float(self.state.get("train_seconds", 0.0))  # the parts before a resume
        self._began = time.perf_counter()

    def seconds(self) -> float:
        """Seconds trained: this process's since it made this checkpoint, plus the ones
        saved before it (the epochs a resume continues from)."""
        return self._before + time.perf_counter() - self._began

    @staticmethod
    def read(directory: str | Path) -> dict[str, Any] | None:
        path = Path(directory) / STATE
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def epoch(self) -> int:
        """Epochs done."""
        return int(self.state["epoch"])

    @property
    def history(self) -> dict[str, list[float]]:
        return self.state["history"]

    def _improved(self, value: float) -> bool:
        best = self.state["best"]
        if not math.isfinite(value):
            return False
        return best is None or (value >= best if self.mode == "max" else value <= best)

    def _save_weights(self, name: str) -> str:
        with atomic_path(self.directory / name) as temporary:
            self.model.save_weights(temporary)
        return name

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        logs = logs or {}
        history = self.state["history"]
        for key, value in logs.items():
            history.setdefault(key, [None] * self.state["epoch"]).append(float(value))
        for values in history.values():  # keys absent this epoch (e.g. `every` > 1)
            values.extend([None] * (epoch + 1 - len(values)))
        old = {self.state["weights"], self.state["best_weights"]}
        value = logs.get(self.monitor) if self.monitor else None
        if value is not None and self._improved(float(value)):
            self.state["best"], self.state["best_epoch"] = float(value), epoch + 1
            self.state["best_weights"] = self._save_weights(f"best-{epoch + 1}.weights.h5")
        self.state["weights"] = self._save_weights(f"epoch-{epoch + 1}.weights.h5")
        self.state["seeds"] = [
            np.asarray(keras.ops.convert_to_numpy(g.state)).tolist() for g in seed_generators(self.model)
        ]
        self.state["epoch"] = epoch + 1
        self.state["train_seconds"] = self.seconds()
        write_text(self.directory / STATE, json.dumps(self.state, indent=1) + "\n")
        for name in old - {self.state["weights"], self.state["best_weights"], None}:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()

    def restore(self, model: keras.Model, best: bool = False) -> None:
        """Load the last (or the best) saved weights, optimizer state included; the last
        also sets the seed generators to their state then."""
        name = self.state["best_weights" if best else "weights"]
        model.load_weights(self.directory / name)
        if not best:
            for generator, values in zip(seed_generators(model), self.state.get("seeds", [])):
                generator.state.assign(np.asarray(values, generator.state.dtype))

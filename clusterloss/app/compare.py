"""A fair comparison: the same backbone, optimizer, budget and seeds for every setting.

A setting is a loss name with optional hyperparameters, written `LOSS[:name=value,...]`, e.g.
`softmax`, `center:center_weight=0.1`, `center:center_weight=0.1,center_update=gradient`.
Each (setting, seed) is one ordinary `train()` run; the table aggregates their metrics.json.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.app.config import ResolvedConfig, TrainConfig, recorded_data, resolve_config
from clusterloss.app.errors import RunError
from clusterloss.app.evaluate import evaluate_run
from clusterloss.app.recipes import get_recipe
from clusterloss.app.report.plots import _pyplot, plot_features, save_figure
from clusterloss.app.results import load_embeddings
from clusterloss.app.rundir import write_text
from clusterloss.app.runs import train
from clusterloss.app.summaries import shown

# The table's columns: `summaries.shown("compare")`, those the runs have. `unseen_*`: retrieval
# among classes never seen in training (class-disjoint); the verification keys are on the
# unseen classes when there are any (metrics.json says which).
METRICS = shown("compare")


@dataclass(frozen=True)
class Setting:
    """One column of the comparison: a loss and the options that differ from the defaults."""

    loss: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.loss
        return self.loss + ":" + ",".join(f"{k}={v}" for k, v in self.options)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label)


def parse_setting(spec: str) -> Setting:
    """`'center:center_weight=0.1'` -> Setting('center', (('center_weight', 0.1),)): each
    value parsed by the recipe's typed option; an unknown key is a ValueError that lists
    the recipe's options."""
    loss, _, rest = spec.partition(":")
    recipe = get_recipe(loss)
    known = {o.key: o for o in recipe.options}
    options = []
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"expected NAME=VALUE after ':' in {spec!r}; got {item!r}.")
        if key not in known:
            listed = ", ".join(known) or "none"
            raise ValueError(f"unknown option {key!r} for loss {loss} in {spec!r} (its options: {listed}).")
        options.append((key, known[key].parse(value.strip())))
    return Setting(loss, tuple(options))


def tuned_settings(directory: str | Path, data: str, known_classes: list[int] | None) -> list[Setting]:
    """Each loss of the tuning in `directory` at its best settings; RunError when it was
    tuned on other data or training classes than `data` and `known_classes`."""
    from clusterloss.app.tune import tuned_options  # Optuna is needed only here

    found, config = tuned_options(directory)
    data = recorded_data(data)
    for key, now in (("data", data), ("known_classes", known_classes)):
        if config[key] != now:
            flag = "--" + key.replace("_", "-")
            raise RunError(
                f"{directory} was tuned with {flag} {config[key]}, not {now}: compare "
                f"on the data it was tuned for (pass {flag} {config[key]})"
            )
    return [Setting(loss, tuple(options.items())) for loss, options in found]


def _run_config(base: TrainConfig, setting: Setting, seed: int, out: Path) -> ResolvedConfig:
    """The settings of the run of `setting` with `seed`, resolved."""
    run_dir = out / "runs" / f"{setting.slug}-s{seed}"
    return resolve_config(
        dataclasses.replace(base, loss=setting.loss, seed=seed, options=dict(setting.options), out=str(run_dir))
    )


def run_comparison(
    settings: list[Setting],
    seeds: list[int],
    base: TrainConfig,
    out: str | Path,
    reuse: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train every (setting, seed) into `out/runs/`, write `results.md`, `results.csv`,
    `comparison.png` and `features.png` (a panel per setting, first seed); return the rows.

    With `reuse`, a run whose `metrics.json` exists is read instead of trained again (to
    resume, or to re-tabulate); one trained with `--no-evaluate` is evaluated then, unless
    `base.evaluate` is off. Without it, an existing run is refused unless `overwrite`."""
    out = Path(out)
    # every run's settings resolved once, before any is trained: a mistake stops nothing midway
    runs = [(setting, _run_config(base, setting, seed, out)) for setting in settings for seed in seeds]
    results: dict[str, list[dict[str, Any]]] = {}
    for setting, config in runs:
        done = Path(config.out, "metrics.json")
        if reuse and done.is_file():
            metrics = json.loads(done.read_text())
            if base.evaluate and "precision_at_1" not in metrics:
                metrics = evaluate_run(config.out, verbose=base.verbose)
            results.setdefault(setting.label, []).append(metrics)
            continue
        print(f"[compare] {setting.label}, seed {config.seed} -> {config.out}", flush=True)
        results.setdefault(setting.label, []).append(train(config, overwrite=overwrite))
    rows = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(rows, out, base, seeds)
    plot_comparison(rows, out / "comparison.png")
    plot_feature_panels(settings, seeds[0], out)
    return rows


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per setting: mean and std (over seeds) of every metric present."""
    rows = []
    for label, runs in results.items():
        row: dict[str, Any] = {"setting": label, "seeds": len(runs)}
        for name in METRICS:
            values = [r[name] for r in runs if isinstance(r.get(name), (int, float))]
            values = [v for v in values if not math.isnan(v)]
            if values:
                row[name] = float(np.mean(values))
                row[name + "_std"] = float(np.std(values))
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path, base: TrainConfig, seeds) -> None:
    names = [m for m in METRICS if any(m in r for r in rows)]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["setting", "seeds"] + [x for m in names for x in (m, m + "_std")])
    for r in rows:
        writer.writerow([r["setting"], r["seeds"]] + [r.get(x, "") for m in names for x in (m, m + "_std")])
    header = "| setting | " + " | ".join(names) + " |"
    lines = [
        f"data {base.data}, {base.embedding_dim}-D embeddings, {base.epochs} epochs, "
        f"seeds {', '.join(map(str, seeds))}; mean ± std over seeds.",
        "",
        header,
        "|" + "---|" * (len(names) + 1),
    ]
    for r in rows:
        cells = [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if m in r else "" for m in names]
        lines.append(f"| {r['setting']} | " + " | ".join(cells) + " |")
    write_text(out / "results.csv", table.getvalue())
    write_text(out / "results.md", "\n".join(lines) + "\n")


def plot_comparison(rows: list[dict[str, Any]], path: Path, columns: int = 4) -> None:
    """One panel per metric (`columns` per row): a horizontal bar per setting with the std
    over seeds, the axis zoomed to the values so that small differences show."""
    plt = _pyplot()
    names = [m for m in METRICS if m not in ("train_seconds", "eer") and any(m in r for r in rows)]
    columns = max(1, min(columns, len(names)))
    grid = (max(1, -(-len(names) // columns)), columns)
    height = 0.28 * len(rows) + 1.0
    fig, axes = plt.subplots(*grid, figsize=(3.6 * columns, height * grid[0]), dpi=110, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(rows))]
    y = np.arange(len(rows))[::-1]
    for ax, name in zip(axes.flat, names):
        means = np.array([r.get(name, np.nan) for r in rows], dtype=float)
        stds = np.array([r.get(name + "_std", 0.0) for r in rows], dtype=float)
        ax.barh(y, means, xerr=stds, color=colors, capsize=2)
        finite = np.isfinite(means)
        if finite.any():
            low = np.min(means[finite] - stds[finite])
            high = np.max(means[finite] + stds[finite])
            pad = 0.15 * (high - low) + 1e-3
            ax.set_xlim(max(0.0, low - pad), high + pad)
        ax.set_title(name, fontsize=9)
        ax.set_yticks(y, [r["setting"] for r in rows], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)


def plot_feature_panels(settings: list[Setting], seed: int, out: Path) -> None:
    """`features.png`: the test features of each setting's first-seed run, side by side."""
    plt = _pyplot()
    cols = min(len(settings), 4)
    rows = math.ceil(len(settings) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), dpi=100, squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        emb = load_embeddings(out / "runs" / f"{setting.slug}-s{seed}")
        plot_features(emb["test"], emb["test_labels"], "", emb["centers"], title=setting.label, ax=ax)
    for ax in list(axes.flat)[len(settings) :]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out / "features.png")

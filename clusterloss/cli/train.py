"""`clusterloss train`: train one model and write its run directory."""

from __future__ import annotations

import argparse
import json


def parse_classes(text: str) -> list[int]:
    """'0-4' or '0,2,5' or '0-4,7' -> a list of class ids."""
    classes: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            classes.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class ids like '0-4' or '0,2,5'; got {text!r}")
    return classes


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `train` and `compare`."""
    from clusterloss.data.datasets import DATASETS

    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--embedding-dim", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--learning-rate", type=float, help="Adam's (default: 0.01 digits, 0.001 otherwise)"
    )
    parser.add_argument("--backbone", default="auto", choices=("auto", "mlp", "cnn"))
    parser.add_argument(
        "--known-classes",
        type=parse_classes,
        help="train on these class ids only, e.g. 0-4 (the rest are unknown at evaluation; "
        "olivetti defaults to people 0-29)",
    )
    parser.add_argument("--train-limit", type=int, help="use a random subset of the train set")
    parser.add_argument("--test-limit", type=int, help="use a random subset of the test set")
    parser.add_argument(
        "--verbose", default="auto", choices=("auto", "0", "1", "2"),
        help="Keras progress: 1 bar, 2 one line per epoch, 0 silent",
    )  # fmt: skip
    parser.add_argument(
        "--no-evaluate", dest="evaluate", action="store_false",
        help="skip the evaluation after training (retrieval, verification, open set, "
        "roc.png, report.html); `clusterloss evaluate RUN_DIR` does it later",
    )  # fmt: skip
    group = parser.add_argument_group("loss hyperparameters")
    group.add_argument("--center-weight", type=float, default=0.1, help="lambda (center loss)")
    group.add_argument("--center-alpha", type=float, default=0.5, help="Eq. 4 center step")
    group.add_argument("--center-update", default="paper", choices=("paper", "gradient"))
    group.add_argument("--center-lr", type=float, default=0.5, help="SGD lr of gradient centers")
    group.add_argument("--focal-gamma", type=float, default=2.0)
    group.add_argument("--label-smoothing", type=float, default=0.1)
    group.add_argument("--m-per-class", type=int, default=4, help="samples per class per batch")
    group.add_argument("--scale", type=float, help="margin heads' scale s (default: the head's)")
    group.add_argument("--margin", type=float, help="margin (radians for ArcFace; default: the loss's)")


OPTION_NAMES = (
    "center_weight", "center_alpha", "center_update", "center_lr",
    "focal_gamma", "label_smoothing", "m_per_class", "scale", "margin",
)  # fmt: skip


def config_from_args(args: argparse.Namespace, loss: str, seed: int, out: str):
    from clusterloss.runs import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        loss=loss,
        embedding_dim=args.embedding_dim,
        epochs=args.epochs,
        seed=seed,
        out=out,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        backbone=args.backbone,
        known_classes=args.known_classes,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        options={name: getattr(args, name) for name in OPTION_NAMES},
        evaluate=args.evaluate,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
    )


def add_parser(subparsers) -> None:
    from clusterloss.recipes import RECIPES

    parser = subparsers.add_parser(
        "train",
        help="train a model and write model.keras, metrics.json, plots and report.html",
        description="Train on a data set with one loss; write RUN_DIR/model.keras, "
        "metrics.json, embeddings.npz, features.png and history.png, then evaluate it "
        "(retrieval, verification, open set: metrics.json, roc.png, neighbors.png, "
        "report.html) unless --no-evaluate.",
    )
    parser.add_argument(
        "--loss", default="center", choices=sorted(RECIPES), metavar="LOSS",
        help="; ".join(f"{name}: {RECIPES[name].description}" for name in sorted(RECIPES)),
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="run directory (default runs/DATASET-LOSS-sSEED)")
    add_training_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clusterloss.runs import train

    config = config_from_args(args, args.loss, args.seed, args.out)
    metrics = train(config)
    out = config.run_dir()
    shown = (
        "test_accuracy", "knn_accuracy", "intra_inter_ratio", "precision_at_1", "map_at_r",
        "unseen_map_at_r", "verification_set", "roc_auc", "eer", "open_set_auroc",
        "train_seconds", "evaluate_seconds",
    )  # fmt: skip
    print(json.dumps({k: metrics[k] for k in shown if k in metrics}, indent=2))
    print(f"wrote {out}/: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0

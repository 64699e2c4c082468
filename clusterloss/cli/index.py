"""`clusterloss index build RUN_DIR`: embed the training set and save a searchable Index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clusterloss.cli.evaluate import add_run_dir, verbosity

INDEX_FILE = Path("index") / "train.index"
INFO_FILE = Path("index") / "info.json"


def embed(model, x, verbose, chunk: int = 1024):
    """`model.embed(x)` in chunks, with a `keras.utils.Progbar` over the images when verbose."""
    import numpy as np
    from keras.utils import Progbar

    bar = None if verbose in (0, "0") else Progbar(len(x), verbose=2 if verbose == 2 else 1,
                                                   unit_name="image")  # fmt: skip
    parts = []
    for start in range(0, len(x), chunk):
        parts.append(model.embed(x[start : start + chunk], verbose=0))
        if bar is not None:
            bar.update(min(start + chunk, len(x)))
    return np.concatenate(parts) if parts else np.zeros((0, model.backbone.output_shape[-1]))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build a nearest-neighbour index of a run's training embeddings",
        description="Nearest-neighbour indexes of a run (clusterloss.index.Index).",
    )
    commands = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = commands.add_parser(
        "build",
        help="embed the training set with the run's model and save RUN_DIR/index/",
        description="Embed the training set with RUN_DIR/model.keras and save an Index with "
        "its labels to RUN_DIR/index/train.index (+ info.json); `clusterloss search` uses it. "
        "Exact search by default.",
    )
    add_run_dir(build)
    build.add_argument(
        "--approximate", choices=("hnsw", "ivf"),
        help="an approximate FAISS index instead of exact search (needs faiss-cpu; without "
        "it the index runs exact, with a warning)",
    )  # fmt: skip
    build.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    build.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from clusterloss.index import Index
    from clusterloss.runs import load_run

    run_dir = Path(args.run_dir)
    verbose = verbosity(args.verbose)
    model, data, _ = load_run(run_dir)
    start = time.perf_counter()
    emb = embed(model, data.x_train, verbose)
    index = Index(
        emb.shape[1], metric=args.metric, kind=args.approximate or "flat",
        verbose=verbose not in (0, "0"),
    )  # fmt: skip
    index.add(emb, labels=data.y_train, ids=np.arange(len(emb)))
    (run_dir / INDEX_FILE).parent.mkdir(exist_ok=True)
    index.save(run_dir / INDEX_FILE)
    info = {
        "source": "train",
        "size": len(index),
        "dim": index.dim,
        "metric": index.metric,
        "kind": index.kind,
        "backend": index.backend,
        "exact": index.is_exact,
        "class_names": data.class_names,
        "seconds": round(time.perf_counter() - start, 3),
    }
    (run_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"wrote {run_dir / INDEX_FILE}: {len(index)} training embeddings, {index.dim}-D, "
        f"{index.metric}, {index.kind} ({'exact' if index.is_exact else 'approximate'}, "
        f"{index.backend})"
    )
    return 0

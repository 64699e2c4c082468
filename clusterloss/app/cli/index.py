"""`clusterloss index build RUN_DIR [--data PATH]`: embed a gallery and save a searchable
Index with its labels, file paths and open-set threshold."""

from __future__ import annotations

import argparse

from clusterloss.app.cli.evaluate import add_run_dir, locked_run
from clusterloss.app.config import fraction


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "index",
        help="build a nearest-neighbour index of a gallery for `clusterloss search`",
        description="Nearest-neighbour indexes of a run (clusterloss.index.Index).",
    )
    commands = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = commands.add_parser(
        "build",
        help="embed a gallery with the run's model and save RUN_DIR/index/",
        description="Embed the gallery (the run's training set, or every image of --data) with "
        "RUN_DIR/model.keras and save an Index with its labels and file paths to RUN_DIR/index/ "
        "(gallery.index, paths.txt, info.json). info.json also records a hash of model.keras "
        "(a retrained model makes the index stale: search refuses it) and the open-set "
        "threshold: chosen on the run's validation split (else its test split) so that at "
        "most --far of different-class pairs pass it. Exact search by default.",
    )
    add_run_dir(build)
    build.add_argument("--data", metavar="PATH",
                       help="the gallery: a folder of class sub-folders or an .npz (default: "
                       "the run's training set)")  # fmt: skip
    build.add_argument(
        "--approximate", choices=("hnsw", "ivf"),
        help="an approximate FAISS index instead of exact search (needs faiss-cpu; without "
        "it the index runs exact, with a warning)",
    )  # fmt: skip
    build.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    build.add_argument("--far", type=fraction, default=0.01,
                       help="false accept rate of the open-set threshold (default 0.01)")
    build.set_defaults(run=run)
    return [build]


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import INDEX_FILE, build_index

    with locked_run(args.run_dir) as (run_dir, model, data, _):
        info = build_index(run_dir, model, data, args.data, metric=args.metric,
                           kind=args.approximate or "flat", far=args.far, verbose=args.verbose)  # fmt: skip
    open_set = info["open_set"]
    if open_set["threshold"] is None:
        decision = (f"no open-set threshold: a rate of {args.far:g} needs >= {1 / args.far:.0f} "
                    f"images in the {open_set['chosen_on']} split (it has "
                    f"{open_set['num_queries']}; pass a larger --far); search will not say unknown")  # fmt: skip
    else:
        decision = (f"unknown below {info['metric']} {open_set['threshold']:.4f} "
                    f"(FAR {args.far:g} on the {open_set['chosen_on']} split)")  # fmt: skip
    print(f"wrote {run_dir / INDEX_FILE}: {info['size']} embeddings of {info['source']}, "
          f"{info['dim']}-D, {info['metric']}, {info['kind']} "
          f"({'exact' if info['exact'] else 'approximate'}, {info['backend']}); {decision}")  # fmt: skip
    return 0

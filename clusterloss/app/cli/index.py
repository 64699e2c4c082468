"""`clusterloss index build|add|remove RUN_DIR`: the run's gallery (RUN_DIR/index/), built,
enrolled into and removed from, with its open-set calibration."""

from __future__ import annotations

import argparse

from clusterloss.app.cli.evaluate import add_run_dir, locked_run
from clusterloss.app.config import rate

CALIBRATION_HELP = (
    "the open-set threshold is chosen on held-out probes (the run's validation split, "
    "else its test split, or --calibrate PATH) so that at most --far of strangers "
    "pass it (or at least --tar of enrolled people are accepted and named right)"
)


def add_target(parser: argparse.ArgumentParser) -> None:
    """--far / --tar and --calibrate (shared with `clusterloss calibrate`)."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--far",
        type=rate,
        default=None,
        help="false accept rate of strangers at the threshold (default 0.01; with too "
        "few probes, the smallest rate they can estimate, said in one line)",
    )
    target.add_argument("--tar", type=rate, help="instead: the accept rate of enrolled people to reach")
    parser.add_argument(
        "--calibrate",
        metavar="PATH",
        help="probes: a folder of class sub-folders of images not in the gallery (or an "
        ".npz); default: the run's validation split, else its test split",
    )


def target(args: argparse.Namespace) -> dict[str, float | None]:
    """`far` and `tar` of the parsed --far / --tar (the default FAR when neither is given)."""
    from clusterloss.gallery.calibration import DEFAULT_FAR

    return {"far": DEFAULT_FAR if args.far is None and args.tar is None else args.far, "tar": args.tar}


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "index",
        help="build a run's gallery, enrol into it and remove from it (for search and serve)",
        description="The run's gallery (RUN_DIR/index/): embeddings with class names and source "
        "paths in an SQLite database, a nearest-neighbour index derived from it, and the "
        "open-set calibration.",
    )
    commands = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = commands.add_parser(
        "build",
        help="embed a gallery with the run's model and save RUN_DIR/index/ (replaces it whole)",
        description="Embed the gallery (the run's training set, or every image of --data) with "
        f"RUN_DIR/model.keras, calibrate it and make it the run's gallery; {CALIBRATION_HELP}. "
        "Prints the trade-off table (threshold, FAR, TAR, precision, recall) and writes it to "
        "RUN_DIR/index/calibration.json. A retrained model makes the gallery stale: search "
        "refuses it. A failed or stopped build leaves the previous gallery as it was.",
    )
    add_run_dir(build)
    build.add_argument(
        "--data",
        metavar="PATH",
        help="the gallery: a folder of class sub-folders or an .npz (default: the run's training set)",
    )
    build.add_argument(
        "--approximate",
        choices=("hnsw", "ivf"),
        help="an approximate FAISS index instead of exact search (needs faiss-cpu; without "
        "it the index runs exact, with a warning)",
    )
    build.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    add_target(build)
    build.set_defaults(run=run_build)
    add = commands.add_parser(
        "add",
        help="enrol images into the run's gallery (no retraining, nothing else re-embedded)",
        description="Embed the images of --data and add them to RUN_DIR's gallery in one "
        "transaction: PATH is a folder of class sub-folders (one image per class is enough), or "
        "with --class NAME a folder of images (or one image) of that class, new or enrolled. "
        "The open-set threshold is recalibrated on the stored probes.",
    )
    add_run_dir(add)
    add.add_argument("--data", metavar="PATH", required=True, help="the images to enrol")
    add.add_argument("--class", dest="class_name", metavar="NAME", help="the class of every image of --data")
    add.set_defaults(run=run_add)
    remove = commands.add_parser(
        "remove",
        help="remove classes or images from the run's gallery",
        description="Remove every item of the --class names, or the items enrolled from the "
        "--path files, from RUN_DIR's gallery in one transaction (a person who asks to be "
        "forgotten); the threshold is recalibrated.",
    )
    add_run_dir(remove)
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("--class", dest="classes", metavar="NAME", nargs="+", help="class names to remove")
    which.add_argument("--path", dest="paths", metavar="FILE", nargs="+", help="enrolled files to remove")
    remove.set_defaults(run=run_remove)
    return [build, add, remove]


def _size(gallery) -> str:
    stats = gallery.stats()
    return (
        f"{stats['size']} items of {stats['num_classes']} classes, {stats['dim']}-D, {stats['metric']}, "
        f"{stats['kind']} ({'exact' if stats['exact'] else 'approximate'}, {stats['index_backend']})"
    )


def run_build(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import CURRENT, build_gallery

    with locked_run(args.run_dir) as (run_dir, model, data, _):
        gallery, lines = build_gallery(run_dir, model, data, args.data, metric=args.metric,
                                       kind=args.approximate or "flat", calibrate=args.calibrate,
                                       verbose=args.verbose, **target(args))  # fmt: skip
    print(f"wrote {run_dir / CURRENT.parent}: {_size(gallery)}\n{lines}")
    gallery.close()
    return 0


def run_add(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import enrol
    from clusterloss.app.results import run_model

    model = run_model(args.run_dir)
    gallery, count, lines = enrol(args.run_dir, model, args.data, args.class_name, args.verbose)
    print(f"enrolled {count} images of {args.data}: {_size(gallery)}\n{lines}")
    gallery.close()
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import unenrol

    gallery, count, lines = unenrol(args.run_dir, args.classes, args.paths)
    print(f"removed {count} items: {_size(gallery)}\n{lines}")
    gallery.close()
    return 0

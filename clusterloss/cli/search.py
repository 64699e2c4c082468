"""`clusterloss search RUN_DIR --query test:0,5,7`: the nearest neighbours of samples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clusterloss.cli.evaluate import add_run_dir, verbosity

SETS = ("train", "test", "unknown")


def parse_query(text: str) -> tuple[str, list[int]]:
    """'test:0,5,7' or 'unknown:0-3' -> ('test', [0, 5, 7])."""
    from clusterloss.cli.train import parse_classes

    name, sep, rest = text.partition(":")
    if not sep or name not in SETS or not rest:
        raise argparse.ArgumentTypeError(
            f"expected SET:INDICES with SET one of {', '.join(SETS)}, e.g. test:0,5,7 or "
            f"unknown:0-3; got {text!r}"
        )
    try:
        return name, parse_classes(rest)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected indices like 0,5,7 or 0-3 after ':'; got {text!r}"
        )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="print the nearest training images of given samples, with labels and scores",
        description="Embed the given samples of the run's data set with RUN_DIR/model.keras "
        "and print their k nearest images of the gallery (the training set by default): "
        "position in the gallery, label, class name, score (cosine similarity, or Euclidean "
        "distance for a euclidean index) and whether the label matches. A training-set "
        "gallery uses RUN_DIR/index/ from `clusterloss index build` if present; otherwise "
        "an exact cosine search is built on the fly.",
    )
    add_run_dir(parser)
    parser.add_argument(
        "--query", "-q", type=parse_query, action="append", required=True, metavar="SET:INDICES",
        help="samples to search for: SET is train, test or unknown (unseen classes), INDICES "
        "positions in it, e.g. test:0,5,7 or unknown:0-3; repeatable",
    )  # fmt: skip
    parser.add_argument("-k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument(
        "--gallery", default="train", choices=SETS,
        help="the set searched (default train; e.g. unknown to search among the unseen "
        "classes). A query is never its own neighbour.",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from clusterloss.cli.index import INDEX_FILE, embed
    from clusterloss.index import Index
    from clusterloss.runs import load_run

    if args.k < 1:
        raise SystemExit(f"clusterloss search: error: -k must be >= 1; got {args.k}")
    run_dir = Path(args.run_dir)
    verbose = 0 if args.json else verbosity(args.verbose)  # stdout is the JSON alone
    model, data, _ = load_run(run_dir)
    arrays = {
        "train": (data.x_train, data.y_train),
        "test": (data.x_test, data.y_test),
        "unknown": (data.x_unknown, data.y_unknown),
    }
    queries = []
    for name, positions in args.query:
        x, _ = arrays[name]
        bad = [p for p in positions if not 0 <= p < len(x)]
        if bad and not len(x):
            raise SystemExit(
                f"clusterloss search: error: the {name} set is empty (unknown holds the classes "
                "left out of training: olivetti's people 30-39, or train with --known-classes)"
            )
        if bad:
            raise SystemExit(
                f"clusterloss search: error: {name} has {len(x)} samples (0-{len(x) - 1}); "
                f"got indices {bad}"
            )
        queries += [(name, p) for p in positions]
    names = list(data.class_names) + list(data.unknown_class_names)
    name_of = lambda c: names[c] if 0 <= c < len(names) else str(c)  # noqa: E731

    gallery_x, gallery_y = arrays[args.gallery]
    if not len(gallery_x):
        raise SystemExit(f"clusterloss search: error: the {args.gallery} set is empty")
    if args.gallery == "train" and (run_dir / INDEX_FILE).is_file():
        index = Index.load(run_dir / INDEX_FILE)
        source = str(run_dir / INDEX_FILE)
    else:
        index = Index(model.backbone.output_shape[-1], metric="cosine")
        index.add(embed(model, gallery_x, verbose), labels=gallery_y, ids=np.arange(len(gallery_x)))
        source = f"exact cosine search of the {args.gallery} set"
        if args.gallery == "train":
            source += " (no RUN_DIR/index/: `clusterloss index build` saves one)"
    q = model.embed(np.stack([arrays[n][0][p] for n, p in queries]), verbose=0)
    scores, found = index.search(q, args.k + 1)  # one more, in case the query is in the gallery
    results = []
    for row, (name, p) in enumerate(queries):
        label = int(arrays[name][1][p])
        hits = [
            (float(score), int(index.ids[j]), int(index.labels[j]))
            for score, j in zip(scores[row], found[row])
            if j >= 0 and not (name == args.gallery and int(index.ids[j]) == p)
        ][: args.k]
        neighbors = [
            {
                "rank": rank + 1,
                "gallery_index": position,
                "label": neighbor_label,
                "class": name_of(neighbor_label),
                "score": score,
                "match": neighbor_label == label,
            }
            for rank, (score, position, neighbor_label) in enumerate(hits)
        ]
        results.append(
            {"set": name, "index": p, "label": label, "class": name_of(label),
             "neighbors": neighbors}
        )  # fmt: skip
    if args.json:
        print(json.dumps({"index": source, "gallery": args.gallery, "metric": index.metric,
                          "queries": results}, indent=2))  # fmt: skip
        return 0
    score_name = "cosine" if index.metric == "cosine" else "distance"
    print(f"index: {source} ({len(index)} {args.gallery} images, {index.metric})")
    column = f"{args.gallery}#"
    for result in results:
        print(f"\n{result['set']}[{result['index']}]  label {result['label']} ({result['class']})")
        print(f"  {'rank':>4}  {column:>8}  {'label':>5}  {'class':<16} {score_name:>8}  match")
        for n in result["neighbors"]:
            print(
                f"  {n['rank']:>4}  {n['gallery_index']:>8}  {n['label']:>5}  "
                f"{n['class'][:16]:<16} {n['score']:>8.4f}  {'yes' if n['match'] else 'no'}"
            )
    return 0

"""`clusterloss search RUN_DIR (--images FILE... | --npz FILE | --query SET:INDICES)`: the
nearest gallery items of new inputs or of samples of the run, with an open-set decision."""

from __future__ import annotations

import argparse
import json

from clusterloss.app.cli.evaluate import add_run_dir
from clusterloss.app.config import class_ids, positive_int

SETS = ("train", "test", "unknown")


def parse_query(text: str) -> tuple[str, list[int]]:
    """'test:0,5,7' or 'unknown:0-3' -> ('test', [0, 5, 7])."""
    name, sep, rest = text.partition(":")
    if not sep or name not in SETS or not rest:
        raise argparse.ArgumentTypeError(
            f"expected SET:INDICES with SET one of {', '.join(SETS)}, e.g. test:0,5,7 or "
            f"unknown:0-3; got {text!r}"
        )
    try:
        return name, class_ids(rest)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected indices like 0,5,7 or 0-3 after ':'; got {text!r}")


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "search",
        help="print the nearest gallery items of new images (or samples), with an open-set decision",
        description="Embed the queries with RUN_DIR/model.keras and print, per query, its k "
        "nearest gallery items: label, class, score (cosine similarity, or Euclidean distance "
        "for a euclidean index) and file path; and a decision: the nearest item's class, or "
        "'unknown' when its score does not pass the threshold in RUN_DIR/index/info.json. The "
        "gallery is RUN_DIR/index/ (`clusterloss index build`; refused if built from another "
        "model.keras), else the run's training set, embedded now.",
    )
    add_run_dir(parser)
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--images", nargs="+", metavar="FILE", help="image files to search for")
    queries.add_argument("--npz", metavar="FILE", help="an .npz with queries x (and labels y)")
    queries.add_argument(
        "--query", "-q", type=parse_query, action="append", metavar="SET:INDICES",
        help="samples of the run: SET is train, test or unknown (unseen classes), INDICES "
        "positions in it, e.g. test:0,5,7 or unknown:0-3; repeatable",
    )  # fmt: skip
    parser.add_argument("-k", type=positive_int, default=5, help="neighbours per query (default 5)")
    parser.add_argument(
        "--gallery", default="train", choices=SETS,
        help="with --query: the run's set searched (default train: RUN_DIR/index/ if built); "
        "a query is never its own neighbour",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per query and line")
    parser.set_defaults(run=run)
    return [parser]


def _set_queries(args, data):
    """`(x, labels, names, own)` of --query samples of the run's sets; `own[i]`: the
    query's position in the gallery set, if it is that set (never its own neighbour)."""
    import numpy as np

    from clusterloss.app.errors import RunError
    from clusterloss.data.images import subset

    parts = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test),
             "unknown": (data.x_unknown, data.y_unknown)}  # fmt: skip
    picked = []
    for name, positions in args.query:
        count = len(parts[name][1])
        bad = [p for p in positions if not 0 <= p < count]
        if bad and not count:
            raise RunError(f"the {name} set is empty (unknown holds the classes left out of "
                           "training: olivetti's people 30-39, or train with --known-classes)")  # fmt: skip
        if bad:
            raise RunError(f"{name} has {count} samples (0-{count - 1}); got indices {bad}")
        picked += [(name, p) for p in positions]
    x = np.concatenate([subset(parts[n][0], [p])[:] for n, p in picked])
    labels = np.array([parts[n][1][p] for n, p in picked])
    own = [p if n == args.gallery else None for n, p in picked]
    return x, labels, [f"{n}[{p}]" for n, p in picked], own


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import open_gallery, read_queries
    from clusterloss.app.results import embed_all, load_run

    verbose = 0 if args.json else args.verbose  # stdout is the JSON alone
    model, data, _ = load_run(args.run_dir)
    if args.query:
        x, labels, names, own = _set_queries(args, data)
        label_names = data.all_class_names
    else:
        x, labels, names = read_queries(model, args.images, args.npz)
        own = label_names = None
    gallery = open_gallery(args.run_dir, model, data, args.gallery, verbose)
    label_names = label_names or gallery.class_names
    results = []
    for i, answer in enumerate(gallery.answer(embed_all(model, x), args.k, own)):
        result = {"query": names[i]}
        if labels is not None:
            result["label"], result["class"] = int(labels[i]), label_names[int(labels[i])]
            for neighbor in answer["neighbors"]:
                neighbor["match"] = neighbor["class"] == result["class"]
        results.append({**result, **answer})
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        _print_table(results, gallery.description, gallery.index.metric, gallery.threshold)
    return 0


def _print_table(results, source: str, metric: str, threshold) -> None:
    score_name = "cosine" if metric == "cosine" else "distance"
    rule = "no open-set threshold" if threshold is None else f"unknown {'below' if metric == 'cosine' else 'above'} {threshold:.4f}"
    print(f"gallery: {source}, {metric}; {rule}")
    for r in results:
        truth = f"  label {r['label']} ({r['class']})" if "label" in r else ""
        print(f"\n{r['query']}{truth}  ->  {r['prediction']} ({score_name} {r['score']:.4f})")
        print(f"  {'rank':>4}  {'label':>5}  {'class':<16} {score_name:>8}  item")
        for n in r["neighbors"]:
            item = n.get("path", f"#{n['gallery_index']}")
            mark = "" if "match" not in n else ("  yes" if n["match"] else "  no")
            print(f"  {n['rank']:>4}  {n['label']:>5}  {n['class'][:16]:<16} {n['score']:>8.4f}  {item}{mark}")

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
            f"expected SET:INDICES with SET one of {', '.join(SETS)}, e.g. test:0,5,7 or unknown:0-3; got {text!r}"
        )
    try:
        return name, class_ids(rest)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected indices like 0,5,7 or 0-3 after ':'; got {text!r}") from None


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "search",
        help="print the nearest gallery items of new images (or samples), with an open-set decision",
        description="Embed the queries with RUN_DIR/model.keras and print, per query, its k "
        "nearest gallery items: label, class, score (cosine similarity, or Euclidean distance "
        "for a euclidean index) and file path; and a decision: the nearest item's class, or "
        "'unknown' when its score does not pass the gallery's calibrated open-set threshold. The "
        "gallery is RUN_DIR/index/ (`clusterloss index build`; refused if built from another "
        "model.keras), else the run's training set, embedded now and calibrated on its held-out split.",
    )
    add_run_dir(parser)
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--images", nargs="+", metavar="FILE", help="image files to search for")
    queries.add_argument("--npz", metavar="FILE", help="an .npz with queries x (and labels y)")
    queries.add_argument(
        "--query",
        "-q",
        type=parse_query,
        action="append",
        metavar="SET:INDICES",
        help="samples of the run: SET is train, test or unknown (unseen classes), INDICES "
        "positions in it, e.g. test:0,5,7 or unknown:0-3; repeatable",
    )
    parser.add_argument("-k", type=positive_int, default=5, help="neighbours per query (default 5)")
    parser.add_argument(
        "--gallery",
        default="train",
        choices=SETS,
        help="with --query: the run's set searched (default train: RUN_DIR/index/ if built); "
        "a query is never its own neighbour",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per query and line")
    parser.set_defaults(run=run)
    return [parser]


def _set_queries(args, data):
    """`(x, labels, names, own)` of --query samples of the run's sets; `own[i]`: the
    query's position in the gallery set, if it is that set (never its own neighbour)."""
    import numpy as np

    from clusterloss.app.errors import RunError
    from clusterloss.data.images import subset

    parts = {
        "train": (data.x_train, data.y_train),
        "test": (data.x_test, data.y_test),
        "unknown": (data.x_unknown, data.y_unknown),
    }
    picked = []
    for name, positions in args.query:
        count = len(parts[name][1])
        bad = [p for p in positions if not 0 <= p < count]
        if bad and not count:
            raise RunError(
                f"the {name} set is empty (unknown holds the classes left out of "
                "training: olivetti's people 30-39, or train with --known-classes)"
            )
        if bad:
            raise RunError(f"{name} has {count} samples (0-{count - 1}); got indices {bad}")
        picked += [(name, p) for p in positions]
    x = np.concatenate([subset(parts[n][0], [p])[:] for n, p in picked])
    labels = np.array([parts[n][1][p] for n, p in picked])
    own = [p if n == args.gallery else None for n, p in picked]
    return x, labels, [f"{n}[{p}]" for n, p in picked], own


def open_gallery(args, model, data):
    """`(gallery, description, set)`: RUN_DIR's gallery when built (searching the training
    set), else the run's set, embedded now; `set`: the run's set the gallery holds in order
    (its items' ids are positions + 1), or None."""
    from clusterloss.app.gallery import current, open_run_gallery, run_set_gallery

    built = current(args.run_dir) if args.gallery == "train" else None
    if built is not None:
        gallery = open_run_gallery(args.run_dir)
        described = (
            f"{args.run_dir}/index ({len(gallery)} items of {len(gallery.class_names)} classes of {built['source']})"
        )
        return gallery, described, "train" if built["source"] == "train" else None
    return (*run_set_gallery(model, data, args.gallery, 0 if args.json else args.verbose), args.gallery)


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.gallery import embed_checked, read_queries
    from clusterloss.app.results import load_run

    verbose = 0 if args.json else args.verbose  # stdout is the JSON alone
    model, data, metrics = load_run(args.run_dir)
    if args.query:
        x, labels, names, own = _set_queries(args, data)
        classes = [data.all_class_names[int(label)] for label in labels]
    else:
        x, classes, names = read_queries(model, args.images, args.npz, metrics["config"].get("data"))
        own = None
    gallery, description, held = open_gallery(args, model, data)
    own = own if held == args.gallery else None
    k = args.k + (1 if own else 0)
    results = []
    queries = embed_checked(model, x, "the queries", verbose if len(x) > 256 else 0)
    for i, answer in enumerate(gallery.search(queries, k)):
        if own:  # items of the run's sets have ids = position + 1: a query never finds itself
            answer["neighbors"] = [n for n in answer["neighbors"] if n["id"] != (own[i] or 0) + 1]
            for rank, neighbor in enumerate(answer["neighbors"], 1):
                neighbor["rank"] = rank
            answer["neighbors"] = answer["neighbors"][: args.k]
            answer = {**answer, **gallery_decision(gallery, answer["neighbors"])}
        result = {"query": names[i]}
        if classes is not None:
            result["class"] = classes[i]
            for neighbor in answer["neighbors"]:
                neighbor["match"] = neighbor["class"] == classes[i]
        results.append({**result, **answer})
    if args.json:
        for result in results:
            print(json.dumps(result, default=str))
    else:
        _print_table(results, description, gallery)
    return 0


def gallery_decision(gallery, neighbors) -> dict:
    """`prediction`, `known` and `score` from the nearest of `neighbors`."""
    best = neighbors[0]
    known = gallery.calibration is None or gallery.calibration.accepts(best["score"])
    return {"prediction": best["class"] if known else "unknown", "known": known, "score": best["score"]}


def _print_table(results, source: str, gallery) -> None:
    metric = gallery.metric
    score_name = "cosine" if metric == "cosine" else "distance"
    threshold = gallery.threshold
    rule = (
        f"no open-set threshold ({gallery.stats()['calibration_error'] or 'not calibrated'})"
        if threshold is None
        else f"unknown {'below' if metric == 'cosine' else 'above'} {threshold:.4f}"
    )
    print(f"gallery: {source}, {metric}; {rule}")
    for r in results:
        truth = f"  class {r['class']}" if "class" in r else ""
        print(f"\n{r['query']}{truth}  ->  {r['prediction']} ({score_name} {r['score']:.4f})")
        print(f"  {'rank':>4}  {'class':<16} {score_name:>8}  item")
        for n in r["neighbors"]:
            item = n["path"] or f"#{n['id']}"
            mark = "" if "match" not in n else ("  yes" if n["match"] else "  no")
            print(f"  {n['rank']:>4}  {n['class'][:16]:<16} {n['score']:>8.4f}  {item}{mark}")

"""`clusterloss serve RUN_DIR`: search and enrol over HTTP, and a web page (needs the
`serve` extra: Starlette, uvicorn, python-multipart)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket

from clusterloss.app.cli.evaluate import add_run_dir
from clusterloss.app.config import count, positive_int
from clusterloss.app.errors import RunError

TOKEN_ENV = "CLUSTERLOSS_TOKEN"


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "serve",
        help="answer searches and enrolments over HTTP, with a web page (RUN_DIR's gallery)",
        description="Serve RUN_DIR's gallery (clusterloss index build) and model over HTTP: POST "
        "/search (an image: multipart field 'image', JSON {\"image\": base64} or an image/* body; "
        "k), POST /enroll (name and images), DELETE /classes/NAME, GET /health, GET /stats, "
        "GET /items/ID/image and a page at /. Concurrent queries are embedded and searched "
        "together (one model call per batch). Binds 127.0.0.1 by default; another address needs "
        f"a token (--token or ${TOKEN_ENV}), which enrolment and removal then require.",
    )
    add_run_dir(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=count, default=8000, help="port (default 8000; 0: any free one)")
    parser.add_argument("--token", default=None, help=f"bearer token for enrolment and removal (default: ${TOKEN_ENV})")
    parser.add_argument(
        "--max-batch", type=positive_int, default=32, help="images embedded in one model call at most (default 32)"
    )
    parser.add_argument(
        "--max-queue",
        type=positive_int,
        default=256,
        help="requests waiting at most; more are answered 503 (default 256)",
    )
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        default=10 * 2**20,
        help="largest request body in bytes; larger ones are answered 413 (default 10 MiB)",
    )
    parser.add_argument(
        "--approximate",
        choices=("hnsw", "ivf"),
        help="search with an approximate FAISS index instead of the gallery's own "
        "(built at the first start and kept beside the gallery)",
    )
    parser.add_argument(
        "--ef-search",
        type=positive_int,
        default=None,
        help="HNSW search beam (default 64): larger finds more true neighbours, slower",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes sharing the port, each with its own model and batches "
        "(default 1); the gallery stays one (its database)",
    )
    parser.set_defaults(run=run)
    return [parser]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    local = is_loopback(args.host)
    if not local and token is None:
        raise RunError(
            f"--host {args.host} is not a loopback address: set a token (--token or ${TOKEN_ENV}) so "
            "that enrolment and removal are not open to the network"
        )
    try:
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise RunError(
            f"clusterloss serve needs Starlette, uvicorn and python-multipart ({error}): "
            "pip install 'clusterloss[serve]'"
        ) from None
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.create_server((args.host, args.port), family=family)
    except (OSError, OverflowError) as error:
        raise RunError(f"cannot listen on {args.host}:{args.port} ({error})") from None
    from clusterloss.app.serve import SERVICE_ENV, gallery_summary, open_service

    options = {"run_dir": os.fspath(args.run_dir), "token": token, "max_batch": args.max_batch,
               "max_queue": args.max_queue, "max_bytes": args.max_bytes, "show_paths": local,
               "kind": args.approximate, "ef_search": args.ef_search}  # fmt: skip
    with listener:
        host, port = listener.getsockname()[:2]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        if args.workers == 1:
            app, summary = open_service(**options)
            print(f"clusterloss serve: http://{shown}:{port}/ - {summary}; Ctrl-C stops", flush=True)
            uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])
            return 0
        # Each worker process (spawned) opens the service from SERVICE_ENV; the gallery (and an
        # approximate index, built once here) is opened first so that a missing one is said now.
        summary = gallery_summary(args.run_dir, kind=args.approximate, ef_search=args.ef_search)
        os.environ[SERVICE_ENV] = json.dumps(options)
        print(
            f"clusterloss serve: http://{shown}:{port}/ - {summary}; {args.workers} workers (each compiles the "
            "model first); Ctrl-C stops",
            flush=True,
        )
        config = uvicorn.Config(
            "clusterloss.app.serve:service_from_env",
            factory=True,
            workers=args.workers,
            log_level="warning",
            access_log=False,
        )
        uvicorn.supervisors.Multiprocess(config, sockets=[listener]).run()
    return 0

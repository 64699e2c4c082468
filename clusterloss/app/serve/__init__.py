"""`clusterloss serve`: a run's gallery searched and enrolled into over HTTP (Starlette on
uvicorn), with a web page. `open_service` loads the run and returns the ASGI app; the model
is compiled and warmed up before it returns, so the first query pays no compilation.
`service_from_env` is the same for each process of `serve --workers N`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clusterloss.app.errors import RunError
from clusterloss.app.rundir import INDEX

UPLOADS = Path(INDEX) / "uploads"  # images enrolled over HTTP, kept for their thumbnails
SERVICE_ENV = "CLUSTERLOSS_SERVICE"  # open_service's options (JSON) for each worker process


def open_service(run_dir: str | Path, *, token: str | None = None, max_batch: int = 32, max_queue: int = 256,
                 max_bytes: int = 10 * 2**20, show_paths: bool = True, kind: str | None = None,
                 ef_search: int | None = None):  # fmt: skip
    """`(app, summary)`: the service of RUN_DIR's gallery and model, and a line about it;
    `kind` / `ef_search`: search the gallery with another index (e.g. "hnsw", built once and
    kept beside the database)."""
    from clusterloss.app.gallery import gallery_path, input_format, open_run_gallery
    from clusterloss.app.results import run_model
    from clusterloss.app.serve.app import Settings, create_app
    from clusterloss.app.serve.batcher import Batcher
    from clusterloss.models.embedder import Embedder

    run_dir = Path(run_dir)
    model = run_model(run_dir)
    if input_format(model)[0] is None:
        raise RunError(f"{run_dir}'s model takes vectors; clusterloss serve answers images")
    gallery = open_run_gallery(run_dir, kind=kind, ef_search=ef_search)
    gallery.flush()  # an index of another kind is built once, then loaded at the next start
    opened = Path(gallery.path).resolve()

    def is_current() -> bool:
        try:
            return (gallery_path(run_dir) or Path()).resolve() == opened
        except RunError:
            return False

    embedder = Embedder(model.backbone, max_batch)
    seconds = embedder.warm_up()
    settings = Settings(
        token=token, max_bytes=max_bytes, uploads=run_dir / UPLOADS, show_paths=show_paths, is_current=is_current
    )
    app = create_app(gallery, Batcher(embedder, gallery, max_batch, max_queue), embedder.input_shape, settings)
    return app, f"{describe(gallery)}; model compiled in {seconds:.1f} s"


def service_from_env():
    """The app of `open_service(**options)`, the options read from `SERVICE_ENV`."""
    return open_service(**json.loads(os.environ[SERVICE_ENV]))[0]


def gallery_summary(run_dir: str | Path, kind: str | None = None, ef_search: int | None = None) -> str:
    """Open RUN_DIR's gallery once (building an approximate index of `kind` if it has none):
    a line about it."""
    from clusterloss.app.gallery import open_run_gallery

    gallery = open_run_gallery(run_dir, kind=kind, ef_search=ef_search)
    try:
        gallery.flush()
        return describe(gallery)
    finally:
        gallery.close()


def describe(gallery) -> str:
    stats = gallery.stats()
    threshold = "no open-set threshold" if stats["threshold"] is None else f"threshold {stats['threshold']:.4f}"
    return f"{stats['size']} items of {stats['num_classes']} classes ({stats['kind']}, {stats['metric']}, {threshold})"

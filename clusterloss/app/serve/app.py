"""The HTTP routes of `clusterloss serve` (Starlette): search, enrol, remove, health, stats,
gallery thumbnails and the page at `/`. Every mistake is a 4xx with `{"error": message}`;
the server goes on serving."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from clusterloss.app.serve.batcher import Batcher, Busy
from clusterloss.app.serve.inputs import BodyLimit, Refusal, bad, read_request
from clusterloss.data import DataError
from clusterloss.data.images import decode_image
from clusterloss.gallery import UNKNOWN

MAX_K = 100
MAX_IMAGES = 256  # images in one enrolment
MAX_NAME = 200  # characters of a class name
THUMBNAIL = 128  # pixels, the longer side
INLINE_PIXELS = 256 * 256  # images decoded in the event loop at most (larger: in a thread)


@dataclass
class Settings:
    """How the service answers.

    Args:
        token: the bearer token that enrolment and removal need (None: they need none).
        max_bytes: the largest request body.
        max_pixels: the largest image decoded (width x height, from its header).
        uploads: where enrolled uploads are kept, so that they have thumbnails (None: not kept).
        show_paths: whether answers carry the gallery items' file paths.
        is_current: whether the open gallery is still the run's (enrolment is refused when not).
    """

    token: str | None = None
    max_bytes: int = 10 * 2**20
    max_pixels: int = 50_000_000
    uploads: Path | None = None
    show_paths: bool = True
    is_current: Callable[[], bool] = lambda: True


def create_app(gallery: Any, batcher: Batcher, input_shape: tuple[int, ...], settings: Settings) -> Starlette:
    """The ASGI app over an open `Gallery` and an unstarted `Batcher` (started and stopped
    with the app; the gallery is flushed and closed when the app stops)."""
    size, channels = input_shape[:2], input_shape[2]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()
            gallery.flush()
            gallery.close()

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        """A route's refusal as `{"error": ...}`; the router's own 404 and 405 named."""
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(error.status_code)
        if isinstance(error, Refusal) or not message:
            message = str(error.detail)
        return JSONResponse({"error": message}, error.status_code, error.headers)

    async def failed(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, 500)

    def check_token(request: Request) -> None:
        if settings.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Refusal(
                401,
                "enrolment and removal need the server's token: send the header 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            raise Refusal(403, "wrong token")

    def check_current() -> None:
        if not settings.is_current():
            raise bad(
                "the run's gallery was rebuilt since this server started (index build); restart "
                "clusterloss serve to use it",
                409,
            )

    def decode(images: list[bytes], name: str) -> np.ndarray:
        out = np.empty((len(images), *input_shape), np.float32)
        for i, data in enumerate(images):
            where = name if len(images) == 1 else f"{name}[{i}]"
            try:
                out[i] = decode_image(data, size, channels, settings.max_pixels)
            except DataError as error:
                raise bad(f"{where}: {error}") from None
        return out

    async def decoded(images: list[bytes], name: str) -> np.ndarray:
        """`decode` in the event loop when the images are small (cheaper than a thread's
        round trip), else in a worker thread."""
        if sum(header_pixels(data) for data in images) <= INLINE_PIXELS:
            return decode(images, name)
        return await run_in_threadpool(decode, images, name)

    def submit(pixels: np.ndarray, k: int | None):
        try:
            return batcher.submit(pixels, k)
        except Busy as error:
            raise Refusal(503, str(error), {"Retry-After": "1"}) from None

    async def answer(future) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except ValueError as error:  # the gallery's word: e.g. empty
            raise bad(str(error), 409) from None

    async def run_job(pixels: np.ndarray, k: int | None) -> Any:
        return await answer(submit(pixels, k))

    def present(answer: dict[str, Any]) -> dict[str, Any]:
        for neighbor in answer["neighbors"]:
            neighbor["image"] = None if neighbor["path"] is None else f"/items/{neighbor['id']}/image"
            if not settings.show_paths:
                del neighbor["path"]
        return answer

    async def search(request: Request) -> JSONResponse:
        batcher.incoming += 1  # the batch worker may wait for this one
        try:
            images, fields = await read_request(request, ("image",), ("k",), 1)
            k = fields.get("k", "5")
            if not (k.isdigit() and 1 <= int(k) <= MAX_K):
                raise bad(f"k must be an integer from 1 to {MAX_K}; got {k!r}")
            if not images.get("image"):
                raise bad("missing field 'image' (an image file; in JSON, base64)")
            if not len(gallery):
                raise bad("the gallery is empty: enrol someone first (POST /enroll)", 409)
            future = submit(await decoded(images["image"], "image"), int(k))
        finally:
            batcher.incoming -= 1
        answers = await answer(future)
        return JSONResponse(present(answers[0]))

    async def enroll(request: Request) -> JSONResponse:
        check_token(request)
        images, fields = await read_request(request, ("images", "image"), ("name",), MAX_IMAGES)
        name = fields.get("name", "").strip()
        if not name:
            raise bad("missing field 'name' (the class to enrol the images as)")
        if name == UNKNOWN or len(name) > MAX_NAME or not name.isprintable() or "/" in name:
            raise bad(
                f"name: {name[:40]!r} cannot be a class name (not {UNKNOWN!r}, printable, no '/', "
                f"at most {MAX_NAME} characters)"
            )
        files = images.get("images", []) + images.get("image", [])
        if not files:
            raise bad("missing field 'images' (one or more image files; in JSON, a list of base64)")
        check_current()
        pixels = await decoded(files, "images")
        embeddings = await run_job(pixels, None)
        paths, written = await run_in_threadpool(keep, name, files)
        try:
            ids = await run_in_threadpool(gallery.add, embeddings, name, paths)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return JSONResponse({"class": name, "added": len(ids), "ids": [int(i) for i in ids], "size": len(gallery)}, 201)

    async def remove(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        check_token(request)
        check_current()
        count = await run_in_threadpool(gallery.remove, classes=[name])
        if not count:
            raise bad(f"no class {name!r} in the gallery", 404)
        await run_in_threadpool(shutil.rmtree, class_folder(name), True)
        return JSONResponse({"class": name, "removed": count, "size": len(gallery)})

    async def item_image(request: Request) -> Response:
        text = request.path_params["item_id"]
        if not text.isdigit():
            raise bad(f"item_id must be a positive integer; got {text!r}")
        item_id = int(text)
        path = await run_in_threadpool(gallery.path_of, item_id) if 0 < item_id < 2**63 else None
        if path is None:
            raise bad(f"item {item_id} has no image (not in the gallery, or enrolled without a file)", 404)
        try:
            png = await run_in_threadpool(thumbnail, path)
        except (OSError, ValueError):
            raise bad(f"item {item_id}: its image file cannot be read", 404) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def health(request: Request) -> JSONResponse:
        if not batcher.alive:
            return JSONResponse({"status": "down", "error": "the batch worker stopped"}, 503)
        return JSONResponse({"status": "ok", "size": len(gallery), "waiting": batcher.waiting})

    async def stats(request: Request) -> JSONResponse:
        found = await run_in_threadpool(gallery.stats)
        if not settings.show_paths:
            found.pop("path", None)
        counts = dict(batcher.counts)
        service = {
            "input_shape": list(input_shape), "max_batch": batcher.max_batch, "max_queue": batcher.max_queue,
            "max_bytes": settings.max_bytes, "max_k": MAX_K, "token_required": settings.token is not None,
            "waiting": batcher.waiting, "current": settings.is_current(), "pid": os.getpid(), **counts,
            "mean_batch": counts["images"] / counts["batches"] if counts["batches"] else None,
        }  # fmt: skip
        return JSONResponse({"gallery": found, "service": service})

    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    def class_folder(name: str) -> Path:
        return (settings.uploads or Path()) / hashlib.sha256(name.encode()).hexdigest()[:16]

    def keep(name: str, files: list[bytes]) -> tuple[list[str | None], list[Path]]:
        """Write enrolled uploads under `settings.uploads`: their paths (Nones if not kept),
        and the files that are new."""
        if settings.uploads is None:
            return [None] * len(files), []
        folder = class_folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        paths, written = [], []
        for data in files:
            path = (folder / hashlib.sha256(data).hexdigest()[:24]).resolve()
            if not path.exists():
                path.write_bytes(data)
                written.append(path)
            paths.append(str(path))
        return paths, written

    routes = [
        Route("/search", search, methods=["POST"]),
        Route("/enroll", enroll, methods=["POST"]),
        Route("/classes/{name}", remove, methods=["DELETE"]),
        Route("/items/{item_id}/image", item_image, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BodyLimit, max_bytes=settings.max_bytes)],
        exception_handlers={HTTPException: http_error, Exception: failed},
        lifespan=lifespan,
    )


def header_pixels(data: bytes) -> int:
    """Width x height of an encoded image from its header (0 if it has none)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width * image.height
    except Exception:  # not an image: `decode` says so
        return 0


def thumbnail(path: str) -> bytes:
    """A PNG of the image file at `path`, at most `THUMBNAIL` pixels on its longer side."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decoded at a reduced scale
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, "PNG")
    return out.getvalue()

"""What a request may send, read with one clear message for each mistake: the body size
limit (`BodyLimit`, an ASGI middleware), images from a multipart form, a JSON object (base64)
or a raw image body, and the fields beside them."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_FIELDS = 16
DRAIN_FACTOR = 8  # a refused body is read up to this many times the limit before the answer


class TooLarge(Exception):
    """The body grew past the limit while it was read."""


class BodyLimit:
    """Refuse (413) a request whose body is, or turns out to be, larger than `max_bytes`:
    from its Content-Length at once, else counted as it streams in. The rest of the body is
    read and dropped first (up to `DRAIN_FACTOR` times the limit), so the client gets the
    answer rather than a connection reset."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:  # the HTTP parser holds the body to its declared length
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        received = 0
        started = ended = False

        async def counted() -> Message:
            nonlocal received, ended
            message = await receive()
            received += len(message.get("body", b""))
            ended = message["type"] != "http.request" or not message.get("more_body")
            if received > self.max_bytes:
                raise TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge:
            if not started:
                await self._refuse(scope, receive, send, drain=not ended)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, drain: bool = True) -> None:
        # Read (and drop) what the client is still sending, up to a bound: closing a socket
        # with unread data resets it, and the client would see a reset, not this answer. (Once
        # the body has ended, `receive` would wait for the client to leave: no more reading.)
        drained = 0
        while drain and drained <= DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            drained += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        message = f"the request body is larger than {self.max_bytes:,} bytes (the server's --max-bytes)"
        await JSONResponse({"error": message}, 413, {"Connection": "close"})(scope, receive, send)


class Refusal(HTTPException):
    """A route's answer to a request it cannot serve (not the router's own 404 or 405)."""


def bad(message: str, status: int = 400) -> Refusal:
    return Refusal(status, message)


def _base64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise bad(f"{name}: expected a base64 string; got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad(f"{name}: not base64 ({error})") from None


async def read_request(
    request: Request, images: tuple[str, ...], fields: tuple[str, ...], max_files: int
) -> tuple[dict[str, list[bytes]], dict[str, str]]:
    """`(images by field, text fields)` of a request: a multipart form (image files), a JSON
    object (images as base64 strings, or lists of them) or a raw `image/*` body (the field
    `image`); text fields may also come in the query string. A field that is not in `images`
    or `fields`, or the wrong type for one, is a 400."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    found: dict[str, list[bytes]] = {}
    texts = dict(request.query_params)
    if kind == "multipart/form-data":
        form = await request.form(max_files=max_files, max_fields=MAX_FIELDS)
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in images:
                    raise bad(f"unexpected file field {name!r}; this route takes files in {' or '.join(images)}")
                found.setdefault(name, []).append(await value.read())
            elif name in images:
                raise bad(f"{name}: expected an image file, got a text field")
            else:
                texts[name] = value
    elif kind == "application/json":
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            raise bad(f"the body is not valid JSON ({error})") from None
        if not isinstance(body, dict):
            raise bad(f"expected a JSON object; got {type(body).__name__}")
        for name, value in body.items():
            if name in images:
                values = value if isinstance(value, list) else [value]
                found[name] = [_base64(v, name) for v in values]
            elif isinstance(value, (str, int)) and not isinstance(value, bool):
                texts[name] = str(value)
            else:
                raise bad(f"{name}: expected a string or an integer; got {type(value).__name__}")
    elif kind.startswith("image/") and "image" in images:
        found["image"] = [await request.body()]
    else:
        raise bad(
            f"unsupported content type {kind or '(none)'!r}: send multipart/form-data, "
            "application/json (images in base64) or an image/* body",
            415,
        )
    unknown = sorted(set(texts) - set(fields) - set(images))
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}; this route takes {', '.join(images + fields)}")
    if sum(len(v) for v in found.values()) > max_files:
        raise bad(f"at most {max_files} images per request")
    return found, texts

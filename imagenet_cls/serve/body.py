"""ImageBody: every accepted ``POST /predict`` body becomes one JSON form before LitServe reads it.

LitServe hands a request's JSON (or form) to the inference worker through a queue, so the body must be plain data.
This ASGI middleware, in the HTTP server process, reads the body once (refusing it past ``max_body_bytes``), accepts

- ``multipart/form-data``: every file part is an image (``curl -F image=@cat.jpg -F image=@dog.png``);
- ``image/*`` or ``application/octet-stream``: the body is one image (``curl --data-binary @cat.jpg``);
- ``application/json``: ``{"image": BASE64}`` or ``{"images": [BASE64 | {"name": ..., "data": BASE64}, ...]}``
  (a ``data:image/...;base64,`` prefix is allowed),

and passes on ``{"images": [{"name", "data"}], "annotate", "top_k"}`` (query parameters ``annotate`` and ``top_k``).
Anything else is answered here with one clear message: 413 too large, 415 wrong content type, 400 malformed.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCEPTED = "multipart/form-data, image/*, application/octet-stream or application/json"


class BadBody(Exception):
    """A body this endpoint cannot take: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ImageBody:
    """ASGI middleware turning ``POST path`` bodies into LitServe's JSON (see the module docstring).

    Args:
        app: The application it wraps.
        max_body_bytes: Larger bodies get 413.
        max_images: More images in one request get 413.
        path: The prediction endpoint.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_images: int = 64, path: str = "/predict") -> None:
        self.app, self.max_body_bytes, self.max_images, self.path = app, max_body_bytes, max_images, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            body = await self._read(headers, receive)
            images = await self._images(headers, body)
            if len(images) > self.max_images:
                raise BadBody(413, f"{len(images)} images in one request; at most {self.max_images} (--max_images)")
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            payload = {"images": images, "annotate": _flag(query, "annotate"), "top_k": _top_k(query)}
        except BadBody as error:
            await JSONResponse({"detail": str(error)}, status_code=error.status)(scope, receive, send)
            return
        data = json.dumps(payload).encode()
        kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        replaced = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        scope = {**scope, "headers": [*kept, *replaced]}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # a disconnect, while the answer is computed
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, headers: Headers, receive: Receive) -> bytes:
        too_large = BadBody(413, f"the body is larger than {self.max_body_bytes} bytes (--max_body_bytes)")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadBody(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _images(self, headers: Headers, body: bytes) -> list[dict[str, str]]:
        content_type = headers.get("content-type", "")
        kind = content_type.split(";")[0].strip().lower()
        if not body:
            raise BadBody(400, f"the body is empty: send an image as {ACCEPTED}")
        if kind.startswith("image/") or kind == "application/octet-stream":
            name = unquote(headers.get("x-filename") or "image 1")  # the page sends it URL-encoded
            return [{"name": name, "data": base64.b64encode(body).decode("ascii")}]
        if kind == "application/json":
            return _json_images(body)
        if kind == "multipart/form-data":
            return await _form_images(content_type, body)
        raise BadBody(415, f"Content-Type {content_type or '(none)'} is not accepted: send {ACCEPTED}")


def _json_images(body: bytes) -> list[dict[str, str]]:
    try:
        document = json.loads(body)
    except ValueError as error:
        raise BadBody(400, f"the JSON body does not parse: {error}") from None
    if not isinstance(document, dict) or not ("image" in document or "images" in document):
        raise BadBody(400, 'the JSON body needs "image": BASE64 or "images": [BASE64, ...]')
    items = [document["image"]] if "image" in document else document["images"]
    if not isinstance(items, list):
        raise BadBody(400, '"images" must be a list of base64 strings or {"name", "data"} objects')
    images = []
    for number, item in enumerate(items, start=1):
        name, data = (item.get("name"), item.get("data")) if isinstance(item, dict) else (None, item)
        if not isinstance(data, str):
            raise BadBody(400, f"image {number} of the JSON body is not a base64 string")
        if data.startswith("data:") and "," in data:  # a data URL, as browsers write them
            data = data.split(",", 1)[1]
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadBody(400, f"image {number} of the JSON body is not valid base64") from None
        images.append({"name": str(name or f"image {number}"), "data": data})
    return images


async def _form_images(content_type: str, body: bytes) -> list[dict[str, str]]:
    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode("latin-1"))]}
    try:
        form = await Request(scope, once).form(max_files=10_000, max_fields=10_000)
    except Exception as error:  # starlette's MultiPartException and parser errors: a malformed form
        raise BadBody(400, f"the multipart body does not parse: {error}") from None
    images = []
    for _, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            name = value.filename or f"image {len(images) + 1}"
            images.append({"name": name, "data": base64.b64encode(data).decode("ascii")})
    await form.close()
    if not images:
        raise BadBody(400, "the multipart body holds no file: send each image as a file part")
    return images


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return (query.get(name) or ["false"])[-1].lower() in ("1", "true", "yes", "on")


def _top_k(query: dict[str, list[str]]) -> int | None:
    value: Any = (query.get("top_k") or [None])[-1]
    if value is None:
        return None
    if not str(value).isdigit() or int(value) < 1:
        raise BadBody(400, f"top_k={value} is not a positive integer")
    return int(value)

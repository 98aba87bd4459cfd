"""Reading the images of a ``POST /predict`` body, within the limits of ``serving:`` in params.yaml.

Two body forms: multipart files under the field ``files``, or JSON ``{"images": [base64, ...]}``. Every
problem with the request as a whole is an ``HTTPException`` with a reason for the sender; a problem with
one image is that image's ``InvalidImage`` (the others are answered), and only when no image is readable
does ``refuse`` answer 422 — or 413 when every image was refused for its size.
"""

from __future__ import annotations

import base64
import binascii
from typing import NoReturn

import numpy as np
from fastapi import HTTPException, Request
from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from visionloop.data.images import TOO_LARGE, InvalidImage, declared_size, validate_image_bytes
from visionloop.params import ServingParams
from visionloop.serving.schemas import ErrorResponse, ImageError, PredictJSON

_THREAD_DECODE_BYTES = 64 * 1024  # decode bigger uploads in a worker thread, off the event loop
_SPARE_PARTS = 8  # fields or strings besides the images a body may hold before it is refused unparsed

Part = tuple[str | None, "bytes | InvalidImage"]  # (multipart filename, the encoded image or why it is unreadable)
Decoded = np.ndarray | InvalidImage

PREDICT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One or several images: multipart files under the field `files` (repeat the field "
        "for several), or JSON with base64 images.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Encoded images (PNG, JPEG, BMP, GIF, TIFF, WebP).",
                        }
                    },
                    "required": ["files"],
                }
            },
            "application/json": {"schema": PredictJSON.model_json_schema()},
        },
    }
}
"""``openapi_extra`` of ``POST /predict``: the route reads its body itself, so FastAPI cannot infer it."""


async def read_images(request: Request, serving: ServingParams) -> list[Part]:
    """(filename, bytes) for each image sent, from a multipart form or a base64 JSON body."""
    content_type = request.headers.get("content-type", "")  # the multipart boundary is case-sensitive
    media_type = content_type.lower()
    body = await request.body()  # at most serving.max_payload_bytes: guards.RequestGuard refuses more
    if not body:
        raise HTTPException(400, "empty body: send images as multipart files under 'files' or JSON {'images': [...]}")
    if media_type.startswith("multipart/form-data"):
        parts = _multipart_files(content_type, body, serving.max_images)
    elif media_type.startswith("application/json"):
        parts = _json_images(body, serving.max_images)
    else:
        raise HTTPException(
            415,
            f"unsupported content type {content_type or 'none'!r}; use multipart/form-data or application/json",
        )
    if not parts:
        raise HTTPException(400, "no image in the request: send multipart files under 'files' or JSON 'images'")
    if len(parts) > serving.max_images:
        raise _too_many(f"{len(parts)} images", serving.max_images)
    _check_request_pixels(parts, serving)
    return parts


async def decode_images(parts: list[Part], channels: int, min_side: int, max_pixels: int) -> list[Decoded]:
    """Canonical pixels or the ``InvalidImage`` for each part (big uploads decode in a thread)."""

    def decode_all() -> list[Decoded]:
        out: list[Decoded] = []
        for _name, data in parts:
            if isinstance(data, InvalidImage):
                out.append(data)
                continue
            try:
                out.append(validate_image_bytes(data, channels=channels, min_side=min_side, max_pixels=max_pixels))
            except InvalidImage as exc:
                out.append(exc)
        return out

    total = sum(len(d) for _n, d in parts if isinstance(d, bytes))
    return await run_in_threadpool(decode_all) if total > _THREAD_DECODE_BYTES else decode_all()


def refuse(parts: list[Part], decoded: list[Decoded]) -> NoReturn:
    """Answer a request none of whose images could be read: 413 when all were too large, else 422."""
    errors = [
        ImageError(index=i, filename=name, error=exc.reason, error_code=exc.code)
        for i, ((name, _d), exc) in enumerate(zip(parts, decoded, strict=True))
        if isinstance(exc, InvalidImage)
    ]
    status = 413 if all(e.error_code == TOO_LARGE for e in errors) else 422
    if len(errors) == 1:
        detail = f"the image could not be read: {errors[0].error}"
    else:
        detail = f"none of the {len(errors)} images could be read"
    raise HTTPException(status, ErrorResponse(detail=detail, errors=errors).model_dump())


def _too_many(what: str, limit: int) -> HTTPException:
    return HTTPException(413, f"{what} in one request; the limit is {limit} images (serving.max_images)")


def _check_request_pixels(parts: list[Part], serving: ServingParams) -> None:
    """413 when the images together declare more than ``serving.max_request_pixels``, read from their headers
    before any is decoded: many images each just under ``max_pixels`` would otherwise all be decoded (and
    logged). Images over ``max_pixels`` are refused one by one without decoding, so they do not count."""
    if len(parts) * serving.max_pixels <= serving.max_request_pixels:
        return  # cannot be over (one or two images with the defaults): no header read on the common path
    total = 0
    for _name, data in parts:
        size = declared_size(data) if isinstance(data, bytes) else None
        if size is not None and size[0] * size[1] <= serving.max_pixels:
            total += size[0] * size[1]
    if total > serving.max_request_pixels:
        raise HTTPException(
            413,
            f"the images of this request hold {total:,} pixels together; the limit is "
            f"{serving.max_request_pixels:,} (serving.max_request_pixels): send fewer or smaller images per request",
        )


def _multipart_files(content_type: str, body: bytes, max_images: int) -> list[Part]:
    """(filename, bytes) of every file part of a multipart/form-data body; fields without a filename are
    ignored. python-multipart's parser straight into memory: the body is already bounded by the payload
    limit, so Starlette's form machinery (a spooled temporary file per part) would only add cost.

    The parts are counted first (a C-speed search for the boundary): the pure-Python parser would spend
    the event loop's time on a body of many thousand tiny parts."""
    _type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary parameter in the Content-Type header")
    delimiters = body.count(b"--" + boundary)  # one per part, and the closing one
    if delimiters - 1 > max_images + _SPARE_PARTS:
        raise _too_many(f"{delimiters - 1:,} multipart parts", max_images)
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    field, value, chunks = bytearray(), bytearray(), []

    def on_part_begin() -> None:
        headers.clear()
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        _disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if b"filename" in params:
            parts.append((params[b"filename"].decode("utf-8", "replace"), b"".join(chunks)))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(400, f"malformed multipart/form-data body: {exc}") from None
    return parts


def _json_images(body: bytes, max_images: int) -> list[Part]:
    """(None, bytes) per base64 image of a JSON body; an undecodable string is that image's ``bad_base64``.

    The strings are counted before parsing (a C-speed count of quotes: two per string, none inside
    base64), so a body of a million empty strings is refused without parsing it on the event loop."""
    strings = body.count(b'"') // 2 - 1  # less the key "images"
    if strings > max_images + _SPARE_PARTS:
        raise _too_many(f"about {strings:,} strings", max_images)
    try:
        payload = PredictJSON.model_validate_json(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "body"
        raise HTTPException(400, f'JSON body must be {{"images": [base64, ...]}}; {where}: {problem["msg"]}') from None
    parts: list[Part] = []
    for text in payload.images:
        encoded = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        try:
            parts.append((None, base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError):
            parts.append((None, InvalidImage("not valid base64", "bad_base64")))
    return parts

"""What every request passes before a route reads it: the Host allow-list, the same-origin check of
state-changing requests, the bearer token of requests with a body, and the body limit — and the 500
answer that tells a client nothing but a request id.

``RequestGuard`` is pure ASGI and looks only at the request line and headers, so the normal path pays a few
dictionary lookups (serving throughput, issue 13). It refuses, with a 4xx JSON ``{"detail": reason}``:

* a ``Host`` not in ``allowed_hosts`` (loopback names, ``serving.host``, ``serving.allowed_hosts``): a
  DNS-rebinding page reaches the server under its own name, so it is refused (400);
* a POST/PUT/PATCH/DELETE whose ``Origin`` (or, without one, ``Referer``) is another site's (403), or that
  comes as a CORS-simple content type (a form or ``text/plain``, what a cross-site page can send without a
  preflight) with no same-origin ``Origin``, except to ``/predict``, which curl feeds multipart (403);
* with a token set, a state-changing request without it (401), before any byte of its body is read;
* a body over the limit (413): ``serving.max_payload_bytes`` for ``/predict``,
  ``serving.max_body_bytes`` for every other route — at once when ``Content-Length`` declares it, else
  while the body streams in, never buffering more than the limit.

Every response carries an ``X-Request-ID``; ``internal_error`` logs an unexpected exception under it.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionloop.params import ServingParams

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
UPLOAD_PATH = "/predict"  # takes multipart uploads from scripts (no Origin), and the larger body limit
REQUEST_ID_HEADER = "X-Request-ID"
_PROCESS_ID = os.urandom(4).hex()  # request ids: this start's random prefix and a counter, unique without a syscall
_REQUEST_NUMBERS = itertools.count(1)
_DRAIN_FACTOR = 4  # a body past its limit is read (and dropped) up to 4× it, so that the client hears the 413


class RequestGuard:
    """The ASGI middleware described in this module's docstring; ``token`` None: no token required."""

    def __init__(self, app: ASGIApp, serving: ServingParams, token: str | None) -> None:
        self.app = app
        self.hosts = allowed_hosts(serving.host, serving.allowed_hosts)
        self.token = token.encode() if token else None
        self.limits = (
            (serving.max_payload_bytes, "serving.max_payload_bytes"),
            (serving.max_body_bytes, "serving.max_body_bytes"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        headers = _headers(scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, detail, extra = refusal
            await JSONResponse({"detail": detail}, status_code=status, headers=extra)(scope, receive, send_with_id)
            return
        await self.app(scope, _limited(receive, *self.limit(scope["path"])), send_with_id)

    def limit(self, path: str) -> tuple[int, str]:
        """The body limit of a route and the param that sets it."""
        return self.limits[0] if path == UPLOAD_PATH else self.limits[1]

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str] | None] | None:
        """(status, reason, headers) of a request refused on its headers alone, or None."""
        host = headers.get("host")
        if host is not None and self.hosts is not None and hostname_of(host) not in self.hosts:
            return 400, f"host {host!r} is not served here (serving.allowed_hosts)", None
        if scope["method"] in STATE_CHANGING:
            source = headers.get("origin", headers.get("referer"))
            from_here = source is not None and host is not None and same_origin(source, host)
            if source is not None and not from_here:
                return 403, "cross-origin request refused: its Origin or Referer is not this server", None
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type in SIMPLE_CONTENT_TYPES and not from_here and scope["path"] != UPLOAD_PATH:
                return 403, f"{media_type} is refused here without a same-origin Origin; send application/json", None
            if self.token is not None and not token_matches(headers.get("authorization"), self.token):
                return 401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
        limit, param = self.limit(scope["path"])
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _DRAIN_FACTOR * limit:
            return 413, _too_large(limit, param), None
        return None


def allowed_hosts(host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The names the server answers to (lower case, no port); None when ``extra`` holds ``*`` (any)."""
    names = {*LOOPBACK_HOSTS, host, *extra}
    if "*" in names:
        return None
    return frozenset(hostname_of(name) for name in names)


def new_request_id() -> str:
    """An id for one request, in its answer's header and the log: unique across this server's starts."""
    return f"{_PROCESS_ID}-{next(_REQUEST_NUMBERS):x}"


def token_matches(authorization: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header carries ``token`` as its bearer token (constant-time compare)."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(credentials.strip().encode(), token)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """An unexpected exception: the traceback goes to the server log under a request id, the client gets
    only that id — never a path or an exception's text."""
    request_id = request.scope.get("state", {}).get("request_id") or new_request_id()
    log.error(
        "internal error answering %s %s (request id %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return JSONResponse(
        {"detail": "internal error", "request_id": request_id},
        status_code=500,
        headers={REQUEST_ID_HEADER: request_id},
    )


def _limited(receive: Receive, limit: int, param: str) -> Receive:
    """``receive`` that raises 413 once the body passes ``limit`` bytes (inside the route that reads it)."""
    size = 0

    async def receive_limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                while message.get("more_body", False) and size <= _DRAIN_FACTOR * limit:
                    message = await receive()
                    size += len(message.get("body", b""))
                raise HTTPException(413, _too_large(limit, param))
        return message

    return receive_limited


def _too_large(limit: int, param: str) -> str:
    return f"payload is larger than the limit of {limit:,} bytes ({param})"


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name (the first of repeated ones), decoded as latin-1."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def hostname_of(host: str) -> str:
    """The name of a ``Host`` value without its port: ``[::1]:8000`` → ``::1``, ``Example:80`` → ``example``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(source: str, host: str) -> bool:
    """Whether an ``Origin``/``Referer`` URL names the server the request was sent to (host and port)."""
    origin = urlsplit(source)
    if origin.scheme not in ("http", "https") or not origin.hostname:
        return False  # includes the "null" Origin of sandboxed pages and files
    default = 443 if origin.scheme == "https" else 80
    target = urlsplit(f"//{host}")
    try:
        return origin.hostname == target.hostname and (origin.port or default) == (target.port or default)
    except ValueError:  # a port that is not a number
        return False

"""Optional bearer-token auth for every protected route: off unless ``serving.token`` / ``VISIONLOOP_TOKEN``
is set."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


def token_dependencies(token: str | None) -> list[Any]:
    """``dependencies=`` for a protected route. None without a token: no per-request cost, and /docs shows
    the bearer scheme only when one is required."""
    if token is None:
        return []
    bearer = HTTPBearer(auto_error=False, description="The token set in serving.token / VISIONLOOP_TOKEN.")
    expected = token.encode()

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        # async: a sync dependency would cost every request a hop through the thread pool
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]

"""The browser pages, plain HTML and a little JavaScript from ``serving/static``: no token needed to load them.

* ``GET /`` — try the model: upload images, see the answers, send the true label back.
* ``GET /label`` — the labeling queue; ``GET /label/review`` — the review of disputed training labels.
* ``GET /docs`` — the API, rendered in the page from ``/openapi.json``. FastAPI's own Swagger UI loads its
  files from a CDN and shows a blank page offline; no installed package ships them, so ``create_app``
  turns it off (``docs_url=None``) and this page takes its place.

The pages call the JSON API (``routes.predict``, ``routes.feedback``, ``routes.labeling``); when a token
is configured they ask for it once and keep it in the tab's session storage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent.parent / "static"
ASSETS = {
    "label.css": "text/css",
    "label.js": "text/javascript",
    "review.js": "text/javascript",
    "docs.css": "text/css",
    "docs.js": "text/javascript",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/label")
def label_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "label.html", media_type="text/html")


@router.get("/label/review")
def review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html")


@router.get("/docs")
def api_docs() -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")


@router.get("/label/assets/{name}")
def asset(name: str) -> FileResponse:
    """Only the named assets: the name is never joined to a path unchecked."""
    if name not in ASSETS:
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name])

"""The browser pages as HTML: what they load, and that none of it comes from another host."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from helpers.project import repo_params

from visionloop.config import Settings
from visionloop.params import validate_params
from visionloop.serving.app import create_app


class NoModel:
    """A model source with nothing to serve: the pages and the schema need no model."""

    def current_version(self) -> None:
        return None

    def load(self, version: str) -> None:
        raise LookupError(version)


def test_docs_page_is_served_locally_and_renders_openapi(tmp_path: Path) -> None:
    settings = Settings(root=tmp_path, params=validate_params(repo_params({}), "test params"))
    client = TestClient(create_app(settings, NoModel()), base_url="http://127.0.0.1")
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert all(not re.match(r"(https?:)?//", url) for url in assets), assets  # nothing from another host
    for asset in [url for url in assets if url.startswith("/label/assets/")]:
        body = client.get(asset)
        assert body.status_code == 200, asset
        assert not re.search(r"https?://", body.text), asset
    assert "/openapi.json" in client.get("/label/assets/docs.js").text
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/redoc").status_code == 404  # ReDoc also loads from a CDN: off

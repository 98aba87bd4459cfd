"""`visionloop demo` ends with where to look: the running stack's addresses with --keep."""

from __future__ import annotations

from pathlib import Path

from helpers.project import repo_params

from flows.demo import stack_addresses
from visionloop.config import Settings
from visionloop.params import validate_params
from visionloop.stack import StackUrls

URLS = StackUrls(
    prefect_api="http://127.0.0.1:4200/api",
    prefect_ui="http://127.0.0.1:4200",
    mlflow="http://127.0.0.1:5000",
    serve="http://127.0.0.1:8000",
    evidently="http://127.0.0.1:8001",
)


def settings(tmp_path: Path) -> Settings:
    return Settings(root=tmp_path, params=validate_params(repo_params({}), "test params"))


def test_kept_stack_lists_every_address(tmp_path: Path) -> None:
    text = "\n".join(stack_addresses(URLS, settings(tmp_path), kept=True))
    for address in ("http://127.0.0.1:4200/runs", "http://127.0.0.1:5000/#/models/", "http://127.0.0.1:8001",
                    "http://127.0.0.1:8000/docs", "http://127.0.0.1:8000/label", "visionloop down"):
        assert address in text, address
    assert "visionloop up" not in text  # nothing to start: it is running


def test_stopped_stack_says_how_to_start_it(tmp_path: Path) -> None:
    text = "\n".join(stack_addresses(URLS, settings(tmp_path), kept=False))
    assert "visionloop up" in text and "http://" not in text

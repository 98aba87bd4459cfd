"""The prediction diff on hand-made answers: which images flip, how they are grouped, what is written and served."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers.project import REPO
from PIL import Image

from visionloop.config import Settings
from visionloop.contracts import DiffSummary
from visionloop.promotion.diff import compare_predictions, describe_flips
from visionloop.promotion.diff_gallery import galleries, gallery_file, reports_root, write_gallery
from visionloop.serving.routes import diffs


def one_hot(classes: list[str], answers: list[str], confidence: float = 0.9) -> np.ndarray:
    probabilities = np.full((len(answers), len(classes)), (1 - confidence) / (len(classes) - 1), np.float32)
    for row, answer in enumerate(answers):
        probabilities[row, classes.index(answer)] = confidence
    return probabilities


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("VISIONLOOP_STATE_DIR", str(tmp_path / "state"))
    return Settings.load(REPO, {"registry": {"diff": {"images_per_flip": 2, "flip_types": 2}}})


def test_flips_are_grouped_by_type_most_frequent_first_with_fixed_and_broken_counted(settings):
    # Model B knows a class A does not ("<x>": escaped on the page); classes are compared by name.
    a_classes, b_classes = ["cat", "dog", "fox"], ["dog", "cat", "fox", "<x>"]
    a = ["cat", "cat", "cat", "dog", "dog", "fox", "fox"]
    b = ["dog", "dog", "dog", "cat", "dog", "<x>", "fox"]
    truth = ["cat", "dog", None, "cat", "dog", "fox", "fox"]
    images = [np.full((8, 8), 30 * i, np.uint8) for i in range(len(a))]
    diff = compare_predictions(images, truth, (a_classes, one_hot(a_classes, a)),
                               (b_classes, one_hot(b_classes, b, 0.8)), ("m v1", "m v2"), "a test")
    summary = write_gallery(settings, diff, reports_root(settings) / "one")

    assert [(g.flip, g.count, g.fixed, g.broken) for g in summary.groups] == [
        ("cat→dog", 3, 1, 1), ("dog→cat", 1, 1, 0), ("fox→<x>", 1, 0, 1)]
    assert summary.totals() == {"images": 7, "flipped": 5, "fixed": 2, "broken": 2}
    assert summary.n_labeled == 6
    assert describe_flips(summary.totals()) == (
        "5 of 7 images change their answer (2 fixed, 2 broke a known label)")

    folder = reports_root(settings) / "one"
    assert DiffSummary.from_dict(json.loads((folder / "diff.json").read_text())) == summary
    page = (folder / "diff.html").read_text()
    assert "fox→&lt;x&gt;" in page and "<x>" not in page  # counted in the table, escaped, beyond flip_types: no images
    figure = r'<figure class="([\w-]+)">.*?A m v1: <b>(.*?)</b>.*?B m v2: <b>(.*?)</b>.*?true: <b>(.*?)</b>'
    shown = re.findall(figure, page)
    # Two images per type (images_per_flip), broken first, then fixed; two types (flip_types).
    assert shown == [("broken", "cat", "dog", "cat"), ("fixed", "cat", "dog", "dog"), ("fixed", "dog", "cat", "cat")]
    assert "(2 shown, 1 more)" in page and "1 rarer flip type(s)" in page
    with Image.open(folder / "diff.png") as montage:
        montage.load()
        assert montage.width >= 720 and montage.height > 100


def test_no_flip_still_writes_a_page_and_a_montage(settings):
    classes = ["a", "b"]
    answers = one_hot(classes, ["a", "b"])
    diff = compare_predictions([np.zeros((8, 8), np.uint8)] * 2, ["a", "b"], (classes, answers), (classes, answers),
                               ("x", "y"))
    summary = write_gallery(settings, diff, reports_root(settings) / "same")
    assert (summary.n_flipped, summary.groups) == (0, [])
    assert "No image changes its answer." in (reports_root(settings) / "same" / "diff.html").read_text()
    with Image.open(reports_root(settings) / "same" / "diff.png") as montage:
        montage.load()


def test_the_route_serves_only_files_of_listed_galleries(settings):
    classes = ["a", "b"]
    diff = compare_predictions([np.zeros((8, 8), np.uint8)], ["a"], (classes, one_hot(classes, ["a"])),
                               (classes, one_hot(classes, ["b"])), ("x", "y"))
    write_gallery(settings, diff, reports_root(settings) / "first")
    write_gallery(settings, diff, reports_root(settings) / "second")
    (settings.state_dir / "reports" / "secret.json").write_text("{}")
    app = FastAPI()
    app.state.settings = settings
    app.include_router(diffs.router)
    client = TestClient(app)

    listing = client.get("/label/diffs").json()
    assert [g["name"] for g in listing["galleries"]] == ["second", "first"]
    assert listing["galleries"][0]["flips"] == {"a→b": 1} and listing["galleries"][0]["broken"] == 1
    assert client.get("/label/diffs/latest/diff.json").json()["model_b"] == "y"
    assert client.get("/label/diffs/first/diff.png").headers["content-type"] == "image/png"
    for bad in ("/label/diffs/first/secret.json", "/label/diffs/..%2Fsecret.json/diff.json",
                "/label/diffs/nothing/diff.html", "/label/diffs/first/..%2F..%2Fsecret.json"):
        answer = client.get(bad)
        assert answer.status_code == 404 and "detail" in answer.json(), bad
    assert gallery_file(settings, "..", "diff.json") is None
    assert [name for name, _ in galleries(settings)] == ["second", "first"]

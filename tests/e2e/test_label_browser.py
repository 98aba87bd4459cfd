"""End to end in headless Chromium: the real server, predictions through POST /predict, the queue filled by
the rules, three images labeled with the keyboard on /label, and a disputed training label corrected on
/label/review into a new data snapshot."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.browser import CHROMIUM
from helpers.images import png
from helpers.models import eval_transform_json
from helpers.project import repo_params
from helpers.server import serve, wait_for

CLASSES = [str(d) for d in range(10)]
PER_CLASS = 30
FLIPPED = 12  # training images moved to a wrong class folder

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)


class PixelNetwork:
    """Builds a network whose embedding is the image averaged down to 8×8 (the digits' own pixels)."""

    @staticmethod
    def build() -> Any:
        import torch
        import torch.nn.functional as F
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.head = nn.Linear(64, len(CLASSES))

            def embedding(self, x: torch.Tensor) -> torch.Tensor:
                return F.avg_pool2d(x, 4).flatten(1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.embedding(x))

        torch.manual_seed(0)
        net = Net()
        with torch.no_grad():
            net.head.weight.mul_(0.2)  # an untrained head: low-confidence answers for the queue
        return net


class PixelSource:
    """A ``ModelSource`` with one fixed version of the pixel model."""

    def current_version(self) -> str:
        return "1"

    def load(self, version: str) -> Any:
        from visionloop.models.bundle import ServableModel

        transform = eval_transform_json()
        config = {"in_channels": 1, "embedding_dim": 64, "num_classes": len(CLASSES)}
        return ServableModel(PixelNetwork.build(), transform, list(CLASSES), config, name="digits-px", version=version)


@dataclass
class Served:
    url: str
    settings: Any
    flipped: dict[str, tuple[str, str]]  # source file name → (true label, given label)
    digits: list[np.ndarray]


def make_source(root: Path) -> tuple[dict[str, tuple[str, str]], list[np.ndarray]]:
    """30 embedded digits per class as a class-per-folder source, with ``FLIPPED`` of them in a wrong folder."""
    from visionloop.data.digits import import_digits
    from visionloop.data.images import load_image

    raw = root / "all"
    import_digits(raw, 32)
    source = root / "incoming"
    rng = np.random.default_rng(5)
    flipped: dict[str, tuple[str, str]] = {}
    kept: list[Path] = []
    for label in CLASSES:
        kept += sorted((raw / label).glob("*.png"))[:PER_CLASS]
    for index in rng.choice(len(kept), size=FLIPPED, replace=False):
        path = kept[index]
        wrong = str((int(path.parent.name) + 1 + rng.integers(0, 9)) % 10)
        flipped[path.name] = (path.parent.name, wrong)
    for path in kept:
        label = flipped.get(path.name, (None, path.parent.name))[1]
        (source / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, source / label / path.name)
    digits = [load_image(p) for p in sorted((raw / "5").glob("*.png"))[PER_CLASS : PER_CLASS + 3]]
    digits += [load_image(p) for p in sorted((raw / "8").glob("*.png"))[PER_CLASS : PER_CLASS + 2]]
    shutil.rmtree(raw)
    return flipped, digits


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:

    from visionloop.config import Settings
    from visionloop.data.prepare import prepare_from_settings
    from visionloop.serving.app import create_app

    root = tmp_path_factory.mktemp("labelproject")
    flipped, digits = make_source(root)
    params = repo_params(
        {"data": {"source": "incoming", "prepared_dir": "data/prepared"}, "serving": {"poll_seconds": 60}}
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    settings = Settings.load(root)
    prepare_from_settings(settings)

    with serve(create_app(settings, PixelSource())) as url:
        yield Served(url, settings, flipped, digits)


def test_label_three_images_with_the_keyboard(served: Served, browser: Any, tmp_path: Path) -> None:
    from visionloop.labeling.queue import LABELED, LabelQueue
    from visionloop.labeling.rules import LabelingRules
    from visionloop.labeling.scan import enqueue_from_log
    from visionloop.store.predlog import PredictionLog

    files = [("files", (f"digit{i}.png", png(image), "image/png")) for i, image in enumerate(served.digits)]
    answer = httpx.post(f"{served.url}/predict", files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    ids = [p["prediction_id"] for p in answer.json()["predictions"]]
    plog = PredictionLog(served.settings.db_url)
    wait_for(lambda: plog.count() == len(ids), "the log writer (it stores predictions off the request path)")
    result = enqueue_from_log(served.settings, plog)
    assert result.queued["low_confidence"] == len(ids)  # an untrained head: every answer is unsure
    queue = LabelQueue(plog, LabelingRules.from_settings(served.settings))

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{served.url}/label")
    page.wait_for_function("document.body.dataset.state === 'ready'")
    assert page.locator("#classes button").count() == len(CLASSES)
    assert page.locator("#guesses li").count() == 5
    page.wait_for_function("document.getElementById('image').naturalWidth === 32")
    page.screenshot(path=str(tmp_path / "label.png"), full_page=True)

    def press(key: str) -> str:
        """Press a key on the image shown; wait until the next one (or the empty queue) is on screen."""
        current = page.text_content("#prediction-id")
        page.keyboard.press(key)
        page.wait_for_function(
            "([id]) => document.body.dataset.state === 'empty' || (document.body.dataset.state === 'ready' && "
            "document.getElementById('prediction-id').textContent !== id)",
            arg=[current],
        )
        return current

    keys = ["5", "5", "8"]
    shown = [press(key) for key in keys]
    assert len(set(shown)) == 3 and set(shown) <= set(ids)
    for prediction_id, key in zip(shown, keys, strict=True):
        assert plog.get(prediction_id).feedback_label == CLASSES[int(key)]
        assert queue.get(prediction_id)["state"] == LABELED
    progress = queue.progress()
    assert progress["labeled"] == 3 and progress["queued"] == len(ids) - 3
    assert page.text_content("#p-labeled") == "3"
    assert page.text_content("#p-queued") == str(len(ids) - 3)
    assert "Labeled as 8" in page.text_content("#status")

    # skip and "not a valid image" empty the queue
    skipped, invalid = press("s"), press("x")
    assert page.evaluate("document.body.dataset.state") == "empty" and page.is_visible("#empty")
    assert "not a valid image" in page.text_content("#status")
    assert queue.get(skipped)["state"] == "skipped" and queue.get(invalid)["state"] == "invalid"
    assert plog.get(skipped).feedback_label is None and plog.get(invalid).feedback_label is None
    assert httpx.get(f"{served.url}/metrics/labeling").json()["labeled"] == 3
    assert errors == []
    page.close()
    plog.dispose()


def test_review_corrects_a_disputed_training_label_into_a_new_snapshot(
    served: Served, browser: Any, tmp_path: Path
) -> None:
    from visionloop.data.snapshot import latest_snapshot
    from visionloop.promotion.diff import compare_predictions
    from visionloop.promotion.diff_gallery import new_gallery_dir, write_gallery

    # A prediction-diff gallery in the reports folder: the review page links the newest one.
    answers = np.eye(len(CLASSES), dtype=np.float32)[[5, 8]]
    diff = compare_predictions(served.digits[:2], ["5", "5"], (CLASSES, answers), (CLASSES, answers[[1, 1]]),
                               ("pixels v1", "pixels v2"), "promotion v1→v2: refused")
    write_gallery(served.settings, diff, new_gallery_dir(served.settings, diff.model_a, diff.model_b))

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{served.url}/label/review")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    page.wait_for_selector("#diff:not([hidden])")
    assert page.text_content("#diff-summary") == (
        "promotion v1→v2: refused: 1 of 2 images change their answer (0 fixed, 1 broke a known label).")
    with page.context.expect_page() as opened:
        page.click("#diff-link")
    gallery = opened.value
    gallery.wait_for_load_state()
    assert gallery.title() == "promotion v1→v2: refused" and gallery.locator("figure.broken").count() == 1
    gallery.close()
    items = httpx.get(f"{served.url}/label/review/items", params={"limit": 1000}).json()["items"]
    by_sha = {item["sha256"]: item for item in items}
    assert page.locator(".suspect").count() == min(len(items), 60) > 0
    prepared = len(pd.read_csv(served.settings.path("data/prepared/manifest.csv")))
    computed = page.text_content("#computed")
    assert computed.startswith("Computed ") and "unknown" not in computed, computed
    assert f"over {prepared} prepared images" in computed, computed  # labeling.review.splits: every split
    page.wait_for_timeout(300)  # let the thumbnails arrive
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)

    manifest = pd.read_csv(served.settings.path("data/prepared/manifest.csv"), dtype=str)
    manifest["name"] = manifest["source_path"].map(lambda p: Path(p).name)
    flipped_shas = {
        row.sha256: served.flipped[row.name] for row in manifest.itertuples() if row.name in served.flipped
    }
    found = [sha for sha in by_sha if sha in flipped_shas]
    assert len(found) >= FLIPPED // 2, f"only {len(found)} of {FLIPPED} flipped labels among the suspects"

    target = found[0]
    true_label, given_label = flipped_shas[target]
    card = page.locator(f".suspect[data-sha256='{target}']")
    card.locator("select").select_option(true_label)
    page.wait_for_function(f"document.querySelector(\".suspect[data-sha256='{target}']\").classList.contains('done')")
    other = next(sha for sha in by_sha if sha != target)
    page.locator(f".suspect[data-sha256='{other}'] button", has_text="Keep").click()
    page.wait_for_function(f"document.querySelector(\".suspect[data-sha256='{other}']\").classList.contains('done')")
    assert page.text_content("#apply") == "Apply 1 correction as a new data version"

    page.click("#apply")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('New data version')")
    snapshot = latest_snapshot(served.settings)
    assert snapshot is not None
    table = pd.read_csv(snapshot)
    corrected = table[table["origin"] == "correction"]
    assert corrected["label"].astype(str).tolist() == [true_label]
    assert len(table) == len(CLASSES) * PER_CLASS
    # the source itself is untouched: the file still sits in the wrong folder
    name = manifest.set_index("sha256").loc[target, "name"]
    assert (served.settings.path("incoming") / given_label / name).exists()
    # decided images leave the list
    again = httpx.get(f"{served.url}/label/review/items", params={"limit": 1000}).json()
    remaining = {item["sha256"] for item in again["items"]}
    assert target not in remaining and other not in remaining
    page.close()


def test_api_docs_render_with_the_network_blocked(served: Served, browser: Any) -> None:
    """/docs lists the operations of /openapi.json while every request off the loopback is refused."""
    context = browser.new_context()
    refused: list[str] = []

    def only_loopback(route: Any) -> None:
        if route.request.url.startswith(served.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto(f"{served.url}/docs")
    page.wait_for_selector("body[data-state=ready]")
    predict = page.locator("details.op[data-path='/predict'][data-method=post]")
    assert predict.is_visible() and "/predict" in predict.inner_text()
    predict.locator("summary").click()
    assert "Request body" in predict.inner_text() and "200" in predict.inner_text()
    assert page.locator("details.op[data-path='/label/next']").count() == 1
    assert refused == []
    context.close()

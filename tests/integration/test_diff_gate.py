"""The prediction-diff gallery of a real gate decision: a challenger that swaps two classes, so every flip is known.

The challenger is the session champion with the classifier-head rows of classes 3 and 8 swapped: each
gate-set image the champion calls 3 becomes an 8 and each 8 a 3, and nothing else changes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from visionloop.cli.main import app
from visionloop.config import Settings
from visionloop.contracts import BUNDLE_FILES, CHALLENGER
from visionloop.data.images import load_image
from visionloop.models.bundle import ServableModel
from visionloop.models.cache import version_dir
from visionloop.models.registry import model_version
from visionloop.models.tracking import log_run
from visionloop.promotion.audit import decision_run_id, history
from visionloop.promotion.diff_gallery import diff_models
from visionloop.promotion.promote import promote

SWAPPED = ("3", "8")


def swapped_bundle(champion_dir: Path, folder: Path) -> Path:
    """A copy of the champion's bundle whose head answers 8 where it answered 3, and 3 where 8."""
    shutil.copytree(champion_dir / "bundle", folder / "bundle")
    classes = json.loads((folder / BUNDLE_FILES["classes"]).read_text())
    i, j = (classes.index(name) for name in SWAPPED)
    path = folder / BUNDLE_FILES["state_dict"]
    state = torch.load(path, weights_only=True)
    for key in ("head.weight", "head.bias"):
        state[key][[i, j]] = state[key][[j, i]]
    torch.save(state, path)
    return folder


def expected_flips(champion: ServableModel, images, labels) -> list[tuple[str, str, str]]:
    """(before, after, true label) of every gate-set image the swap flips."""
    predicted = [champion.classes[k] for k in champion.predict(images).labels_idx]
    swap = {SWAPPED[0]: SWAPPED[1], SWAPPED[1]: SWAPPED[0]}
    return [(p, swap[p], t) for p, t in zip(predicted, labels, strict=True) if p in swap]


def shown_flips(page: str) -> list[tuple[str, str, str]]:
    figure = r'<figure class="[\w-]+">.*?A [^:]*: <b>(.*?)</b>.*?B [^:]*: <b>(.*?)</b>.*?true: <b>(.*?)</b>'
    return re.findall(figure, page)


def test_the_gate_writes_and_logs_a_gallery_of_exactly_the_known_flips(trained_copy: Settings, tmp_path: Path):
    settings = trained_copy.with_overrides({"registry": {"diff": {"images_per_flip": 1000}}})  # show every flip
    champion_dir = version_dir(settings, model_version(settings, "1"))
    champion = ServableModel.from_dir(champion_dir, name=settings.model_name, version="1")
    manifest = pd.read_csv(champion_dir / BUNDLE_FILES["test_set"] / "manifest.csv", dtype=str)
    images = [load_image(champion_dir / BUNDLE_FILES["test_set"] / p) for p in manifest["path"]]
    labels = manifest["label"].tolist()
    expected = expected_flips(champion, images, labels)
    by_type = Counter(f"{before}→{after}" for before, after, _ in expected)
    assert len(by_type) == 2 and min(by_type.values()) > 5, by_type  # both directions occur on the gate set

    # The library on two models in memory: exactly the expected flips, grouped by type, with true labels.
    swapped_dir = swapped_bundle(champion_dir, tmp_path / "swapped")
    challenger = ServableModel.from_dir(swapped_dir, name="swapped", version="local")
    summary = diff_models(settings, champion, challenger, images, labels, tmp_path / "gallery")
    assert {g.flip: g.count for g in summary.groups} == dict(by_type)
    assert [g.flip for g in summary.groups] == [flip for flip, _ in by_type.most_common()]
    page = (tmp_path / "gallery" / "diff.html").read_text()
    assert sorted(shown_flips(page)) == sorted(expected)
    headings = [page.index(f'<h2 id="{g.flip}">{g.flip} · {g.count} image(s)') for g in summary.groups]
    assert headings == sorted(headings)  # one heading per flip type, most frequent first
    assert summary.fixed == sum(truth == after for _, after, truth in expected)
    assert summary.broken == sum(truth == before for before, _, truth in expected)

    # A gate decision: the swapped model registered as v2 and gated; the gallery comes from the gate's predictions.
    run_id = log_run(settings, run_name="swapped", files=[(swapped_dir / "bundle", "bundle")])
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    version = client.create_model_version(settings.model_name, f"runs:/{run_id}/bundle", run_id=run_id).version
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    record = promote(settings, trigger="test")
    assert record.decision == "refused" and "F1 dropped" in record.reason  # classes 3 and 8 collapse
    assert record.flips == {"images": len(images), "flipped": len(expected), "fixed": summary.fixed,
                            "broken": summary.broken}
    assert history(settings)[0].flips == record.flips
    assert f"{len(expected)} of {len(images)} images change their answer" in client.get_model_version(
        settings.model_name, version).description

    run = client.get_run(decision_run_id(settings, record))
    assert {a.path for a in client.list_artifacts(run.info.run_id, "diff")} == {
        "diff/diff.html", "diff/diff.png", "diff/diff.json"}
    assert run.data.metrics["diff.flipped"] == len(expected)
    logged = Path(client.download_artifacts(run.info.run_id, "diff", str(tmp_path / "logged")))
    gate_page = (logged / "diff.html").read_text()
    assert sorted(shown_flips(gate_page)) == sorted(expected) and "promotion v1→v2: refused" in gate_page
    with Image.open(logged / "diff.png") as montage:
        montage.load()
        assert montage.height > 2 * 64

    # `visionloop diff 1 2` compares on the same gate set: the same flips, written under the reports folder.
    result = CliRunner().invoke(app, ["diff", "1", str(version), "--json"], env={
        "VISIONLOOP_PROJECT_DIR": str(settings.root)})
    assert result.exit_code == 0, result.output
    cli_summary = json.loads(result.output)
    assert {g["flip"]: g["count"] for g in cli_summary["groups"]} == dict(by_type)
    assert Path(cli_summary["folder"]).parent == settings.state_dir / "reports" / "diffs"

    # Any two models on any images: an alias and a bundle folder, class-named folders giving the true labels.
    folder = tmp_path / "images"
    for name in ("3", "8", "other"):
        (folder / name).mkdir(parents=True)
    threes = [i for i, label in enumerate(labels) if label == "3"][:3]
    for n, i in enumerate(threes):
        Image.fromarray(images[i]).save(folder / "3" / f"{n}.png")
        Image.fromarray(images[i]).save(folder / "other" / f"{n}.png")  # not a class: no true label
    (folder / "8" / "broken.png").write_text("not an image")
    result = CliRunner().invoke(app, ["diff", "champion", str(swapped_dir), str(folder), "--out", str(tmp_path / "c")],
                                env={"VISIONLOOP_PROJECT_DIR": str(settings.root)})
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "c" / "diff.json").read_text())
    assert (written["n_images"], written["n_labeled"]) == (6, 3) and "skipped 8/broken.png" in result.output
    assert f"gallery: {tmp_path / 'c' / 'diff.html'}" in result.output

"""The data step: every kind of bad file, conversions, manifests, determinism, the split, the CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from visionloop.data.digits import import_digits
from visionloop.data.images import (
    InvalidImage,
    canonicalize_image_bytes,
    load_image,
    pixel_sha256,
    validate_image_bytes,
)
from visionloop.data.ingest import ingest
from visionloop.data.manifest import read_manifest
from visionloop.data.prepare import prepare

LIMITS = {"channels": 1, "min_side": 8, "max_pixels": 25_000_000}
SPLIT = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 7}
PARAMS_YAML = Path(__file__).resolve().parents[2] / "params.yaml"


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gray(seed: int, size: int = 16) -> Image.Image:
    """A small grayscale image whose pixels differ from every other seed's."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares width×height 8-bit gray pixels (never decodable)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def reason_code(data: bytes, **overrides) -> str:
    with pytest.raises(InvalidImage) as caught:
        validate_image_bytes(data, **{**LIMITS, **overrides})
    assert str(caught.value), "a reason must be given"
    return caught.value.code


# --- one file at a time ------------------------------------------------------------------------


def test_good_png_is_returned_unchanged() -> None:
    image = gray(1)
    array = validate_image_bytes(encode(image), **LIMITS)
    assert array.dtype == np.uint8 and array.shape == (16, 16)
    assert np.array_equal(array, np.asarray(image))


def test_zero_byte_file() -> None:
    assert reason_code(b"") == "empty"


def test_random_bytes_and_text_are_not_images() -> None:
    assert reason_code(np.random.default_rng(0).bytes(500)) == "not_an_image"
    assert reason_code(b"label,path\nthis is a text file named .png\n") == "not_an_image"


def test_corrupt_png_data() -> None:
    data = bytearray(encode(gray(2, 64)))
    data[len(data) // 2] ^= 0xFF  # inside the compressed pixel data
    assert reason_code(bytes(data)) == "corrupt"


def test_truncated_png_and_jpeg() -> None:
    png = encode(gray(3, 64))
    jpeg = encode(gray(3, 64).convert("RGB"), "JPEG", quality=90)
    assert reason_code(png[: len(png) // 2]) == "corrupt"
    assert reason_code(jpeg[: len(jpeg) // 2]) == "corrupt"


def test_too_small() -> None:
    with pytest.raises(InvalidImage, match=r"4x20 pixels; each side must be at least 8"):
        validate_image_bytes(encode(Image.new("L", (4, 20))), **LIMITS)


def test_decompression_bombs_are_refused_from_the_header() -> None:
    # Over our limit but under Pillow's: caught by our check before decoding.
    with pytest.raises(InvalidImage, match="6000x6000") as caught:
        validate_image_bytes(bomb_png(6000, 6000), **LIMITS)
    assert caught.value.code == "too_large"
    # Far over Pillow's limit: its DecompressionBombError becomes a reason.
    assert reason_code(bomb_png(100_000, 100_000)) == "too_large"
    # Between Pillow's warning and error thresholds, with our own limit out of the way: the warning
    # becomes a reason too (instead of a decode of 100 M pixels).
    assert reason_code(bomb_png(10_000, 10_000), max_pixels=10**12) == "too_large"


def test_cmyk_jpeg_is_converted() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG")
    image = canonicalize_image_bytes(data, **LIMITS)
    assert image.converted_from == "CMYK"
    assert image.array.shape == (16, 16)
    assert image.array.mean() > 240  # no ink is white


def test_16_bit_png_is_scaled_to_8_bit() -> None:
    wide = np.array([[0, 257 * 100, 65535, 257 * 200]] * 8, dtype=np.uint16).repeat(2, axis=1)
    data = encode(Image.fromarray(wide))
    image = canonicalize_image_bytes(data, **LIMITS)
    assert image.converted_from.startswith("I;16")
    assert image.array.dtype == np.uint8
    assert image.array[0, ::2].tolist() == [0, 100, 255, 200]


def test_palette_png_is_converted_by_its_palette() -> None:
    palette_image = Image.new("P", (10, 10))
    palette_image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette_image.paste(1, (0, 0, 5, 10))  # left half: palette entry 1 = white
    image = canonicalize_image_bytes(encode(palette_image), **LIMITS)
    assert image.converted_from == "P"
    assert image.array[:, :5].min() == 255 and image.array[:, 5:].max() == 0


def test_rgba_and_la_are_composited_on_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 5, 10))
    image = canonicalize_image_bytes(encode(rgba), **LIMITS)
    assert image.converted_from == "RGBA"
    assert image.array[:, 5:].min() == 255  # transparent → white
    assert image.array[:, :5].max() == 0  # opaque black stays black
    la = canonicalize_image_bytes(encode(Image.new("LA", (10, 10), (0, 0))), **LIMITS)
    assert la.converted_from == "LA" and la.array.min() == 255


def test_rgb_to_gray_and_gray_to_rgb() -> None:
    rgb = Image.new("RGB", (12, 12), (255, 0, 0))
    as_gray = canonicalize_image_bytes(encode(rgb), **LIMITS)
    assert as_gray.converted_from == "RGB" and as_gray.array.shape == (12, 12)
    as_rgb = canonicalize_image_bytes(encode(gray(4)), **{**LIMITS, "channels": 3})
    assert as_rgb.converted_from == "L" and as_rgb.array.shape == (16, 16, 3)
    assert canonicalize_image_bytes(encode(rgb), **{**LIMITS, "channels": 3}).converted_from is None


def test_exif_orientation_is_applied() -> None:
    image = Image.new("L", (24, 12))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to display
    result = canonicalize_image_bytes(encode(image, "JPEG", exif=exif), **LIMITS)
    assert result.array.shape == (24, 12)
    assert result.converted_from == "L+exif_orientation"


def test_pixel_hash_includes_the_shape() -> None:
    flat = np.zeros((4, 8), np.uint8)
    assert pixel_sha256(flat) != pixel_sha256(flat.reshape(8, 4))


# --- a messy folder ----------------------------------------------------------------------------


def make_messy_folder(root: Path) -> dict[str, str | None]:
    """A class-per-folder tree with good images and one file of each kind of trouble.

    Returns {relative path: expected quarantine code or None (accepted)}.
    """
    expected: dict[str, str | None] = {}

    def put(relative: str, data: bytes, code: str | None) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[relative] = code

    for i in range(6):
        put(f"cat/good_{i}.png", encode(gray(100 + i)), None)
        put(f"dog/nested/good_{i}.png", encode(gray(200 + i)), None)
    put("cat/cmyk.jpg", encode(Image.new("CMYK", (16, 16), (10, 200, 30, 0)), "JPEG"), None)
    put("cat/sixteen.png", encode(Image.fromarray(np.full((16, 16), 4000, np.uint16))), None)
    put("dog/rgba.png", encode(Image.new("RGBA", (16, 16), (5, 6, 7, 100))), None)
    put("cat/zero.png", b"", "empty")
    put("cat/text.png", b"not an image at all\n", "not_an_image")
    put("cat/truncated.png", encode(gray(7, 64))[:300], "corrupt")
    put("dog/truncated.jpg", encode(gray(8, 64), "JPEG")[:200], "corrupt")
    put("dog/tiny.png", encode(gray(9, 4)), "too_small")
    put("dog/bomb.png", bomb_png(50_000, 50_000), "too_large")
    put("cat/zz_copy_of_good_0.png", encode(gray(100)), "duplicate")
    put("dog/conflict.png", encode(gray(101)), "duplicate_label_conflict")
    put("stray.png", encode(gray(300)), "no_label")
    return expected


def test_ingest_accounts_for_every_file(tmp_path: Path) -> None:
    expected = make_messy_folder(tmp_path / "src")
    result = ingest(tmp_path / "src", **LIMITS)

    assert len(result.records) + len(result.quarantined) == len(expected)
    seen = {
        p.relative_to((tmp_path / "src").resolve()).as_posix(): None for p in (r.path for r in result.records)
    }
    for entry in result.quarantined:
        seen[Path(entry.path).relative_to((tmp_path / "src").resolve()).as_posix()] = entry.code
    assert seen == expected
    assert result.classes == ["cat", "dog"]
    conversions = {r.path.name: r.converted_from for r in result.records if r.converted_from}
    assert conversions == {"cmyk.jpg": "CMYK", "sixteen.png": "I;16", "rgba.png": "RGBA"}
    assert [d["duplicate_of"] for d in result.duplicates] == ["cat/good_0.png", "cat/good_1.png"]
    conflict = next(q for q in result.quarantined if q.code == "duplicate_label_conflict")
    assert "label conflict" in conflict.reason and "'cat'" in conflict.reason


def test_prepare_writes_images_manifest_quarantine_and_report(tmp_path: Path) -> None:
    expected = make_messy_folder(tmp_path / "src")
    out = tmp_path / "out"
    prepared = prepare(tmp_path / "src", out, **LIMITS, **SPLIT)

    bad = {k: v for k, v in expected.items() if v is not None}
    manifest = read_manifest(out)
    assert len(manifest) == len(expected) - len(bad) == prepared.n_images
    assert list(manifest.columns[:5]) == ["path", "label", "split", "sha256", "source_path"]
    assert manifest["path"].is_unique
    for row in manifest.itertuples():
        pixels = load_image(row.abs_path)
        assert pixels.dtype == np.uint8 and pixels.ndim == 2
        assert pixel_sha256(pixels) == row.sha256
        assert row.path.startswith(f"images/{row.label}/")

    with open(out / "quarantine.csv", newline="") as handle:
        quarantine = list(csv.DictReader(handle))
    assert {q["path"]: q["code"] for q in quarantine} == bad
    for q in quarantine:  # every bad file is kept for a person to look at, byte for byte
        assert (out / q["copy"]).read_bytes() == (tmp_path / "src" / q["path"]).read_bytes()

    report = json.loads((out / "data_report.json").read_text())
    assert report["total_files"] == len(expected)
    assert report["counts_per_class"] == {"cat": 8, "dog": 7}
    assert report["imbalance_ratio"] == pytest.approx(8 / 7, abs=1e-4)
    assert report["quarantined_by_reason"]["corrupt"] == 2
    assert report["duplicates"] == {
        "count": 2,
        "label_conflicts": 1,
        "items": report["duplicates"]["items"],
    }
    assert report["conversions"] == {"CMYK": 1, "I;16": 1, "RGBA": 1}
    assert sum(report["counts_per_split"].values()) == prepared.n_images
    assert (out / "data_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_of_clean_data_still_writes_an_empty_quarantine(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / "src" / "a").mkdir(parents=True, exist_ok=True)
        gray(i).save(tmp_path / "src" / "a" / f"{i}.png")
    prepare(tmp_path / "src", tmp_path / "out", **LIMITS, **SPLIT)
    assert (tmp_path / "out" / "quarantine.csv").read_text() == "path,label,reason,code,copy\n"


def test_manifest_csv_with_metadata_columns(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(9):
        gray(400 + i).save(images / f"{i}.png")
        rows.append({"path": f"images/{i}.png", "label": "ab"[i % 2], "source": "cam", "device": f"d{i % 3}"})
    (tmp_path / "elsewhere").mkdir()
    gray(500).save(tmp_path / "elsewhere" / "abs.png")
    rows.append({"path": str(tmp_path / "elsewhere" / "abs.png"), "label": "b", "source": "x", "device": ""})
    rows.append({"path": "images/missing.png", "label": "a", "source": "cam", "device": "d0"})
    rows.append({"path": "images/0.png", "label": "", "source": "cam", "device": "d0"})
    rows.append({"path": "", "label": "a", "source": "cam", "device": "d0"})
    manifest = tmp_path / "data.csv"  # relative paths are relative to its folder; absolute ones must lie under it
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "source", "device"])
        writer.writeheader()
        writer.writerows(rows)

    result = ingest(manifest, **LIMITS)
    assert len(result.records) + len(result.quarantined) == len(rows)
    assert result.meta_columns == ["source", "device"]
    assert {r.path.name: r.meta["device"] for r in result.records}["4.png"] == "d1"
    assert sorted(q.code for q in result.quarantined) == ["missing_file", "missing_file", "no_label"]
    assert any("line 14 of data.csv has an empty path" in q.reason for q in result.quarantined)

    prepared = prepare(manifest, tmp_path / "out", **LIMITS, **SPLIT)
    table = read_manifest(prepared.out_dir)
    assert {"source", "device"} <= set(table.columns)
    assert table.set_index("source_path").loc["images/4.png", "device"] == "d1"
    assert table.set_index("source_path").loc["elsewhere/abs.png", "source"] == "x"
    with open(prepared.quarantine_path, newline="") as handle:
        copies = {row["code"]: row["copy"] for row in csv.DictReader(handle)}
    assert copies["missing_file"] == "" and (prepared.out_dir / copies["no_label"]).is_file()


def test_manifest_without_label_column_or_with_reserved_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "no_label.csv").write_text("path,site\na.png,x\n")
    with pytest.raises(ValueError, match="label"):
        ingest(tmp_path / "no_label.csv", **LIMITS)
    (tmp_path / "reserved.csv").write_text("path,label,split\na.png,x,train\n")
    with pytest.raises(ValueError, match="split"):
        ingest(tmp_path / "reserved.csv", **LIMITS)


# --- determinism and the split -----------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*.png")
    }


def test_import_digits_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    assert import_digits(raw, image_size=16) == 1797
    (raw / "stale.txt").write_text("left over")
    first = tree_digest(raw)
    assert import_digits(raw, image_size=16) == 1797
    assert not (raw / "stale.txt").exists()
    assert tree_digest(raw) == first
    assert sorted(p.name for p in raw.iterdir()) == [str(d) for d in range(10)]
    sample = load_image(raw / "3" / "0003.png")
    assert sample.shape == (16, 16) and sample.max() > 200


def test_import_refuses_to_clear_a_project_folder(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ValueError, match="refusing"):
        import_digits(tmp_path, image_size=16)
    assert (tmp_path / "params.yaml").exists()


def balanced_folder(root: Path, classes: int = 3, per_class: int = 12) -> None:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            gray(1000 * c + i, 8).save(root / f"c{c}" / f"{i:02d}.png")


def test_split_is_stratified_deterministic_and_survives_renames(tmp_path: Path) -> None:
    balanced_folder(tmp_path / "src")
    first = prepare(tmp_path / "src", tmp_path / "a", **LIMITS, **SPLIT)
    prepare(tmp_path / "src", tmp_path / "b", **LIMITS, **SPLIT)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert (tmp_path / "a" / "data_report.json").read_bytes() == (
        tmp_path / "b" / "data_report.json"
    ).read_bytes()

    for label, count in first.report["counts_per_class"].items():
        per_split = {
            s: first.report["counts_per_class_per_split"][s][label] for s in ("train", "val", "test")
        }
        assert min(per_split.values()) >= 1, f"class {label} missing from a split: {per_split}"
        assert per_split == {"train": 8, "val": 2, "test": 2} and count == 12

    shutil.copytree(tmp_path / "src", tmp_path / "renamed")
    for path in sorted((tmp_path / "renamed").rglob("*.png")):
        path.rename(path.with_name("x" + path.name))
    prepare(tmp_path / "renamed", tmp_path / "c", **LIMITS, **SPLIT)
    by_hash = {r.sha256: r.split for r in read_manifest(tmp_path / "a").itertuples()}
    assert by_hash == {r.sha256: r.split for r in read_manifest(tmp_path / "c").itertuples()}

    other_seed = prepare(tmp_path / "src", tmp_path / "d", **LIMITS, **{**SPLIT, "seed": 8})
    assert other_seed.report["counts_per_split"] == first.report["counts_per_split"]
    assert by_hash != {r.sha256: r.split for r in read_manifest(tmp_path / "d").itertuples()}


def test_classes_too_small_to_split_go_to_train(tmp_path: Path) -> None:
    balanced_folder(tmp_path / "src", classes=2, per_class=5)
    (tmp_path / "src" / "rare").mkdir()
    gray(77).save(tmp_path / "src" / "rare" / "only.png")
    prepared = prepare(tmp_path / "src", tmp_path / "out", **LIMITS, **SPLIT)
    assert prepared.report["classes_too_small_to_split"] == ["rare"]
    assert prepared.report["counts_per_class_per_split"]["train"]["rare"] == 1
    assert prepared.report["imbalance_ratio"] == 5.0


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_validate_reports_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visionloop.cli.data import data_app

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PARAMS_YAML, project / "params.yaml")
    monkeypatch.setenv("VISIONLOOP_PROJECT_DIR", str(project))
    make_messy_folder(tmp_path / "src")
    before = sorted(p for p in tmp_path.rglob("*"))

    runner = CliRunner()
    result = runner.invoke(data_app, ["validate", str(tmp_path / "src")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "each side must be at least 8" in result.output
    assert "would be quarantined" in result.output
    strict = runner.invoke(data_app, ["validate", "--strict", str(tmp_path / "src")])
    assert strict.exit_code == 1
    one = runner.invoke(data_app, ["validate", str(tmp_path / "src" / "cat" / "cmyk.jpg")])
    assert one.exit_code == 0 and "converted from CMYK" in one.output
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_numeric_classes_are_ordered_by_value(tmp_path: Path) -> None:
    for label, seed in (("10", 1), ("2", 2), ("b", 3)):
        (tmp_path / label).mkdir()
        gray(seed).save(tmp_path / label / "x.png")
    assert ingest(tmp_path, **LIMITS).classes == ["2", "10", "b"]

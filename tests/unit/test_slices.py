"""Slice evaluation: Wilson intervals, flagging, statistic bins, the gate's comparison, the plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from visionloop.monitoring.slices import (
    bin_statistics,
    build_slice_frame,
    compare_slices,
    plot_slices,
    slice_metrics,
    tertile_edges,
    wilson_interval,
)


def test_wilson_interval_known_values():
    # Textbook values (z = 1.96): 0/10 → [0, 0.2775], 10/10 → [0.7225, 1], 50/100 → [0.4038, 0.5962].
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    narrow, wide = wilson_interval(50, 100, 0.8), wilson_interval(50, 100, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert all(np.isnan(wilson_interval(0, 0)))


def _frame(rng: np.random.Generator) -> pd.DataFrame:
    """600 predictions: site C is much worse (60 %) than sites A and B (95 %)."""
    site = np.repeat(["A", "B", "C"], 200)
    label = rng.choice(["cat", "dog"], size=600)
    right = np.where(site == "C", rng.random(600) < 0.6, rng.random(600) < 0.95)
    pred = np.where(right, label, np.where(label == "cat", "dog", "cat"))
    return pd.DataFrame({"label": label, "pred": pred, "site": site})


def test_slice_metrics_flags_only_the_significantly_worse_slice():
    frame = _frame(np.random.default_rng(0))
    table = slice_metrics(frame, label_col="label", pred_col="pred", slice_cols=["site"])

    overall = table.iloc[0]
    assert (overall["column"], overall["slice"], overall["n"]) == ("overall", "all", 600)
    assert overall["accuracy"] == pytest.approx((frame["label"] == frame["pred"]).mean())
    site = table[table["column"] == "site"].set_index("slice")
    assert site.loc[["A", "B", "C"], "n"].tolist() == [200, 200, 200]
    assert site.loc["C", "flagged"] and not site.loc["A", "flagged"] and not site.loc["B", "flagged"]
    assert site.loc["C", "ci_high"] < overall["accuracy"]
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()
    classes = table[table["column"] == "label"]
    assert set(classes["slice"]) == {"cat", "dog"} and classes["n"].sum() == 600


def test_a_lower_but_tiny_slice_is_not_flagged():
    # 4 of 5 right against 90 % overall: lower, but the interval cannot rule out chance.
    frame = pd.DataFrame(
        {
            "label": ["a"] * 105,
            "pred": ["a"] * 90 + ["b"] * 10 + ["a"] * 4 + ["b"],
            "device": ["big"] * 100 + ["tiny"] * 5,
        }
    )
    table = slice_metrics(frame, label_col="label", pred_col="pred", slice_cols=["device"], per_class=False)
    tiny = table[table["slice"] == "tiny"].iloc[0]
    assert tiny["accuracy"] < table.iloc[0]["accuracy"]
    assert not tiny["flagged"]
    assert set(table["column"]) == {"overall", "device"}


def test_missing_metadata_becomes_its_own_slice():
    frame = pd.DataFrame({"label": ["a", "a", "b"], "pred": ["a", "b", "b"], "site": ["x", None, "x"]})
    table = slice_metrics(frame, label_col="label", pred_col="pred", slice_cols=["site"])
    assert table[table["column"] == "site"].set_index("slice")["n"].to_dict() == {"missing": 1, "x": 2}


def test_tertile_bins_use_the_reference_and_name_the_ends():
    reference = pd.DataFrame({"brightness": np.arange(1.0, 10.0), "width": [32.0] * 9})
    edges = tertile_edges(reference, ["brightness", "width"])
    assert edges["brightness"] == pytest.approx((11 / 3, 19 / 3))
    binned = bin_statistics(pd.DataFrame({"brightness": [0.0, 5.0, 99.0], "width": [32.0, 32.0, 16.0]}), edges)
    assert binned["brightness"].tolist() == ["dark", "normal", "bright"]
    assert binned["width"].tolist() == ["normal", "normal", "narrow"]  # constant in the reference: normal
    with pytest.raises(ValueError, match="no column"):
        tertile_edges(reference, ["contrast"])


def test_build_slice_frame_finds_the_degraded_dark_images():
    rng = np.random.default_rng(1)
    levels = np.repeat([20, 120, 230], 60)  # dark, normal, bright images
    images = [np.clip(rng.normal(level, 10, (16, 16)), 0, 255).astype(np.uint8) for level in levels]
    labels = rng.choice(["0", "1"], size=len(images)).tolist()
    # The model is right on normal and bright images and mostly wrong on dark ones.
    wrong = (levels == 20) & (rng.random(len(images)) < 0.7)
    predicted = [("1" if y == "0" else "0") if w else y for y, w in zip(labels, wrong, strict=True)]
    metadata = pd.DataFrame({"site": ["s1", "s2"] * 90})

    frame, slice_cols = build_slice_frame(
        images,
        labels,
        {"pred": predicted},
        stat_columns=["brightness", "contrast"],
        metadata=metadata,
        metadata_columns=["site"],
    )
    assert slice_cols == ["brightness", "contrast", "site"]
    assert frame["brightness"].value_counts().to_dict() == {"dark": 60, "normal": 60, "bright": 60}
    table = slice_metrics(frame, label_col="label", pred_col="pred", slice_cols=slice_cols)
    flagged = table[table["flagged"]]
    assert ("brightness", "dark") in set(zip(flagged["column"], flagged["slice"], strict=True))
    assert not table[(table["column"] == "brightness") & (table["slice"] != "dark")]["flagged"].any()

    with pytest.raises(ValueError, match="unknown image statistic"):
        build_slice_frame(images, labels, {"pred": predicted}, stat_columns=["loudness"])
    with pytest.raises(ValueError, match="same length"):
        build_slice_frame(images, labels[:-1], {"pred": predicted})


def test_compare_slices_marks_regressions_beyond_tolerance_on_big_enough_slices():
    frame = pd.DataFrame(
        {
            "label": ["a"] * 140,
            "site": ["x"] * 100 + ["y"] * 30 + ["z"] * 10,
            # champion: all right. challenger: x loses 3 %, y loses 10 %, z (tiny) loses 50 %.
            "champion": ["a"] * 140,
            "challenger": ["a"] * 97 + ["b"] * 3 + ["a"] * 27 + ["b"] * 3 + ["a"] * 5 + ["b"] * 5,
        }
    )
    table = compare_slices(
        frame,
        label_col="label",
        champion_col="champion",
        challenger_col="challenger",
        slice_cols=["site"],
        tolerance=0.05,
        min_size=20,
    ).set_index("slice")
    assert table.loc["x", "delta"] == pytest.approx(-0.03)
    assert table.loc["y", "delta"] == pytest.approx(-0.10)
    assert table[["checked", "regressed"]].to_dict("index") == {
        "x": {"checked": True, "regressed": False},
        "y": {"checked": True, "regressed": True},
        "z": {"checked": False, "regressed": False},
    }


def test_plot_slices_writes_a_png(tmp_path):
    table = slice_metrics(_frame(np.random.default_rng(2)), label_col="label", pred_col="pred", slice_cols=["site"])
    path = plot_slices(table, tmp_path / "plots" / "slices.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000

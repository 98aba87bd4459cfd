"""params.yaml is validated once, against one typed model per section: nothing misspelled passes silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.project import REPO

from visionloop.config import Settings
from visionloop.params import ParamsError, validate_params


def shipped_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_shipped_params_are_valid_and_typed() -> None:
    params = validate_params(shipped_params(), "params.yaml")
    assert params.monitoring.window == shipped_params()["monitoring"]["window"]
    assert params.registry.gate.slices.min_size == shipped_params()["registry"]["gate"]["slices"]["min_size"]


def test_an_unknown_key_is_named_with_its_path() -> None:
    raw = shipped_params()
    raw["monitoring"]["windw"] = 10
    with pytest.raises(ParamsError, match=r"monitoring\.windw: an unknown key"):
        validate_params(raw, "params.yaml")


def test_a_missing_key_and_a_wrong_type_are_both_reported() -> None:
    raw = shipped_params()
    del raw["data"]["min_side"]
    raw["serving"]["port"] = "eighty"
    with pytest.raises(ParamsError) as error:
        validate_params(raw, "params.yaml")
    assert "data.min_side: a required key that is missing" in str(error.value)
    assert "serving.port:" in str(error.value) and "'eighty'" in str(error.value)


def test_a_value_out_of_range_is_refused() -> None:
    raw = shipped_params()
    raw["data"]["val_fraction"] = 1.5
    with pytest.raises(ParamsError, match=r"data\.val_fraction"):
        validate_params(raw, "params.yaml")


def test_overrides_are_validated_like_the_file() -> None:
    settings = Settings.load(REPO)
    assert settings.with_overrides({"monitoring": {"window": 7}}).params.monitoring.window == 7
    with pytest.raises(ParamsError, match=r"monitoring\.windw"):
        settings.with_overrides({"monitoring": {"windw": 7}})


def test_params_are_read_only(tmp_path: Path) -> None:
    settings = Settings.load(REPO)
    with pytest.raises(ValueError):
        settings.params.monitoring.window = 3  # type: ignore[misc]

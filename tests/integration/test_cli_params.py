"""Any visionloop command stops at start on an invalid params.yaml, naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers.project import REPO, VENV_BIN, run


def test_a_misspelled_key_stops_any_command_with_its_path(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text()
    assert "\n  window: " in text
    (tmp_path / "params.yaml").write_text(text.replace("\n  window: ", "\n  windw: 10\n  window: ", 1))
    for command in (["registry", "list"], ["alerts"], ["data", "prepare"]):
        result = run([str(VENV_BIN / "visionloop"), *command], tmp_path, check=False)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "monitoring.windw: an unknown key" in result.stderr
        assert str(tmp_path / "params.yaml") in result.stderr
        assert "Traceback" not in result.stderr


def test_a_valid_project_is_not_stopped(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = run([str(VENV_BIN / "visionloop"), "alerts"], tmp_path, env={"VISIONLOOP_STATE_DIR": str(tmp_path / "s")})
    assert "is not valid" not in result.stderr

"""``visionloop init DIR --images SOURCE``: a ready visionloop project around the user's own images.

The project is this repository's pipeline with the user's data in place of the embedded digits:
the images copied under ``data/images`` and tracked by DVC, a ``params.yaml`` that is the
template's (this checkout's ``params.yaml``, comments kept) with the values ``choices`` picked from
a ``survey`` of the images, a ``dvc.yaml`` with the template's stages minus the digits import, git
and DVC initialised and everything committed. ``reports/init.md`` says what was found and why each
value was chosen. Every command then works there unchanged: the CLI finds the nearest
``params.yaml`` and the DVC stages call ``visionloop``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from visionloop.config import Settings
from visionloop.project.choices import Choice, choose
from visionloop.project.report import GITIGNORE, readme, report
from visionloop.project.survey import Survey, survey

TEMPLATE_ROOT = Path(__file__).resolve().parents[3]  # this checkout: its params.yaml and dvc.yaml
IMAGES_DIR = "data/images"
REPORT_FILE = "reports/init.md"
# Offline (no analytics, no update check) and a local remote in the state dir, as this repository's .dvc/config.
DVC_CONFIG = """\
[core]
    analytics = false
    check_update = false
    remote = local
['remote "local"']
    url = ../.visionloop/dvc-remote
"""
DROPPED_STAGES = ("import",)  # writes the embedded digits: a project of one's own images has its data


@dataclass
class InitResult:
    root: Path
    survey: Survey
    choices: list[Choice]
    report: str
    copied: int


def init_project(target: Path, images: Path, template_root: Path = TEMPLATE_ROOT) -> InitResult:
    """Create the project at ``target`` (absent or empty) from the images of ``images`` (folder or CSV manifest)."""
    target, images = Path(target).resolve(), Path(images).resolve()
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty; init creates a new project in a new or empty folder")
    if not (template_root / "params.yaml").is_file():
        raise FileNotFoundError(f"no template params.yaml in {template_root} (the visionloop checkout)")
    if images.is_relative_to(target):
        raise ValueError(f"the images ({images}) must not lie inside the new project ({target})")
    found = survey(images)
    if not found.images:
        raise ValueError(f"{images} has no labelled image (class folders, or manifest rows with path and label)")
    manifest_source = images.is_file()
    source = f"{IMAGES_DIR}/manifest.csv" if manifest_source else IMAGES_DIR
    yaml = _yaml()
    params = yaml.load((template_root / "params.yaml").read_text())
    overrides, choices = choose(found, params, target.name, source)
    target.mkdir(parents=True, exist_ok=True)
    copied = copy_images(found, target / IMAGES_DIR, manifest_source)
    _merge(params, overrides)
    (target / "params.yaml").write_text(_dump(yaml, params))
    (target / "dvc.yaml").write_text(_dump(yaml, pipeline(yaml.load((template_root / "dvc.yaml").read_text()))))
    Settings.load(target)  # the written params.yaml must be valid, or init fails here and not at the first command
    text = report(found, choices, images, target, copied)
    (target / REPORT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (target / REPORT_FILE).write_text(text)
    (target / "README.md").write_text(readme(target.name, found, REPORT_FILE))
    (target / ".gitignore").write_text(GITIGNORE)
    _version(target)
    return InitResult(target, found, choices, text, copied)


def copy_images(found: Survey, images_dir: Path, with_manifest: bool) -> int:
    """Copy every listed file under ``images_dir/<label>/``; a manifest source gets its manifest rewritten there.

    Folder sources keep their paths below the class folder (so no two files collide); manifest rows are
    numbered, since two rows may name files of the same name in different folders.
    """
    from visionloop.data.manifest import write_csv

    rows = []
    for index, item in enumerate(found.images):
        # a folder's class is its name, kept as is; a manifest's label may be any text
        folder, name = (_safe(item.label), f"{index:05d}_{item.path.name}") if with_manifest else (
            item.label, item.within_class)
        destination = images_dir / folder / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.path, destination)
        rows.append({"path": f"{folder}/{name}", "label": item.label, **item.meta})
    if with_manifest:
        write_csv(images_dir / "manifest.csv", ["path", "label", *found.meta_columns], rows)
    return len(rows)


def pipeline(stages: CommentedMap) -> CommentedMap:
    """The template's ``dvc.yaml`` for a project: no digits import, no dependency on this checkout's sources.

    ``prepare`` depends on the whole ``data/images`` folder (a manifest's images change without it).
    """
    for name in DROPPED_STAGES:
        stages["stages"].pop(name, None)
    for stage in stages["stages"].values():
        deps = stage.get("deps")
        if deps is None:
            continue
        kept = [IMAGES_DIR if dep == "${data.source}" else dep for dep in deps if not str(dep).startswith("src/")]
        stage["deps"] = CommentedSeq(kept)
    return stages


def _version(root: Path) -> None:
    """git init, dvc init (offline config, a local remote), ``dvc add data/images``, and a first commit."""
    _run(["git", "init", "-q", "-b", "main"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    (root / ".dvc" / "config").write_text(DVC_CONFIG)  # what `dvc config` would write, without 3 more processes
    _run([sys.executable, "-m", "dvc", "add", "-q", IMAGES_DIR], root)
    identity = [] if _run(["git", "config", "user.email"], root, check=False).stdout.strip() else [
        "-c", "user.name=visionloop init", "-c", "user.email=visionloop@localhost"]
    _run(["git", "add", "-A"], root)
    _run(["git", *identity, "commit", "-q", "-m", "visionloop init: images, params, pipeline"], root)


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd}:\n{result.stderr or result.stdout}")
    return result


def _safe(label: str) -> str:
    """A class name usable as a folder name (the label itself is kept in the manifest)."""
    cleaned = "".join(c if c.isalnum() or c in "-_. " else "_" for c in label).strip(" .")
    return cleaned or "_"


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: the template's comments and key order are kept
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _dump(yaml: YAML, data: Any) -> str:
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def _merge(node: CommentedMap, overrides: dict[str, Any]) -> None:
    """Set ``overrides`` into the round-trip mapping in place (comments beside untouched keys stay)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(node.get(key), CommentedMap):
            _merge(node[key], value)
        else:
            node[key] = _flow(value)


def _flow(value: Any) -> Any:
    """Lists of small mappings and inner mappings in flow style, as the template writes them."""
    if isinstance(value, list):
        seq = CommentedSeq(_flow(v) for v in value)
        if all(not isinstance(v, dict | list) for v in value):
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        mapping = CommentedMap((k, _flow(v)) for k, v in value.items())
        if all(not isinstance(v, dict) for v in value.values()):
            mapping.fa.set_flow_style()
        return mapping
    return value

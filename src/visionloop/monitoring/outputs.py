"""Where every monitoring check leaves its results: a folder under the state directory and an MLflow run.

Drift checks, performance checks and slice reports each write into a fresh
``<state>/monitoring/<UTC timestamp>/`` folder (``new_output_dir``) and record one run in the monitoring
experiment (``mlflow.monitoring_experiment``), tagged ``visionloop.kind`` = drift / performance / slices
with the model name and version, so that MLflow can list every check of a version (``log_check_run``).

MLflow shows an HTML artifact in a sandboxed frame where relative addresses lead nowhere, so every page
is logged self-contained (``self_contained_html``): its images inlined as ``data:`` URIs, its links to
files replaced by the artifact path they were logged under.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionloop.config import Settings
from visionloop.models.tracking import log_run


def new_output_dir(settings: Settings) -> Path:
    """A fresh ``<state>/monitoring/<UTC timestamp>/`` folder (suffixed when two checks start in one second)."""
    return new_stamped_dir(settings.state_dir / "monitoring")


def new_stamped_dir(root: Path, name: str = "") -> Path:
    """A fresh ``root/<UTC timestamp>[-name]`` folder, suffixed ``-1``, ``-2``… when one was made in the same
    second: report folders sort by time and are never shared by two writers."""
    base = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + (f"-{name}" if name else "")
    for suffix in ("", *(f"-{i}" for i in range(1, 1000))):
        try:
            (root / f"{base}{suffix}").mkdir(parents=True)
        except FileExistsError:
            continue
        return root / f"{base}{suffix}"
    raise RuntimeError(f"could not create a new folder under {root}")


def log_check_run(
    settings: Settings,
    kind: str,
    model: tuple[str, str],
    *,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    files: Iterable[Path],
    params: Mapping[str, Any] | None = None,
) -> str:
    """One run in the monitoring experiment about ``model`` (name, version); ``files`` go under ``kind/``."""
    model_name, model_version = model
    paths = [Path(file) for file in files]
    pages = {f"{kind}/{p.name}": self_contained_html(p, kind) for p in paths if p.suffix == ".html" and p.is_file()}
    return log_run(
        settings,
        settings.params.mlflow.monitoring_experiment,
        run_name=f"{kind} {model_name} v{model_version}",
        tags={"visionloop.kind": kind, "model_name": model_name, "model_version": str(model_version), **tags},
        params=params,
        metrics=metrics,
        files=[(p, kind) for p in paths if f"{kind}/{p.name}" not in pages],
        texts=pages,
    )


_LINK = re.compile(r"<a\b[^>]*?\bhref=(\"[^\"]*\"|'[^']*')[^>]*>(.*?)</a>", re.IGNORECASE | re.DOTALL)
_SCRIPT = re.compile(r"(<script\b.*?</script>)", re.IGNORECASE | re.DOTALL)
_SOURCE = re.compile(r"\b(src|href)=(\"[^\"]*\"|'[^']*')", re.IGNORECASE)


def is_relative(address: str) -> bool:
    """A relative address (a file beside the page), not a URL, a data URI, an absolute path or an anchor."""
    return bool(address) and not re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", address, re.IGNORECASE)


def self_contained_html(page: Path, artifact_dir: str) -> str:
    """The page with nothing relative: files it embeds (``src``) inlined as ``data:`` URIs, links to files
    (``<a href>``) replaced by their text and the artifact path ``artifact_dir/<file>`` they are logged at."""
    folder = page.parent

    def link(match: re.Match[str]) -> str:
        address = match.group(1)[1:-1]
        if not is_relative(address):
            return match.group(0)
        return f"{match.group(2)} (artifact <code>{html.escape(f'{artifact_dir}/{address}')}</code>)"

    def source(match: re.Match[str]) -> str:
        address = match.group(2)[1:-1]
        target = folder / address
        if not is_relative(address):
            return match.group(0)
        if not target.is_file():
            return f'{match.group(1)}=""'
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return f'{match.group(1)}="data:{kind};base64,{base64.b64encode(target.read_bytes()).decode()}"'

    # Scripts (Evidently's report bundles its JavaScript) are left as they are: only markup is rewritten.
    parts = _SCRIPT.split(page.read_text(encoding="utf-8"))
    return "".join(part if i % 2 else _SOURCE.sub(source, _LINK.sub(link, part)) for i, part in enumerate(parts))

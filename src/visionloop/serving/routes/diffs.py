"""The prediction-diff galleries (``visionloop.promotion.diff_gallery``), for the labeling review page.

* ``GET /label/diffs`` — every gallery under ``<state dir>/reports/diffs``, newest first, with its counts.
* ``GET /label/diffs/{name}/{file}`` — ``diff.html``, ``diff.png`` or ``diff.json`` of the gallery ``name``
  (``latest``: the newest).

Only files of that folder are served: the name and the file from the request are looked up in the
listing (``diff_gallery.gallery_file``), never joined to a path unchecked. The galleries show gate-set
images, so these routes need the token like the rest of the labeling API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from visionloop.promotion.diff_gallery import GALLERY_FILES, galleries, gallery_file
from visionloop.serving.deps import SettingsDep

MEDIA_TYPES = {"diff.html": "text/html", "diff.png": "image/png", "diff.json": "application/json"}
LISTED = 50  # galleries listed, newest first

router = APIRouter(tags=["labeling"])


@router.get("/label/diffs", summary="Prediction-diff galleries, newest first")
def list_diffs(settings: SettingsDep) -> dict[str, Any]:
    """What each gallery compared and its counts; open one at ``/label/diffs/{name}/diff.html``."""
    found = galleries(settings)
    return {
        "total": len(found),
        "galleries": [
            {"name": name, "files": [f"/label/diffs/{name}/{file}" for file in GALLERY_FILES],
             **{k: v for k, v in summary.to_dict().items() if k not in ("groups", "folder")},
             "flips": {group.flip: group.count for group in summary.groups}}
            for name, summary in found[:LISTED]
        ],
    }


@router.get("/label/diffs/{name}/{file}", summary="A file of a prediction-diff gallery")
def diff_file(name: str, file: str, settings: SettingsDep) -> FileResponse:
    if file not in MEDIA_TYPES:
        raise HTTPException(404, f"a gallery holds only {', '.join(GALLERY_FILES)}")
    path = gallery_file(settings, name, file)
    if path is None:
        raise HTTPException(404, f"no prediction-diff gallery {name!r}; see GET /label/diffs")
    return FileResponse(path, media_type=MEDIA_TYPES[file])

"""The texts ``visionloop init`` writes: the report of what it found and chose, the README stub, ``.gitignore``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from visionloop.project.choices import Choice
from visionloop.project.survey import Survey

# What a project keeps out of git: the stack's state, pipeline outputs DVC or MLflow hold, caches.
GITIGNORE = """\
.visionloop/
__pycache__/
lightning_logs/
/data/prepared
/data/snapshots
/models
/reports/*
!/reports/init.md
/metrics.json
/plots
"""

NEXT_STEPS = """\
dvc repro                      # prepare → train → evaluate → register (the first good model becomes champion)
visionloop evaluate --slices   # accuracy per class, image-statistic bin and manifest column
visionloop serve               # the champion behind a REST API on 127.0.0.1
visionloop demo                # the whole loop: serve, drift on your held-out images, alert, retrain, hot swap
"""


def _value(value: object) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "<br>".join(f"`{json.dumps(step, separators=(', ', ': '))}`" for step in value)
    return f"`{json.dumps(value)}`" if value is not None else "—"


def report(found: Survey, choices: list[Choice], source: Path, root: Path, copied: int) -> str:
    """``reports/init.md``: the survey of the images, then every choice with its reason, then what to run."""
    sides = found.short_sides
    lines = [
        f"# visionloop init: {root.name}",
        "",
        f"Images from `{source}`: {len(found.images)} listed, {copied} copied to `data/images` (DVC-tracked), "
        f"{found.n_readable} readable" + (f", {len(found.unreadable)} unreadable (`data prepare` quarantines them, "
                                          "with the reason)" if found.unreadable else "") + ".",
        "",
        "## What was found",
        "",
        "| | |",
        "|---|---|",
        "| classes | " + ", ".join(f"{label} ({n})" for label, n in found.class_counts.items()) + " |",
        f"| file modes | {', '.join(f'{m}: {n}' for m, n in found.modes.items())} |",
        f"| gray images | {found.n_gray} of {found.n_readable} |",
        f"| width × height | median {np.median(found.widths):.0f} × {np.median(found.heights):.0f} px; "
        f"short side {min(sides)}–{max(sides)} px |",
        f"| aspect ratio (w/h) | {np.min(found.aspect_ratios):.2f}–{np.max(found.aspect_ratios):.2f} |",
        f"| pixel mean / std (R, G, B) | {found.mean} / {found.std} |",
    ]
    if found.meta_columns:
        lines.append("| manifest columns | " + ", ".join(f"{c} ({found.meta_values[c]} values)"
                                                      for c in found.meta_columns) + " |")
    counts = list(found.class_counts.values())
    if max(counts) > 3 * min(counts):
        lines.append(f"| imbalance | largest class {max(counts)} images, smallest {min(counts)}: "
                     "look at per-class F1, not accuracy alone |")
    lines += ["", "## What was chosen, and why", "", "| params.yaml | value | why |", "|---|---|---|"]
    for choice in choices:
        key = f"`{choice.key}`" if choice.applied else f"↳ {choice.key}"
        lines.append(f"| {key} | {_value(choice.value)} | {choice.why} |")
    lines += ["", "Everything else is the template's `params.yaml` (its comments say what each key does). "
              "Edit `params.yaml` to change any of it; `dvc repro` reruns what depends on it.", "",
              "## Next", "", "```bash", NEXT_STEPS.rstrip(), "```", ""]
    return "\n".join(lines)


def readme(name: str, found: Survey, report_file: str) -> str:
    """The project's README stub: what it is, where things are, the commands."""
    classes = ", ".join(found.class_counts)
    return f"""# {name}

An image classifier for {len(found.class_counts)} classes ({classes}), run by
visionloop: data → DVC → training → MLflow registry and gate → serving → drift
monitoring → retraining. Made by `visionloop init`; `{report_file}` says what was detected in the images and
why each parameter was chosen.

| where | what |
|---|---|
| `data/images/` | the images (DVC-tracked: `data/images.dvc`) |
| `params.yaml` | every parameter, with comments |
| `dvc.yaml` | the pipeline: prepare → train → evaluate → register |
| `.visionloop/` | the local stack's state: MLflow store, prediction log, DVC remote (git-ignored) |

```bash
{NEXT_STEPS.rstrip()}
```
"""

"""A decoded frame as the model's canonical image: region of interest, then the channels the model expects.

The conversion to grayscale is PIL's, the same as ``data.images`` applies to an RGB file, so a frame
classified from the stream and the same frame saved as PNG and run through ``predict-batch`` are the same
pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Roi = tuple[int, int, int, int]  # x, y, width, height in pixels of the frame


def parse_roi(text: str | None) -> Roi | None:
    """``x,y,w,h`` (pixels, w and h positive) → a tuple; None for no region."""
    if text is None:
        return None
    try:
        x, y, w, h = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--roi must be x,y,w,h in whole pixels, got {text!r}") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"--roi needs x, y >= 0 and w, h > 0, got {text!r}")
    return x, y, w, h


def canonical_frame(rgb: np.ndarray, channels: int, roi: Roi | None) -> np.ndarray:
    """The model's input for one H×W×3 frame: cropped to ``roi`` (which must fit the frame), L or RGB uint8."""
    if roi is not None:
        x, y, w, h = roi
        if x + w > rgb.shape[1] or y + h > rgb.shape[0]:
            raise ValueError(f"--roi {x},{y},{w},{h} does not fit a {rgb.shape[1]}x{rgb.shape[0]} frame")
        rgb = rgb[y : y + h, x : x + w]
    if channels == 3:
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))

"""Generated test video, written with PyAV: digit images as frames, a corrupted copy, the frames back (PNG, arrays)."""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
from PIL import Image


def write_digit_video(path: Path, images: list[np.ndarray], fps: int = 10) -> Path:
    """``images`` (H×W uint8, even sides) as an MJPEG Matroska video at ``fps``: every frame a keyframe, so a
    damaged stretch costs only its own frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuvj420p"
        for image in images:
            rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def corrupt_middle(path: Path, target: Path, start: float = 0.4, end: float = 0.6) -> Path:
    """A copy of ``path`` whose bytes between fractions ``start`` and ``end`` are random (seeded)."""
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = random.Random(0).randbytes(b - a)
    target.write_bytes(bytes(data))
    return target


def extract_frames(path: Path, folder: Path) -> list[Path]:
    """Every decoded frame as ``<folder>/<index:05d>.png`` (RGB), the input ``predict-batch`` gets."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            file = folder / f"{index:05d}.png"
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(file)
            files.append(file)
    return files


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the video at ``path``, decoded as H×W×3 RGB."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]

"""``visionloop stream --annotate OUT.mp4``: every classified frame written again with its label and confidence.

A person checking a camera's answers wants to see them on the pictures. Each classified frame is drawn with
PIL (a dark band at the top, ``label  confidence`` in white), enlarged first when smaller than
``stream.annotate_min_side`` (nearest neighbour, so a 32×32 frame stays sharp and the text readable), and
encoded with PyAV: H.264 (``libx264``) where this FFmpeg build has it, else MPEG-4 Part 2 (``mpeg4``), which
every build carries. A frame's presentation time is its stream time, so the video plays at the sampled rate
and a dropped stretch of a live source shows as a held picture, not as a jump in speed.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CODECS = ("libx264", "mpeg4")  # in order of preference: the first this PyAV/FFmpeg build can encode is used
TIME_BASE = Fraction(1, 1000)  # presentation times in milliseconds of stream time


def pick_codec() -> str:
    """The first encoder of ``CODECS`` that this FFmpeg build has (``RuntimeError`` when it has none)."""
    import av

    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name
    raise RuntimeError(f"this FFmpeg build encodes none of {', '.join(CODECS)}: --annotate is unavailable")


def draw_answer(rgb: np.ndarray, label: str, confidence: float, min_side: int) -> np.ndarray:
    """``rgb`` (H×W×3) enlarged to at least ``min_side`` on its short side (even sides, as H.264 wants), with
    ``label  confidence`` written in a band across its top."""
    height, width = rgb.shape[:2]
    scale = max(1, -(-min_side // min(height, width)))  # a whole factor: pixels stay square and sharp
    size = (_even(width * scale), _even(height * scale))
    image = Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.NEAREST)
    band = max(12, size[1] // 8)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0], band), fill=(0, 0, 0))
    font = ImageFont.load_default(size=max(8, band - 4))
    draw.text((4, 1), f"{label}  {confidence:.2f}", fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _even(n: int) -> int:
    return n + (n % 2)


class AnnotatedVideo:
    """An output video of answered frames; ``write`` one frame and its answer at a time, ``close`` to finish.

    The encoder is opened at the first frame (its size is the first frame's, enlarged); a later frame of
    another size (a stream that changed resolution) is resized to it.
    """

    def __init__(self, path: Path, fps: float, min_side: int) -> None:
        self.path = path
        self.fps = fps
        self.min_side = min_side
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1

    def write(self, rgb: np.ndarray, timestamp: float, label: str, confidence: float) -> None:
        """Draw the answer on the frame and encode it at ``timestamp`` (seconds of stream time)."""
        import av

        picture = draw_answer(rgb, label, confidence, self.min_side)
        if self._container is None:
            self._open(picture.shape[1], picture.shape[0])
        elif picture.shape[:2] != (self._stream.height, self._stream.width):
            size = (self._stream.width, self._stream.height)
            picture = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.NEAREST))
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        # strictly increasing: two frames within one millisecond (or a reopened stream) still encode
        self._last_pts = max(self._last_pts + 1, round(timestamp / TIME_BASE))
        frame.pts, frame.time_base = self._last_pts, TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), "w")
        except (av.FFmpegError, ValueError) as error:  # e.g. a suffix no FFmpeg muxer is named by
            raise RuntimeError(f"--annotate {self.path}: cannot write this video ({error}); try OUT.mp4") from None
        self._stream = self._container.add_stream(pick_codec(), rate=Fraction(self.fps).limit_denominator(1000))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = TIME_BASE

    def close(self) -> None:
        """Flush the encoder and finish the file (nothing is written when no frame was)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

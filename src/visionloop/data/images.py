"""One image: the check every image passes before it enters the loop, and its canonical form.

A training file, a REST upload, a batch input and a labeled folder all go through
``canonicalize_image_bytes``: the declared size is checked before any pixel is decoded, then the
image is brought to one canonical form (8-bit "L" or 8-bit "RGB"). A refusal is an ``InvalidImage``
whose message a person can act on and whose ``code`` (below) is stable, for grouping and APIs.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Reason codes (``InvalidImage.code``, ``QuarantineEntry.code``, a batch row's ``error_code``).
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported_format"
DUPLICATE = "duplicate"
DUPLICATE_CONFLICT = "duplicate_label_conflict"
MISSING_FILE = "missing_file"
NO_LABEL = "no_label"
UNREADABLE = "unreadable"
OUTSIDE_ROOT = "outside_root"  # a source names a file outside its own folder: never read, never copied

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
# warnings.catch_warnings swaps process-wide filters; serialise our own users of it (the REST
# server validates uploads from several threads).
_WARNINGS_LOCK = threading.Lock()


class InvalidImage(ValueError):
    """An image that cannot enter the loop; ``str(exc)`` is meant for the person who sent it."""

    def __init__(self, reason: str, code: str = CORRUPT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class CanonicalImage:
    """Canonical pixels (uint8, H×W for "L", H×W×3 for "RGB") and what was done to get them."""

    array: np.ndarray
    converted_from: str | None  # original mode (plus "+exif_orientation" when rotated); None if untouched

    @property
    def sha256(self) -> str:
        return pixel_sha256(self.array)


def canonicalize_image_bytes(data: bytes, *, channels: int, min_side: int, max_pixels: int) -> CanonicalImage:
    """Check one encoded image and bring it to canonical form; raise ``InvalidImage`` if it can't be.

    The declared size is checked from the header before any pixel is decoded, so a small file
    declaring a huge image (a decompression bomb) costs nothing.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise InvalidImage("empty file (0 bytes)", EMPTY)
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(
            f"image is too large, refused before decoding (possible decompression bomb): {exc}", TOO_LARGE
        ) from None
    except Image.UnidentifiedImageError:
        raise InvalidImage(
            "not an image, or not an image format that can be read (use PNG, JPEG, BMP, GIF, TIFF or WebP)",
            NOT_AN_IMAGE,
        ) from None
    except Exception as exc:  # any other parser failure on the header
        raise InvalidImage(f"corrupt image header: {exc}", CORRUPT) from None

    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "refused before decoding (possible decompression bomb)",
            TOO_LARGE,
        )
    if min(width, height) < min_side:
        raise InvalidImage(
            f"image is {width}x{height} pixels; each side must be at least {min_side} pixels", TOO_SMALL
        )
    try:
        image.load()
    except Exception as exc:
        raise InvalidImage(f"the image data is corrupt or truncated ({exc})", CORRUPT) from None
    array, converted_from = _to_canonical(image, channels)
    return CanonicalImage(array=array, converted_from=converted_from)


def validate_image_bytes(data: bytes, *, channels: int, min_side: int, max_pixels: int) -> np.ndarray:
    """The canonical uint8 pixels of an encoded image (H×W or H×W×3), or ``InvalidImage(reason)``."""
    return canonicalize_image_bytes(data, channels=channels, min_side=min_side, max_pixels=max_pixels).array


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header declares them, nothing decoded (PIL opens lazily); None when the header
    cannot be read or declares a decompression bomb — ``canonicalize_image_bytes`` then says why."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # noqa: BLE001 - any unreadable header is the decoder's to report
        return None


def _to_canonical(image: Image.Image, channels: int) -> tuple[np.ndarray, str | None]:
    """Convert a decoded image to 8-bit "L"/"RGB"; returns the pixels and the conversion done."""
    target = "L" if channels == 1 else "RGB"
    source_mode = image.mode
    notes: list[str] = []
    try:
        if image.getexif().get(0x0112, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)
            notes.append("exif_orientation")
    except Exception as exc:  # a broken EXIF block is a broken file, not a crash
        raise InvalidImage(f"corrupt EXIF metadata: {exc}", CORRUPT) from None
    try:
        if image.mode == target and "transparency" not in image.info:
            converted = image
        elif image.mode in _SIXTEEN_BIT_MODES:
            # 16-bit samples scale to 8 bits by 255/65535 (a fixed map, not per-image stretching).
            wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
            converted = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert(target)
        elif image.mode in _ALPHA_MODES or "transparency" in image.info:
            if image.mode not in _ALPHA_MODES:
                notes.append("transparency")
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            converted = Image.alpha_composite(white, rgba).convert(target)
        elif image.mode == "F":
            raise InvalidImage(
                "unsupported pixel format 'F' (32-bit float); send 8- or 16-bit grayscale, RGB, RGBA, "
                "palette or CMYK",
                UNSUPPORTED,
            )
        elif image.mode in ("L", "RGB", "1", "P") or target == "RGB":
            converted = image.convert(target)
        else:  # CMYK, YCbCr, LAB, HSV, ... go through RGB on the way to L
            converted = image.convert("RGB").convert(target)
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"unsupported pixel format {source_mode!r}: {exc}", UNSUPPORTED) from None
    array = np.array(converted, dtype=np.uint8)
    changed = source_mode != target or notes
    return array, "+".join([source_mode, *notes]) if changed else None


def pixel_sha256(array: np.ndarray) -> str:
    """Identity of canonical pixels: sha256 over shape and bytes (equal images ⇔ equal hashes)."""
    header = f"{array.dtype.str}:{'x'.join(map(str, array.shape))}:".encode()
    return hashlib.sha256(header + np.ascontiguousarray(array).tobytes()).hexdigest()


def load_image(path: Path | str) -> np.ndarray:
    """Read a canonical image written by ``prepare``: uint8, H×W for "L", H×W×3 for "RGB"."""
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            raise InvalidImage(
                f"{path} is not canonical (mode {image.mode!r}; expected 'L' or 'RGB')", UNSUPPORTED
            )
        return np.array(image, dtype=np.uint8)

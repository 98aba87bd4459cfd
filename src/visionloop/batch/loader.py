"""Reading and preprocessing the inputs of a batch job: a Dataset and a collate that carry errors.

A file that cannot be read or is not a valid image (``data.images.canonicalize_image_bytes``)
becomes an error in its batch, never an exception: one bad file costs its own row, not the job.
Batches never straddle two parts, so a part is complete when its last batch is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from visionloop.batch.inputs import InputSource
from visionloop.data.images import MISSING_FILE, UNREADABLE, InvalidImage, canonicalize_image_bytes
from visionloop.training.preprocess import as_hwc


@dataclass
class Item:
    """One input as read: its tensor, or the reason it has none."""

    position: int  # index in this run's to-do list
    key: str
    tensor: torch.Tensor | None = None
    image: np.ndarray | None = None  # canonical pixels, kept only for the prediction log
    error: str | None = None
    code: str | None = None


@dataclass
class Batch:
    """The items of one forward pass: a stacked tensor of the readable ones, the others as errors."""

    positions: list[int]
    keys: list[str]
    ok: list[int]  # indexes (into keys) of the items that have a tensor
    tensor: torch.Tensor | None
    images: list[np.ndarray]
    errors: dict[int, tuple[str, str]]  # index → (reason, code)


class ImageFiles(Dataset):
    """Reads, validates (``canonicalize_image_bytes``) and preprocesses one file per item; never raises."""

    def __init__(
        self,
        source: InputSource,
        keys: list[str],
        transform: A.Compose,
        *,
        channels: int,
        min_side: int,
        max_pixels: int,
        keep_images: bool,
    ) -> None:
        self.source = source
        self.keys = keys
        self.transform = transform
        self.channels = channels
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> Item:
        key = self.keys[position]
        item = Item(position, key)
        try:
            with open(self.source.file(key), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            item.error, item.code = f"file not found: {key}", MISSING_FILE
            return item
        except OSError as exc:
            item.error, item.code = f"cannot read the file: {exc.strerror or exc}", UNREADABLE
            return item
        try:
            image = canonicalize_image_bytes(
                data, channels=self.channels, min_side=self.min_side, max_pixels=self.max_pixels
            ).array
            item.tensor = self.transform(image=as_hwc(image))["image"].float()
        except InvalidImage as exc:
            item.error, item.code = exc.reason, exc.code
            return item
        except Exception as exc:  # noqa: BLE001 - a decoder or transform failure costs this row only
            item.error, item.code = f"cannot preprocess the image: {type(exc).__name__}: {exc}", UNREADABLE
            return item
        if self.keep_images:
            item.image = image
        return item


def collate_items(items: list[Item]) -> Batch:
    """Stack the images that could be read; carry the others as errors."""
    ok = [i for i, item in enumerate(items) if item.tensor is not None]
    return Batch(
        positions=[item.position for item in items],
        keys=[item.key for item in items],
        ok=ok,
        tensor=torch.stack([items[i].tensor for i in ok]) if ok else None,
        images=[items[i].image for i in ok if items[i].image is not None],
        errors={i: (item.error or "", item.code or UNREADABLE) for i, item in enumerate(items) if item.tensor is None},
    )


class PartBatches:
    """Batches of positions that never straddle two parts, so a part is done when its last batch is."""

    def __init__(self, n: int, batch_size: int, part_size: int) -> None:
        self.n, self.batch_size, self.part_size = n, batch_size, part_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.n, self.part_size):
            end = min(start + self.part_size, self.n)
            for first in range(start, end, self.batch_size):
                yield list(range(first, min(first + self.batch_size, end)))

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.part_size)
        return full * -(-self.part_size // self.batch_size) + -(-rest // self.batch_size)

"""Image corruptions that simulate production shift: for the demo, the drift benchmark and tests.

Each takes a canonical uint8 image (H×W or H×W×C), a severity in {1, 2} and a numpy Generator,
and returns a uint8 image of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _clip(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = {1: 20.0, 2: 45.0}[severity]
    return _clip(image.astype(np.float32) + rng.normal(0, sigma, image.shape))


def blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius = {1: 1.0, 2: 2.0}[severity]
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def brightness_contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A washed-out, brighter sensor: lower contrast around a raised mean."""
    contrast, shift = {1: (0.7, 40.0), 2: (0.45, 90.0)}[severity]
    return _clip(image.astype(np.float32) * contrast + shift)


def rotation(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    degrees = {1: 25.0, 2: 50.0}[severity] * rng.choice([-1, 1])
    return np.asarray(Image.fromarray(image).rotate(float(degrees), resample=Image.BILINEAR))


def new_camera(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The demo's drift: a blurrier, noisier, washed-out camera the model never saw."""
    return gaussian_noise(brightness_contrast(blur(image, severity, rng), severity, rng), 1, rng)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "brightness_contrast": brightness_contrast,
    "rotation": rotation,
    "new_camera": new_camera,
}


def corrupt(images: list[np.ndarray], name: str, severity: int, seed: int = 0) -> list[np.ndarray]:
    """Apply one named corruption to every image (reproducibly)."""
    rng = np.random.default_rng(seed)
    fn = CORRUPTIONS[name]
    return [fn(img, severity, rng) for img in images]

"""Pictures to pixel_values the way Hugging Face's Gemma3ImageProcessor makes them.

Resize to the model's square size with bilinear resampling (on 8-bit RGB, as the processor
does through Pillow), rescale by 1/255, normalise with the model's mean and std, channels
first. Orientation, colour modes and alpha are settled before this (tasks/images.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def pixel_values(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[3, size, size] float32 for one RGB image."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(resized).astype(np.float32) * np.float32(1 / 255)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def batch_pixels(images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return np.stack([pixel_values(im, size, mean, std) for im in images]).astype(np.float32)

"""Pictures to pixel_values the way Hugging Face's Gemma3ImageProcessor makes them.

Resize to the model's square size with bilinear resampling (on 8-bit RGB, as the processor
does through Pillow), rescale by 1/255, normalise with the model's mean and std, channels
first. Orientation, colour modes and alpha are settled before this (tasks/images.py).
"""

from __future__ import annotations

import math
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


def pan_and_scan(image: Image.Image, max_crops: int = 4, min_crop_size: int = 256,
                 min_ratio: float = 1.2) -> list[Image.Image]:
    """Crops of a tall or wide picture, each seen at full resolution besides the whole.

    The rule is Gemma3ImageProcessor's (do_pan_and_scan): only past an aspect ratio of
    `min_ratio`, about as many crops as the ratio (2 to `max_crops`), none smaller than
    `min_crop_size`. A page of text squeezed into one 896-pixel square loses its small
    print; the crops keep it.
    """
    width, height = image.size
    if width >= height:
        if width / height < min_ratio:
            return []
        across = min(int(math.floor(width / height + 0.5)), int(math.floor(width / min_crop_size)))
        across, down = min(max_crops, max(2, across)), 1
    else:
        if height / width < min_ratio:
            return []
        down = min(int(math.floor(height / width + 0.5)), int(math.floor(height / min_crop_size)))
        across, down = 1, min(max_crops, max(2, down))
    crop_w, crop_h = int(math.ceil(width / across)), int(math.ceil(height / down))
    if min(crop_w, crop_h) < min_crop_size:
        return []
    return [image.crop((x, y, min(x + crop_w, width), min(y + crop_h, height)))
            for y in range(0, crop_h * down, crop_h) for x in range(0, crop_w * across, crop_w)]

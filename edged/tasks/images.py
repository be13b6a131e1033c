"""Decoding image inputs into RGB pictures, with a clear error for every way one can be bad."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edged.config import ImageTaskSettings, Settings
from edged.engine.api import Request
from edged.tasks.base import InputError, render, require_bytes


def decode_image(data: bytes, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """(RGB image, notes). EXIF orientation applied, alpha flattened on white, first frame only."""
    notes: list[str] = []
    if not data:
        raise InputError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (not raises) between 1x and 2x its limit: treat both as a bomb.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
                                 " (decompression bomb guard)")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"animated image with {frames} frames: used the first")
                img.seek(0)
            img.load()
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"image rejected as a decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            raise InputError("not an image, or a format Pillow cannot read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"corrupt or truncated image: {exc}") from None
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img, notes


def image_request(data: bytes, cfg: ImageTaskSettings, default_prompt: str,
                  settings: Settings) -> tuple[Request, list[str]]:
    """The engine request of an image task (the decoded picture and the task's prompt), and the
    decoder's notes for the job's log line."""
    require_bytes(data)
    image, notes = decode_image(data, cfg.max_pixels)
    request = Request(text=render(cfg.prompt or default_prompt), images=(image,),
                      max_new_tokens=cfg.max_new_tokens or settings.model.max_new_tokens,
                      pan_and_scan=cfg.max_crops if cfg.pan_and_scan else 0)
    return request, notes

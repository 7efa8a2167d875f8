"""The one preprocessing path shared by training, evaluation and the workers.

Bytes -> RGB pixels (EXIF orientation honoured, any Pillow mode normalised) -> bilinear
resize to the network's input size (256x256 for the thesis' network, 224x224 for the
shipped one) -> uint8 pixels -> float32 scaled by 1/255, as in the thesis. It uses only
Pillow and NumPy so that it can run anywhere, TensorFlow or not.

The last step, ``scale``, is the only one a worker does elsewhere: it hands the network
uint8 pixels and its compiled graph multiplies by the same ``INPUT_SCALE`` (a quarter of
the bytes to stack and copy, and converting to float in NumPy cost as much as decoding).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from model.quality import measure

TARGET_SIZE = (256, 256)
# The thesis' scaling of 8-bit pixels to [0, 1], as a float32 factor so that NumPy here and
# TensorFlow in the workers' graph (``model.inference``) compute bit-identical inputs.
INPUT_SCALE = np.float32(1.0 / 255.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float images: stretch the value range to 8 bits instead of letting
        # Pillow clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, the colour of an empty slide background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # upright RGB, resized to the network's input size
    original_size: tuple[int, int]  # (width, height) as received
    original_mode: str  # Pillow mode as received, before conversion to RGB


def _open(data: bytes, target_size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int], str]:
    img = Image.open(io.BytesIO(data))
    size, mode = img.size, img.mode
    if img.format == "JPEG":
        # Let libjpeg decode big images at a reduced scale; a no-op for small ones.
        img.draft("RGB", target_size)
    return _to_rgb(ImageOps.exif_transpose(img)), size, mode


def load_rgb(data: bytes, target_size: tuple[int, int] = TARGET_SIZE) -> Image.Image:
    """Decode image bytes to an upright RGB image (first frame of animations)."""
    return _open(data, target_size)[0]


def decode(data: bytes, target_size: tuple[int, int] = TARGET_SIZE) -> Decoded:
    """Decode and resize to what the network sees, keeping what the quality gate needs."""
    img, size, mode = _open(data, target_size)
    if img.size != target_size:
        img = img.resize(target_size, Image.Resampling.BILINEAR)
    return Decoded(img, size, mode)


def to_pixels(img: Image.Image, target_size: tuple[int, int] = TARGET_SIZE) -> np.ndarray:
    """Resize an RGB image to the network's input size: uint8, shape (H, W, 3)."""
    if img.size != target_size:
        img = img.resize(target_size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def scale(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to the network's input: float32 in [0, 1]."""
    return pixels.astype(np.float32) * INPUT_SCALE


def to_model_input(img: Image.Image, target_size: tuple[int, int] = TARGET_SIZE) -> np.ndarray:
    """Resize an RGB image and scale it to float32 in [0, 1], shape (H, W, 3)."""
    return scale(to_pixels(img, target_size))


def preprocess(data: bytes, target_size: tuple[int, int] = TARGET_SIZE) -> np.ndarray:
    """Image bytes to the network's input tensor for one image."""
    return to_model_input(decode(data, target_size).image, target_size)


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # what the network sees before ``scale``: uint8 (H, W, 3)
    quality: dict[str, float]  # ``model.quality`` measures
    original_mode: str


def prepare(
    data: bytes,
    hue_band: tuple[int, int] | None,
    target_size: tuple[int, int] = TARGET_SIZE,
    with_quality: bool = True,
) -> Prepared:
    """``preprocess`` but for ``scale``, plus the quality measures, from one decode (what the
    worker runs; ``model.inference.LoadedModel`` scales the pixels inside its graph).

    ``with_quality=False`` skips the measures, for a network without a gate (whose images all
    go to a person anyway).
    """
    return prepare_decoded(decode(data, target_size), hue_band, target_size, with_quality)


def prepare_decoded(
    decoded: Decoded,
    hue_band: tuple[int, int] | None,
    target_size: tuple[int, int] = TARGET_SIZE,
    with_quality: bool = True,
) -> Prepared:
    """``prepare`` for an image already decoded (fitting the gate needs the decoded training
    images once for the stain hue band, then for everything else)."""
    return Prepared(
        to_pixels(decoded.image, target_size),
        measure(decoded.image, decoded.original_size, hue_band) if with_quality else {},
        decoded.original_mode,
    )

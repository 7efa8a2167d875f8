"""Generated smear-like images for plumbing tests and benchmarks (no patient data needed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synthetic_smear_jpeg(seed: int, size: tuple[int, int] = (224, 224), quality: int = 90) -> bytes:
    """A pinkish background with purple blobs, different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.empty((h, w, 3), dtype=np.float32)
    img[...] = (225, 200, 210)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(3, 8))):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 30)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[mask] = rng.integers(60, 160, size=3)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()

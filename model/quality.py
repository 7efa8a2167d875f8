"""Cheap image-quality measures, taken on the image the network sees (224x224 RGB for the
shipped network, 256x256 for the thesis').

They run in the worker beside preprocessing, for every image, so they are taken on a 64x64
copy with Pillow's C operations (histograms, one 3x3 filter) and NumPy over 4,096 pixels:
about 0.35 ms an image on the 2-core development host, against several milliseconds at full
size. Only ``blockiness`` and ``fine_detail`` need every pixel: JPEG's 8x8 blocks and the
finest detail vanish in a reduced copy.

The limits each measure must respect are not constants here: ``model.gate`` fits them on the
training split and the model card records them.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

# 8-bit HSV saturation above which a pixel counts as stained (about 0.2 of full scale):
# slide background, glare and grey objects fall below it.
STAINED_SATURATION = 50
# 8-bit grey level difference from the field's median that counts as an object (cell,
# debris, edge) rather than empty background.
OBJECT_CONTRAST = 24
DARK_LEVEL = 16
BRIGHT_LEVEL = 250
HUE_BINS = 256

_LAPLACIAN = ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], scale=1, offset=128)

# Every measure, in a fixed order (columns of the fitted limits and the drift reference).
MEASURES = (
    "focus",  # variance of the Laplacian of the grey image: low = blurred, very high = noise
    "brightness",  # mean grey level, 0-1
    "dark_fraction",  # share of near-black pixels
    "bright_fraction",  # share of blown-out white pixels
    "stained_fraction",  # share of pixels stained in the training hue band
    "off_hue_fraction",  # share of pixels strongly coloured outside that band
    "object_fraction",  # share of pixels that differ from the background (not empty field)
    "aspect_ratio",  # long side / short side of the original image
    "min_side",  # short side of the original image, in pixels
    "blockiness",  # grey-level jumps across JPEG's 8x8 block edges / elsewhere: compression
    "fine_detail",  # neighbour steps / steps two pixels apart: low = blurred or enlarged
)

# JPEG codes 8x8 blocks from the image's top-left corner, so at a lossy quality the grey
# level jumps more between pixels 7|8, 15|16, ... than between any other neighbours.
JPEG_BLOCK = 8


_LEVELS = np.arange(256, dtype=np.float64)


def is_stained(hsv: np.ndarray) -> np.ndarray:
    """Per pixel of an 8-bit HSV array (..., 3): whether it is stained (a cell, not the
    pale background). The one definition the gate's measures and the heatmap checks share."""
    return hsv[..., 1] > STAINED_SATURATION


def hue_histogram(img: Image.Image) -> np.ndarray:
    """Counts of stained pixels per 8-bit hue (what the hue band is fitted on)."""
    hsv = np.asarray(img.reduce(4).convert("HSV"))  # the same 64x64 copy as ``measure``
    return np.bincount(hsv[..., 0][is_stained(hsv)], minlength=HUE_BINS)


def in_band(hue: np.ndarray, hue_band: tuple[int, int]) -> np.ndarray:
    """Whether each 8-bit hue lies in the band, which may wrap around 255 (low > high)."""
    low, high = hue_band
    if low <= high:
        return (hue >= low) & (hue <= high)
    return (hue >= low) | (hue <= high)


def blockiness(channel: np.ndarray) -> float:
    """Mean absolute step between neighbouring pixels across the 8x8 block edges over the
    mean step elsewhere, across columns and rows averaged: about 1.0 for an image saved
    without loss or at a high JPEG quality, above 1.2 for the validation images saved again at
    quality 50 and above 1.35 at quality 30. A grid shifted by a crop after compression, or
    blurred away by a resize, is not seen: the domain check is left for those.
    """
    values = np.asarray(channel, dtype=np.int16)
    ratios = []
    for rows in (values, values.T):
        if rows.shape[1] <= JPEG_BLOCK:
            return math.nan  # no block edge inside the image: nothing to compare
        steps = np.abs(np.diff(rows, axis=1)).sum(axis=0, dtype=np.int64)  # per column pair
        edge = steps[JPEG_BLOCK - 1 :: JPEG_BLOCK]  # pairs 7|8, 15|16, ...
        per_edge = edge.sum() / edge.size / rows.shape[0]
        per_other = (steps.sum() - edge.sum()) / (steps.size - edge.size) / rows.shape[0]
        # The small constant keeps a flat image (no steps at all) at 1.0 instead of 0/0.
        ratios.append((per_edge + 1e-3) / (per_other + 1e-3))
    return float(np.mean(ratios))


def fine_detail(channel: np.ndarray) -> float:
    """Mean absolute step between neighbouring pixels over the mean step between pixels two
    apart, across columns and rows averaged.

    Where a field varies smoothly at the scale of one pixel (optical blur, a field enlarged
    from a smaller capture or a higher magnification digitally zoomed) the two-pixel step is
    twice the one-pixel step and the ratio falls towards 0.5; the camera's own fine texture
    keeps it higher (training images: 0.53-0.61). Unlike ``focus`` it does not depend on the
    field's contrast, and it is taken at full size, where a blur of 1.5 pixels is still a blur
    (in the 64x64 copy it is less than half a pixel). On validation images blurred with sigma
    1.5 or enlarged 2x it fell below every training image.
    """
    values = np.asarray(channel, dtype=np.int16)
    ratios = []
    for rows in (values, values.T):
        if rows.shape[1] < 3:
            return math.nan
        near = np.abs(np.diff(rows, axis=1)).mean()
        far = np.abs(rows[:, 2:] - rows[:, :-2]).mean()
        ratios.append((near + 1e-3) / (far + 1e-3))
    return float(np.mean(ratios))


def measure(
    img: Image.Image, original_size: tuple[int, int], hue_band: tuple[int, int] | None = None
) -> dict[str, float]:
    """The quality measures of one RGB image (already resized to the network's input).

    ``hue_band`` is the fitted (low, high) 8-bit hue range of stained training pixels.
    Without it the stain measures are not taken (NaN).
    """
    # Everything on one 64x64 copy (4x4 pixel means): a Laplacian or an HSV conversion over
    # all 256x256 pixels would cost more than the decode itself, and a blur that matters to a
    # network with 3x3 kernels and four poolings still shows at this scale.
    small = img.reduce(4)
    grey = small.convert("L")
    hist = np.asarray(grey.histogram(), dtype=np.float64)
    total = hist.sum()
    lap = np.asarray(grey.filter(_LAPLACIAN).histogram(), dtype=np.float64) / total
    lap_mean = float(lap @ _LEVELS)
    median = int(np.searchsorted(np.cumsum(hist), total / 2))
    hsv = np.asarray(small.convert("HSV"))
    stained = is_stained(hsv)
    small_grey = np.asarray(grey, dtype=np.int16)
    objects = stained | (np.abs(small_grey - median) > OBJECT_CONTRAST)
    width, height = original_size
    # Green carries most of the luma (what JPEG codes finely and what blur softens), and
    # needs no colour conversion; converted to int16 once for both full-size measures.
    green = np.asarray(img)[..., 1].astype(np.int16)
    out = {
        "focus": float(lap @ (_LEVELS - lap_mean) ** 2),
        "brightness": float(hist @ _LEVELS / total / 255.0),
        "dark_fraction": float(hist[: DARK_LEVEL + 1].sum() / total),
        "bright_fraction": float(hist[BRIGHT_LEVEL:].sum() / total),
        "stained_fraction": math.nan,
        "off_hue_fraction": math.nan,
        "object_fraction": float(objects.mean()),
        "aspect_ratio": max(width, height) / max(1, min(width, height)),
        "min_side": float(min(width, height)),
        "blockiness": blockiness(green),
        "fine_detail": fine_detail(green),
    }
    if hue_band is not None:
        hue = hsv[..., 0][stained]
        inside = int(in_band(hue, hue_band).sum())
        out["stained_fraction"] = inside / stained.size
        out["off_hue_fraction"] = (hue.size - inside) / stained.size
    return out

"""Out-of-domain and damaged images made from in-domain ones, to measure the gate.

Nobody on the project has images from other laboratories' microscopes (apart from one
public set), so ``model.fit_gate`` checks the gate on what can be made: stain and colour
shifts far beyond the training augmentation, blur, noise, JPEG damage, exposure, other
magnifications, single cells cut out onto black, and images that are not smears at all.
Each maker takes an upright RGB image and a random generator and returns a new image.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

Maker = Callable[[Image.Image, np.random.Generator], Image.Image | None]


def _hue_shift(img: Image.Image, degrees: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _noise(img: Image.Image, rng: np.random.Generator, sd: float) -> Image.Image:
    a = np.asarray(img, np.float32) + rng.normal(0, sd, (img.height, img.width, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _zoom_in(img: Image.Image, factor: float) -> Image.Image:
    """A higher magnification: the centre 1/factor of the field, enlarged back."""
    w, h = img.size
    cw, ch = int(w / factor), int(h / factor)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _zoom_out(img: Image.Image, factor: float) -> Image.Image:
    """A lower magnification: the field shrunk and tiled, so cells are smaller and more."""
    w, h = img.size
    small = img.resize((int(w / factor), int(h / factor)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (w, h))
    for x in range(0, w, small.width):
        for y in range(0, h, small.height):
            canvas.paste(small, (x, y))
    return canvas


def _single_cell(img: Image.Image, rng: np.random.Generator) -> Image.Image | None:
    """The largest strongly stained cell, cut out onto black and enlarged (as segmented-cell
    collections from other laboratories are published)."""
    from scipy import ndimage

    hsv = np.asarray(img.convert("HSV"))
    mask = ndimage.binary_opening(hsv[..., 1] > 90, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    cell = ndimage.binary_dilation(labels == int(np.argmax(sizes)) + 1, iterations=3)
    ys, xs = np.nonzero(cell)
    rgb = np.asarray(img).copy()
    rgb[~cell] = 0
    crop = rgb[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = int(rng.integers(300, 460))
    return Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR)


def _empty_field(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Bare slide: the image's background colour with sensor noise, no cells."""
    background = np.percentile(np.asarray(img).reshape(-1, 3), 90, axis=0)
    field = background + rng.normal(0, 2, (img.height, img.width, 3))
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _text_page(_: Image.Image, rng: np.random.Generator) -> Image.Image:
    page = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(page)
    for line in range(40):
        words = "".join(chr(int(c)) for c in rng.integers(97, 123, 60))
        draw.text((20, 20 + line * 19), words, fill=(0, 0, 0))
    return page


def _pure_noise(_: Image.Image, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))


def _gradient(_: Image.Image, rng: np.random.Generator) -> Image.Image:
    ramp = np.linspace(0, 1, 256)
    a = ramp[None, :, None] * rng.uniform(0, 255, 3) + ramp[:, None, None] * rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(a / 2, 0, 255).astype(np.uint8))


def _photograph(_: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of one of scikit-learn's two sample photographs (a temple, a flower)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    photo = Image.fromarray(photos[int(rng.integers(len(photos)))])
    side = int(rng.integers(150, 400))
    left = int(rng.integers(0, photo.width - side))
    top = int(rng.integers(0, photo.height - side))
    return photo.crop((left, top, left + side, top + side))


KINDS: dict[str, Maker] = {
    "blur_sigma3": lambda im, rng: im.filter(ImageFilter.GaussianBlur(3)),
    "blur_sigma1.5": lambda im, rng: im.filter(ImageFilter.GaussianBlur(1.5)),
    "noise_sd25": lambda im, rng: _noise(im, rng, 25),
    "jpeg_quality5": lambda im, rng: _jpeg(im, 5),
    # What an e-mail, chat or web form does to a capture; the network clears leukemic fields
    # saved like this (validation, before the compression check: 20 of 332 at quality 50).
    "jpeg_quality50": lambda im, rng: _jpeg(im, 50),
    "jpeg_quality30": lambda im, rng: _jpeg(im, 30),
    "underexposed_x0.35": lambda im, rng: ImageEnhance.Brightness(im).enhance(0.35),
    "overexposed_x1.6": lambda im, rng: ImageEnhance.Brightness(im).enhance(1.6),
    # Another camera's or another setting's flatter rendering of the same field.
    "contrast_x0.7": lambda im, rng: ImageEnhance.Contrast(im).enhance(0.7),
    "near_black": lambda im, rng: ImageEnhance.Brightness(im).enhance(0.08),
    "empty_field": _empty_field,
    "hue_plus60": lambda im, rng: _hue_shift(im, 60),
    "hue_minus60": lambda im, rng: _hue_shift(im, -60),
    "hue_180": lambda im, rng: _hue_shift(im, 180),
    "greyscale": lambda im, rng: im.convert("L").convert("RGB"),
    "magnification_x2": lambda im, rng: _zoom_in(im, 2),
    "magnification_x3": lambda im, rng: _zoom_in(im, 3),
    "magnification_x0.5": lambda im, rng: _zoom_out(im, 2),
    "single_cell_on_black": _single_cell,
    "text_page": _text_page,
    "pure_noise": _pure_noise,
    "colour_gradient": _gradient,
    "photograph": _photograph,
}


def png_bytes(img: Image.Image) -> bytes:
    """A made-up image as the PNG file a worker would receive (lossless: only the damage
    that was made is in it)."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model.preprocess import TARGET_SIZE, load_rgb, preprocess


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_output_is_256_rgb_float_scaled_to_unit_range(make_jpeg):
    x = preprocess(make_jpeg(1))
    assert x.shape == (256, 256, 3)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x.max() > 0.5  # really scaled by 1/255, not left in 0..255 or squashed


def test_scaling_matches_thesis_rescale_of_one_over_255():
    img = Image.new("RGB", TARGET_SIZE, (255, 128, 0))
    x = preprocess(_encode(img, "PNG"))
    np.testing.assert_allclose(x[0, 0], [1.0, 128 / 255, 0.0], rtol=1e-6)


def test_exif_rotation_is_honoured():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = load_rgb(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert rotated.size == (20, 40)
    top, bottom = np.asarray(rotated)[5, 10], np.asarray(rotated)[35, 10]
    assert top.mean() > 200 and bottom.mean() < 50


def test_sixteen_bit_tiff_is_stretched_not_clipped_to_white():
    arr = np.full((32, 32), 32768, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    x = preprocess(_encode(img, "TIFF"))
    assert abs(float(x.mean()) - 0.5) < 0.02


def test_palette_png_with_transparency_is_composited_on_white():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    img.info["transparency"] = 0
    x = preprocess(_encode(img, "PNG", transparency=0))
    np.testing.assert_allclose(x[8, 8], [1.0, 1.0, 1.0], atol=1e-6)


def test_cmyk_and_greyscale_become_three_channel_rgb():
    cmyk = Image.new("CMYK", (30, 30), (0, 255, 255, 0))  # pure red in CMYK
    x = preprocess(_encode(cmyk, "JPEG", quality=95))
    assert x.shape == (256, 256, 3)
    assert x[..., 0].mean() > 0.8 and x[..., 1].mean() < 0.2
    grey = Image.new("L", (30, 30), 100)
    g = preprocess(_encode(grey, "PNG"))
    np.testing.assert_allclose(g[0, 0], [100 / 255] * 3, atol=1e-6)

"""One definition of what counts as an image: intake, serving, training and the benchmark agree."""

from __future__ import annotations

import io
import mimetypes

import pytest
from PIL import Image

from api.intake import ImageCheckError, check_image
from leukoscreen.imagetypes import MIME_TYPES, SUFFIXES
from model.data import list_images


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 80, 120)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", sorted(MIME_TYPES))
def test_every_accepted_format_passes_intake_and_training_reads_its_files(tmp_path, fmt):
    suffix = mimetypes.guess_extension(MIME_TYPES[fmt])
    assert suffix in SUFFIXES, f"{fmt} files ({suffix}) would be skipped by training"
    path = tmp_path / f"cell{suffix}"
    path.write_bytes(_encoded(fmt))
    assert check_image(str(path), 10_000) == (16, 16, fmt)
    (tmp_path / "data" / "Benign").mkdir(parents=True)
    path.rename(tmp_path / "data" / "Benign" / path.name)
    assert list_images(tmp_path / "data") == [(f"Benign/{path.name}", 0)]


def test_webp_is_refused_at_intake_and_not_read_for_training(tmp_path):
    path = tmp_path / "cell.webp"
    path.write_bytes(_encoded("WEBP"))
    with pytest.raises(ImageCheckError, match="WEBP is not an accepted format"):
        check_image(str(path), 10_000)
    benign = tmp_path / "data" / "Benign"
    benign.mkdir(parents=True)
    path.rename(benign / "cell-001.webp")
    (benign / "cell-002.png").write_bytes(_encoded("PNG"))
    assert list_images(tmp_path / "data") == [("Benign/cell-002.png", 0)]

"""images.py: every odd or broken input either decodes to RGB or fails with a one-line ImageError."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from galleryvis.storage.images import ImageError, file_sha256, fit, load_image, to_tensor

BUNDLED = Path(__file__).resolve().parents[1] / "input_images"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _noise(w: int = 48, h: int = 32) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _fails(path: Path, *words: str) -> str:
    """load_image(path) raises ImageError with a one-line message naming the file and the words."""
    with pytest.raises(ImageError) as info:
        load_image(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert path.name in msg or repr(path.name)[1:-1] in msg
    for word in words:
        assert word in msg
    return msg


# -- images that decode --------------------------------------------------------------------------
def test_rgb_round_trips_and_is_fully_loaded(tmp_path: Path) -> None:
    p = tmp_path / "noise.png"
    _noise().save(p)
    img = load_image(p)
    p.unlink()  # fully loaded: no lazy file access afterwards
    assert img.mode == "RGB" and img.size == (48, 32)
    assert np.array_equal(np.asarray(img), np.asarray(_noise()))


def test_grayscale_becomes_grey_rgb(tmp_path: Path) -> None:
    p = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 77, np.uint8), "L").save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.getpixel((2, 2)) == (77, 77, 77)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_onto_white(tmp_path: Path, mode: str) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)  # black everywhere
    rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]  # transparent, opaque, half
    p = tmp_path / f"{mode}.png"
    Image.fromarray(rgba, "RGBA").convert(mode).save(p)
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((1, 0)) == (0, 0, 0)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((2, 0)))


def test_palette_with_transparent_index_uses_white(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    p = tmp_path / "pal.png"
    pal.save(p, transparency=1)
    img = load_image(p)
    assert img.getpixel((0, 0)) == RED and img.getpixel((1, 0)) == WHITE


def test_palette_without_transparency_keeps_colours(tmp_path: Path) -> None:
    p = tmp_path / "pal.gif"
    _noise().convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(p)
    img = load_image(p)
    assert img.mode == "RGB" and len(img.getcolors()) <= 8


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    p = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I")
    img = load_image(p)
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_cmyk_jpeg_converts_to_rgb(tmp_path: Path) -> None:
    p = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p)  # no cyan, full magenta + yellow = red
    img = load_image(p)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img, int) - RED).max() <= 8


def test_exif_orientation_6_is_rotated_upright(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    p = tmp_path / "phone.jpg"
    stored.save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.size == (20, 40)  # portrait now
    top, bottom = np.asarray(img, int)[5, 10], np.asarray(img, int)[35, 10]
    assert np.abs(top - RED).max() <= 10 and np.abs(bottom - BLUE).max() <= 10


def test_one_pixel_image_decodes_and_fits(tmp_path: Path) -> None:
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(p)
    img = load_image(p)
    assert img.size == (1, 1)
    big = fit(img, 224)
    assert big.size == (224, 224) and big.getcolors() == [(224 * 224, (10, 20, 30))]


def test_non_ascii_and_spaces_in_the_name(tmp_path: Path) -> None:
    p = tmp_path / "Chelsea thé cät 猫 .png"
    _noise().save(p)
    assert load_image(p).size == (48, 32)
    assert load_image(str(p)).size == (48, 32)


def test_bundled_images_decode_and_are_attributed() -> None:
    attribution = (BUNDLED / "ATTRIBUTION.md").read_text(encoding="utf-8")
    photos = sorted(p for p in BUNDLED.iterdir() if p.suffix in (".png", ".jpg"))
    assert any(p.name == "cat.png" for p in photos)
    for p in photos:
        assert load_image(p).mode == "RGB"
        assert f"{file_sha256(p)}  {p.name}" in attribution


# -- images that fail ----------------------------------------------------------------------------
def test_over_the_pixel_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "bomb.png"
    Image.new("RGB", (15, 10)).save(p)  # 150 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 150 > limit: Pillow only warns
    _fails(p, "too many pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 150 > 2 x limit: Pillow raises
    _fails(p, "too many pixels")


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = _png_bytes(_noise(), fmt)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: len(data) // 2])
    _fails(p, "truncated")


def test_corrupt_png_data(tmp_path: Path) -> None:
    data = bytearray(_png_bytes(_noise()))
    data[len(data) // 2] ^= 0xFF
    p = tmp_path / "flipped.png"
    p.write_bytes(bytes(data))
    _fails(p)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo\n")
    _fails(p, "not a readable image")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.touch()
    _fails(p, "empty")


def test_folder(tmp_path: Path) -> None:
    p = tmp_path / "photos.png"
    p.mkdir()
    _fails(p, "folder")


def test_missing_file(tmp_path: Path) -> None:
    _fails(tmp_path / "nowhere.jpg", "no such file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "secret.png"
    _noise().save(p)
    p.chmod(0)
    try:
        _fails(p, "permission denied")
    finally:
        p.chmod(0o644)


def test_control_characters_in_the_name_keep_the_message_on_one_line(tmp_path: Path) -> None:
    p = tmp_path / "two\nlines.jpg"
    p.write_text("text")
    assert "\n" not in str(pytest.raises(ImageError, load_image, p).value)


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)


# -- fit, to_tensor, file_sha256 -----------------------------------------------------------------
def test_fit_crops_the_centre_of_a_wide_image() -> None:
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste((0, 255, 0), (100, 0, 200, 100))  # green middle third = the central square
    wide.paste(BLUE, (200, 0, 300, 100))
    out = np.asarray(fit(wide, 50), int)
    assert out.shape == (50, 50, 3)
    assert np.abs(out[:, 5:45] - (0, 255, 0)).max() <= 2  # only the outer columns feel the filter


def test_fit_matches_resize_then_centre_crop() -> None:
    yy, xx = np.mgrid[0:60, 0:90]
    smooth = np.stack([xx * 2.8, yy * 4.2, (xx + yy) * 1.7], axis=-1).astype(np.uint8)
    src = Image.fromarray(smooth, "RGB")
    out = np.asarray(fit(src, 30), int)
    ref = np.asarray(src.resize((45, 30), Image.Resampling.BICUBIC).crop((7, 0, 37, 30)), int)
    assert out.shape == ref.shape
    # same content; the exact centre is 7.5 px in, so the reference is half a pixel off
    assert np.abs(out - ref)[2:-2, 2:-2].max() <= 4


def test_fit_of_a_tall_image_and_upscaling() -> None:
    assert fit(_noise(20, 70), 64).size == (64, 64)
    with pytest.raises(ValueError):
        fit(_noise(), 0)


def test_to_tensor_normalizes_per_channel() -> None:
    img = Image.new("RGB", (4, 3), (255, 0, 51))
    x = to_tensor(img, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    assert x.shape == (3, 3, 4) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -2.0, 0.0]), atol=1e-6)


def test_to_tensor_rejects_bad_statistics() -> None:
    with pytest.raises(ValueError):
        to_tensor(_noise(), mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError):
        to_tensor(_noise(), mean=(0.5,) * 3, std=(0.5, 0.0, 0.5))


def test_file_sha256(tmp_path: Path) -> None:
    p = tmp_path / "bytes.bin"
    p.write_bytes(b"galleryvis" * 1000)
    assert file_sha256(p) == hashlib.sha256(b"galleryvis" * 1000).hexdigest()
    with pytest.raises(ImageError, match="no such file"):
        file_sha256(tmp_path / "missing.bin")


def test_a_patched_image_open_does_not_change_the_message(tmp_path: Path) -> None:
    """Ultralytics replaces ``PIL.Image.open`` on import with one that looks for a HEIF plugin
    when Pillow cannot identify a file; a text file is still 'not a readable image'."""
    pytest.importorskip("ultralytics")
    (tmp_path / "notes.jpg").write_text("not an image")
    code = ("import ultralytics, sys; from galleryvis.storage.images import load_image, ImageError\n"
            "try:\n    load_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "notes.jpg")], capture_output=True, text=True,
                         check=True, env={**os.environ, "YOLO_OFFLINE": "1"})
    assert "not a readable image" in out.stdout, out.stdout + out.stderr[-2000:]

"""Decoding untrusted bytes: every sample file becomes RGB at the model size; bad input is named."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image, ImageOps

from worker.images import ImageTooLarge, Limits, Preprocess, UnsupportedImage, decode, open_image, to_rgb

from .conftest import all_images, image_bytes

SPEC = Preprocess(size=(64, 48), resize="center_crop")


@pytest.mark.parametrize("path", all_images(), ids=lambda p: p.name)
def test_every_sample_file_decodes_to_rgb_at_the_model_size(path):
    tensor = decode(path.read_bytes(), SPEC, Limits())
    assert tensor.shape == (64, 48, 3) and tensor.dtype == torch.uint8
    assert tensor.float().std() > 0 or path.name == "odd_1x1.png"


@pytest.mark.parametrize("name", ["odd_16bit.png", "odd_rgba.png", "odd_palette.png", "odd_cmyk.jpg",
                                  "odd_grayscale.png", "odd_animated.gif"])  # fmt: skip
def test_unusual_modes_become_rgb(name):
    assert to_rgb(open_image(image_bytes(name), Limits())).mode == "RGB"


def test_16bit_pixels_keep_their_brightness():
    assert decode(image_bytes("odd_16bit.png"), SPEC, Limits()).float().mean() > 50


def test_exif_orientation_is_applied():
    # A landscape picture stored rotated, with the EXIF tag saying how to turn it back upright.
    upright = Image.new("RGB", (90, 60), "white")
    upright.paste((255, 0, 0), (0, 0, 45, 30))  # red block top-left
    stored = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the pixels are stored turned 90 degrees counter-clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, "JPEG", exif=exif, quality=95)
    spec = Preprocess(size=(60, 90), resize="stretch")
    expected = decode(_png(upright), spec, Limits()).float()
    assert (decode(stored.getvalue(), spec, Limits()).float() - expected).abs().mean() < 5


def test_the_rotated_sample_is_turned_to_landscape():
    raw = Image.open(io.BytesIO(image_bytes("odd_exif_rotated.jpg")))
    assert raw.size[0] < raw.size[1]
    assert to_rgb(ImageOps.exif_transpose(raw)).size == Image.open(io.BytesIO(image_bytes("cat.jpg"))).size


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_stretch_and_center_crop_sizes():
    for resize in ("stretch", "center_crop"):
        out = decode(image_bytes("odd_panorama.jpg"), Preprocess(size=(30, 40), resize=resize), Limits())
        assert out.shape == (30, 40, 3)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UnsupportedImage),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 100, UnsupportedImage),
        (b"%PDF-1.4 not an image", UnsupportedImage),
        (image_bytes("coffee.jpg")[:2000], UnsupportedImage),
    ],
    ids=["empty", "png-header-then-garbage", "pdf", "truncated-jpeg"],
)
def test_bad_bytes_raise_a_named_error(data, error):
    with pytest.raises(error):
        decode(data, SPEC, Limits())


def test_decompression_bomb_and_oversize_payloads_are_refused():
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 200_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode(bomb.getvalue(), SPEC, Limits())
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode(image_bytes("coffee.jpg"), SPEC, Limits(max_bytes=1000))

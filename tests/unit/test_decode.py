"""The CPU decoder on untrusted bytes: every sample file becomes RGB at the model size; bad input is named."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from worker.decode.cpu import ImageTooLarge, Limits, Preprocess, UnsupportedImage, decode

from ..conftest import all_images, image_bytes

SPEC = Preprocess(size=(64, 48), resize="center_crop")


def pixels(data: bytes, spec: Preprocess = SPEC) -> Image.Image:
    """Our decode's output as a Pillow image (to inspect it)."""
    height, width = spec.size
    return Image.frombytes("RGB", (width, height), decode(data, spec, Limits()))


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True)) / len(a.tobytes())


@pytest.mark.parametrize("path", all_images(), ids=lambda p: p.name)
def test_every_sample_file_decodes_to_rgb_at_the_model_size(path):
    out = decode(path.read_bytes(), SPEC, Limits())
    assert len(out) == 64 * 48 * 3
    assert len(set(out)) > 1 or path.name == "odd_1x1.png"


@pytest.mark.parametrize("name", ["odd_cmyk.jpg", "odd_progressive.jpg", "odd.webp"])
def test_other_encodings_of_the_coffee_photo_decode_to_the_same_picture(name):
    assert mean_abs_diff(pixels(image_bytes(name)), pixels(image_bytes("coffee.jpg"))) < 6


def test_grayscale_becomes_equal_channels():
    out = pixels(image_bytes("odd_grayscale.png")).tobytes()
    assert out[0::3] == out[1::3] == out[2::3] and len(set(out)) > 10


def test_transparent_pixels_become_white_and_opaque_ones_keep_their_colour():
    img = Image.new("RGBA", (40, 40), (0, 0, 255, 0))
    img.paste((255, 0, 0, 255), (0, 0, 20, 40))  # left half opaque red, right half transparent
    out = pixels(_png(img), Preprocess(size=(40, 40), resize="stretch"))
    assert out.getpixel((5, 20)) == (255, 0, 0) and out.getpixel((35, 20)) == (255, 255, 255)


def test_palette_colours_are_kept():
    img = Image.new("P", (20, 20))
    img.putpalette([0, 128, 0] + [0] * 765)
    assert pixels(_png(img), Preprocess(size=(20, 20), resize="stretch")).getpixel((10, 10)) == (0, 128, 0)


def test_16bit_pixels_keep_their_brightness():
    assert sum(pixels(image_bytes("odd_16bit.png")).tobytes()) / (64 * 48 * 3) > 50


def test_exif_orientation_is_applied():
    # A landscape picture stored rotated, with the EXIF tag saying how to turn it back upright.
    upright = Image.new("RGB", (90, 60), "white")
    upright.paste((255, 0, 0), (0, 0, 45, 30))  # red block top-left
    stored = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the pixels are stored turned 90 degrees counter-clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, "JPEG", exif=exif, quality=95)
    spec = Preprocess(size=(60, 90), resize="stretch")
    assert mean_abs_diff(pixels(stored.getvalue(), spec), pixels(_png(upright), spec)) < 5


def test_the_rotated_sample_decodes_upright_not_as_stored():
    spec = Preprocess(size=(60, 90), resize="stretch")
    ours = pixels(image_bytes("odd_exif_rotated.jpg"), spec)
    stored = Image.open(io.BytesIO(image_bytes("odd_exif_rotated.jpg"))).convert("RGB").resize((90, 60))
    upright = Image.open(io.BytesIO(image_bytes("odd_exif_rotated.jpg"))).transpose(Image.Transpose.ROTATE_90)
    assert mean_abs_diff(ours, upright.convert("RGB").resize((90, 60))) < 5
    assert mean_abs_diff(ours, stored) > 20


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_stretch_and_center_crop_sizes():
    for resize in ("stretch", "center_crop"):
        out = pixels(image_bytes("odd_panorama.jpg"), Preprocess(size=(30, 40), resize=resize))
        assert out.size == (40, 30)


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


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit PNG of ``width`` x ``height`` zeros, compressed the way a real bomb is (built in
    milliseconds: one zero row compressed once per row would take seconds through Pillow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_and_oversize_payloads_are_refused():
    bomb = io.BytesIO(png_bomb(30000, 30000))
    assert len(bomb.getvalue()) < 200_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode(bomb.getvalue(), SPEC, Limits())
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode(image_bytes("coffee.jpg"), SPEC, Limits(max_bytes=1000))


@pytest.mark.parametrize("megapixels", [100, 200])
def test_an_image_past_pillows_own_bomb_guard_is_image_too_large_in_our_limits_terms(megapixels):
    side = int((megapixels * 1_000_000) ** 0.5)
    with pytest.raises(ImageTooLarge, match=r"over the limit of 40,000,000 \(--max-pixels\)") as refused:
        decode(png_bomb(side, side), SPEC, Limits(max_pixels=40_000_000))
    assert f"{side * side:,} pixels" in str(refused.value)

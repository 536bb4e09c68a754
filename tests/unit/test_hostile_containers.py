"""Images whose containers cost far more than their pixels (a review's findings): a rotated image's EXIF block
(re-encoded by ``ImageOps.exif_transpose``), PNG chunk floods and repeated ICC profiles, run-length BMPs, and
headers that fool the pixel budget (a format we refuse but Pillow opens; a JPEG marker without a length)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageOps

from worker.decode import cpu
from worker.decode.budget import header_pixels, jpeg_pixels
from worker.decode.containers import (
    MAX_GIF_EXTENSIONS,
    MAX_GIF_SUBBLOCKS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_ANCILLARY,
    MAX_PNG_CHUNKS,
    MAX_RLE_BMP_PIXELS,
)
from worker.decode.cpu import ImageTooLarge, Limits, Preprocess, decode, resize, to_rgb

SPEC, LIMITS = Preprocess(size=(24, 40)), Limits()


def rotated(fmt: str, orientation: int, size: tuple[int, int] = (60, 36)) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_every_orientation_gives_exif_transposes_pixels_without_rebuilding_the_exif_block(fmt, monkeypatch):
    files, expected = {turn: rotated(fmt, turn) for turn in range(0, 10)}, {}  # 0 and 9 are invalid: as stored
    for turn, data in files.items():
        with Image.open(io.BytesIO(data)) as img:
            expected[turn] = resize(to_rgb(ImageOps.exif_transpose(img)), SPEC).tobytes()
    monkeypatch.setattr(Image.Exif, "tobytes", lambda *a, **k: pytest.fail("the EXIF block was re-encoded"))
    for turn, pixels in expected.items():
        if turn == 1 and fmt == "JPEG":
            continue  # an upright JPEG is drafted (another size before the resize): tests/unit/test_direct_decode.py
        assert cpu.pillow_decode(files[turn], SPEC, LIMITS) == pixels, turn


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(extra: list[bytes], size: tuple[int, int] = (8, 8)) -> bytes:
    """A grey PNG with ``extra`` chunks before its image data."""
    raw = b"".join(b"\x00" + bytes([128]) * size[0] for _ in range(size[1]))
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", *size, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + b"".join(extra) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png_chunk_floods_and_repeated_icc_profiles_are_refused_before_pillow_parses_them():
    profile = chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"\x00" * 4096))
    text = [chunk(b"tEXt", b"k\x00v")]
    for data, why in (
        (png_with([profile, profile]), "more than one ICC profile"),
        (png_with(text * (MAX_PNG_ANCILLARY + 1)), f"over {MAX_PNG_ANCILLARY:,} chunks"),
        (png_with([chunk(b"IDAT", b"")] * MAX_PNG_CHUNKS), f"over {MAX_PNG_CHUNKS:,} chunks"),
    ):
        with pytest.raises(ImageTooLarge, match=why):
            decode(data, SPEC, LIMITS)
        assert header_pixels(data) == 0  # the budget does not open it either
    for fine in (png_with([profile]), png_with(text * (MAX_PNG_ANCILLARY - 1))):
        assert decode(fine, SPEC, LIMITS) == bytes([128]) * (24 * 40 * 3)


def rle8_bmp(width: int, height: int, body: bytes) -> bytes:
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


def test_run_length_bmps_over_the_limit_are_refused_and_small_ones_decoded():
    side = int(MAX_RLE_BMP_PIXELS**0.5) + 1
    with pytest.raises(ImageTooLarge, match="run-length compressed BMP"):
        decode(rle8_bmp(side, side, b"\x00\x01"), SPEC, LIMITS)  # end of bitmap at once: 27 bytes of 4 Mpx
    small = rle8_bmp(40, 24, (bytes([40, 200]) + b"\x00\x00") * 24 + b"\x00\x01")  # rows of 40 pixels of 200
    assert decode(small, SPEC, LIMITS) == bytes([200]) * (24 * 40 * 3)


def test_the_pixel_budget_reads_no_format_the_decoder_refuses():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "ICO", sizes=[(64, 64)])  # Pillow opens ICO; the decoder does not
    assert header_pixels(buf.getvalue()) == 0


def test_the_jpeg_walk_gives_up_where_it_could_be_fooled():
    real = io.BytesIO()
    Image.new("RGB", (300, 200)).save(real, "JPEG")
    data = real.getvalue()
    assert jpeg_pixels(data) == 300 * 200
    # RST0 after SOI has no length; read as if it had one (0xFFEF) it lands in an APP15 holding a 1x1 frame
    body = bytearray(65531)
    body[0xFFEF + 4 - 8 : 0xFFEF + 4 - 8 + 9] = b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01"
    hidden = data[:2] + b"\xff\xd0\xff\xef" + struct.pack(">H", 65533) + bytes(body) + data[2:]
    assert jpeg_pixels(hidden) == 0 and header_pixels(hidden) == 300 * 200  # Pillow's reading
    sof = data.index(b"\xff\xc0")
    length = int.from_bytes(data[sof + 2 : sof + 4], "big")
    tiny = data[sof : sof + 2 + length].replace(b"\x00\xc8\x01\x2c", b"\x00\x01\x00\x01")  # 200x300 -> 1x1
    twice = data[:sof] + tiny + data[sof:]  # a 1x1 frame header before the real one
    assert jpeg_pixels(twice) == 0


def gif_with_comments(count: int) -> bytes:
    """A 16 x 16 GIF with ``count`` empty comment extensions before its image."""
    buf = io.BytesIO()
    Image.new("P", (16, 16), 1).save(buf, "GIF", palette=bytes([0, 0, 0, 90, 90, 90]))
    data = buf.getvalue()
    first = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # header, screen, global colour table
    return data[:first] + b"\x21\xfe\x00" * count + data[first:]


def test_a_gif_with_thousands_of_extension_blocks_before_its_image_is_refused():
    with pytest.raises(ImageTooLarge, match=f"over {MAX_GIF_EXTENSIONS:,} extension blocks"):
        decode(gif_with_comments(MAX_GIF_EXTENSIONS + 1), SPEC, LIMITS)
    assert header_pixels(gif_with_comments(MAX_GIF_EXTENSIONS + 1)) == 0
    assert decode(gif_with_comments(MAX_GIF_EXTENSIONS - 5), SPEC, LIMITS) == bytes([90]) * (24 * 40 * 3)


def jpeg_with(extra: bytes, size: tuple[int, int] = (40, 24)) -> bytes:
    """A small JPEG with ``extra`` bytes (segments, fill bytes) right after its SOI marker."""
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[:2] + extra + data[2:]


@pytest.mark.parametrize(
    "flood", [b"\xff\xfe\x00\x02", b"\xff\xe5\x00\x02", b"\xff"], ids=["comments", "app5", "fill-bytes"]
)
def test_a_jpeg_with_a_flood_of_segments_before_its_scan_is_refused_before_pillow_walks_them(flood):
    bomb = jpeg_with(flood * (MAX_JPEG_SEGMENTS + 1))
    with pytest.raises(ImageTooLarge, match=f"over {MAX_JPEG_SEGMENTS:,} segments"):
        decode(bomb, SPEC, LIMITS)
    assert jpeg_pixels(bomb) == 0 and header_pixels(bomb) == 0  # the budget's walks stop at the limit too
    fine = jpeg_with(flood * 20)  # a few dozen, as real photos have: decoded as before
    assert len(decode(fine, SPEC, LIMITS)) == 24 * 40 * 3


def test_a_gif_whose_extension_is_a_flood_of_one_byte_sub_blocks_is_refused():
    buf = io.BytesIO()
    Image.new("P", (16, 16), 1).save(buf, "GIF", palette=bytes([0, 0, 0, 90, 90, 90]))
    data = buf.getvalue()
    first = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    comment = b"\x21\xfe" + b"\x01x" * (MAX_GIF_SUBBLOCKS + 1) + b"\x00"  # one extension, 1-byte sub-blocks
    with pytest.raises(ImageTooLarge, match=f"over {MAX_GIF_SUBBLOCKS:,} extension sub-blocks"):
        decode(data[:first] + comment + data[first:], SPEC, LIMITS)
    small = b"\x21\xfe" + b"\x01x" * 500 + b"\x00"
    assert decode(data[:first] + small + data[first:], SPEC, LIMITS) == bytes([90]) * (24 * 40 * 3)

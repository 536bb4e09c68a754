"""JPEGs built to hurt the decoder: scans repeated thousands of times (minutes of CPU per image), lossless
frames (libjpeg ignores a DCT scale for them: on Pillow < 13 a draft() overflowed its buffer), frame kinds the
direct path must leave to Pillow (arithmetic coding: libjpeg cannot decode it in Pillow's 64 KiB pieces)."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from tests.unit.test_jpegscan import jpeg
from worker.decode import cpu
from worker.decode.cpu import ImageTooLarge, Limits, Preprocess, decode, pillow_decode
from worker.decode.header import pillow_header, read_header, scan_header
from worker.decode.jpegscan import MAX_SCANS, layout, scan_count, scan_jpeg

SPEC, LIMITS = Preprocess(size=(24, 40)), Limits()


def segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def repeated_scans(total: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A progressive grayscale JPEG whose first AC scan is repeated until the file holds ``total`` scans (each
    repeat is a few bytes and one more pass over every block)."""
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    bounds = [*starts[1:], len(data) - 2]
    scans = [data[a:b] for a, b in zip(starts, bounds, strict=True)]
    ac = next(s for s in scans if s[2 + 2 + 1 + 2] > 0)  # Ss > 0 (after length, Ns = 1, one component pair)
    return data[:-2] + ac * (total - len(scans)) + b"\xff\xd9"


def lossless(width: int, height: int) -> bytes:
    """An 8-bit lossless (SOF3) grayscale JPEG, every pixel 128: each prediction is 128, every difference 0."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + bytes([1] + [0] * 15) + bytes([0])  # DC table 0: difference category 0 is code '0'
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1 (Ss), Se 0, Ah/Al 0
    bits = width * height
    data = b"\x00" * (bits // 8) + (bytes([0xFF >> (bits % 8)]) if bits % 8 else b"")
    return b"\xff\xd8" + segment(0xC4, dht) + segment(0xC3, sof) + segment(0xDA, sos) + data + b"\xff\xd9"


def outcome(read, data: bytes) -> object:
    try:
        return read(data, SPEC, LIMITS)
    except cpu.ImageError as exc:
        return ("refused", exc.kind, str(exc))


def with_frame(data: bytes, marker: int) -> bytes:
    """The same file with its frame header's marker changed (what the frame's bytes mean is then up to libjpeg)."""
    at = data.index(b"\xff\xc0")
    return data[: at + 1] + bytes([marker]) + data[at + 2 :]


def test_a_jpeg_with_too_many_scans_is_refused_before_it_is_decoded():
    flood = repeated_scans(MAX_SCANS + 1)
    assert scan_count(flood) == MAX_SCANS + 1 and scan_jpeg(flood).multi_scan
    for read in (decode, pillow_decode):
        with pytest.raises(ImageTooLarge, match=f"{MAX_SCANS + 1} scans, over the limit of {MAX_SCANS}"):
            read(flood, SPEC, LIMITS)
    fine = repeated_scans(MAX_SCANS)  # at the limit: decoded, the same pixels on both paths
    assert decode(fine, SPEC, LIMITS) == pillow_decode(fine, SPEC, LIMITS)
    assert read_header(flood, LIMITS).cpu_reason == "progressive"  # never sent to the GPU decoder


def test_a_lossless_jpeg_is_decoded_at_full_scale():
    data = lossless(300, 200)  # big enough that a DCT-scaled draft would be asked for
    assert layout(data) == (0xC3, False)
    assert cpu._plain_jpeg(data, SPEC, LIMITS) is None  # left to Pillow, which must not draft() it
    assert decode(data, SPEC, LIMITS) == bytes([128]) * (24 * 40 * 3)
    header = read_header(data, LIMITS)
    assert header.cpu_reason == "frame SOF3" == pillow_header(data, LIMITS).cpu_reason


@pytest.mark.parametrize("marker", [0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_frames_other_than_huffman_dct_are_left_to_pillow_and_the_cpu(marker):
    data = with_frame(jpeg(size=(120, 90)), marker)
    assert scan_jpeg(data).frame == marker
    assert cpu._plain_jpeg(data, SPEC, LIMITS) is None
    assert outcome(decode, data) == outcome(pillow_decode, data)
    assert read_header(data, LIMITS).cpu_reason is not None


def test_extended_sequential_frames_take_the_direct_path_and_may_go_to_the_gpu():
    data = with_frame(jpeg(size=(120, 90)), 0xC1)
    assert cpu._plain_jpeg(data, SPEC, LIMITS) == pillow_decode(data, SPEC, LIMITS)
    assert scan_header(data, LIMITS).cpu_reason is None  # the marker scan reads it, and routes it to the GPU
    assert pillow_header(data, LIMITS).cpu_reason is None


def test_a_first_scan_without_every_component_is_counted_and_kept_off_the_gpu():
    data = jpeg(size=(40, 30))  # interleaved: one scan with all three components
    assert scan_jpeg(data).multi_scan is False and layout(data) == (0xC0, False)
    at = data.index(b"\xff\xda")
    one = data[: at + 4] + b"\x01" + data[at + 5 :]  # the scan header now claims one component
    assert layout(one)[1] is True and scan_jpeg(one).multi_scan is True
    assert read_header(one, LIMITS).cpu_reason == "non-interleaved scans"

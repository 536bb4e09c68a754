"""The marker scan against Pillow's header reader: the same route, size, mode and orientation for every test
image and thousands of fuzzed ones (the scan answers only where it is sure; otherwise Pillow reads it)."""

from __future__ import annotations

import contextlib
import io
import random
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from worker.decode.cpu import ImageError, Limits
from worker.decode.header import pillow_header, read_header, scan_header

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "examples" / "images").iterdir())
LIMITS = Limits()


# What Pillow's EXIF reader (TiffImagePlugin) warns of on a mutant's corrupt EXIF block, and nothing else
PILLOW_EXIF_WARNINGS = re.compile(r"Corrupt EXIF data\.|Tag data larger than file\.|Truncated File Read")


@contextlib.contextmanager
def only_pillow_exif_warnings() -> Iterator[None]:
    """Record the warnings raised inside: each must be Pillow's UserWarning of corrupt EXIF (Pillow reads a
    mutant's EXIF, as the oracle and as the decoder's fallback); any other warning fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        assert w.category is UserWarning and Path(w.filename).name == "TiffImagePlugin.py", w
        assert PILLOW_EXIF_WARNINGS.match(str(w.message)), w


def outcome(read, data: bytes, limits: Limits = LIMITS) -> object:
    try:
        return read(data, limits)
    except ImageError as exc:
        return ("refused", exc.kind)


def exif(orientation: int | None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x010F] = "maker"
    return exif.tobytes()


def app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def with_segment(data: bytes, segment: bytes) -> bytes:
    return data[:2] + segment + data[2:]


def jpeg(mode: str = "RGB", size: tuple[int, int] = (40, 30), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "JPEG", **save)
    return buf.getvalue()


def variants() -> list[bytes]:
    """JPEGs of every kind the route tells apart, made here."""
    made = [jpeg(), jpeg("L"), jpeg("CMYK"), jpeg(progressive=True), jpeg(size=(1, 1))]
    made += [jpeg(subsampling=s) for s in (0, 1, 2)]  # 4:4:4, 4:2:2, 4:2:0
    made += [jpeg(exif=exif(turn)) for turn in range(0, 10)]  # 0 and 9 are invalid: Pillow reads them as 1
    made += [jpeg(icc_profile=b"\x00" * 300), jpeg(dpi=(300, 300)), jpeg(comment=b"hello")]
    made += [jpeg() + b"trailing junk", jpeg()[:-2], jpeg() + b"\x00" * 8]
    made.append(with_segment(jpeg(exif=exif(1)), app1(exif(6))))  # two EXIF blocks: Pillow joins them
    made.append(with_segment(jpeg(), b"\xff\xe5" + app1(exif(6))[2:]))  # EXIF in APP5: Pillow reads APP1's only
    made.append(with_segment(jpeg(), b"\xff\xde" + jpeg()[2:30]))  # DHP: Pillow reads it as a frame header
    xmp = b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    made.append(with_segment(jpeg(exif=exif(None)), app1(xmp)))  # EXIF without the tag: XMP's counts
    made.append(with_segment(jpeg(exif=exif(None)), app1(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00")))  # cut IFD
    for kind, value in ((1, b"\x05"), (7, b"\x05"), (2, b"\x00"), (3, b"\x05\x00"), (5, b"")):
        # XResolution of one BYTE / UNDEFINED / ASCII / SHORT, or a RATIONAL read past the block, beside a
        # ResolutionUnit: Pillow's open reads the dpi from them and may fail (IndexError, not caught)
        entries = struct.pack("<HHI", 0x011A, kind, 1) + value.ljust(4, b"\x00")
        entries += struct.pack("<HHI", 0x0128, 3, 1) + struct.pack("<H", 2).ljust(4, b"\x00")
        tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0)
        made.append(with_segment(jpeg(), app1(b"Exif\x00\x00" + tiff)))
    for turn in (1, 3, 6, 8):  # big-endian (Motorola) EXIF, as many cameras write it: a SHORT sits in the high half
        entries = struct.pack(">HHI", 0x010F, 2, 4) + b"cam\x00"  # Make, inline
        entries += struct.pack(">HHIH", 0x0112, 3, 1, turn) + b"\x00\x00"  # Orientation: one SHORT
        tiff = b"MM\x00*" + struct.pack(">IH", 8, 2) + entries + struct.pack(">I", 0)
        made.append(with_segment(jpeg(), app1(b"Exif\x00\x00" + tiff)))
    return made


def test_the_scan_agrees_with_pillow_on_every_test_image_and_reads_the_plain_jpegs_itself():
    images = [path.read_bytes() for path in PHOTOS] + variants()
    for data in images:
        assert outcome(read_header, data) == outcome(pillow_header, data)
    plain = [path for path in PHOTOS if path.suffix == ".jpg" and "cmyk" not in path.name]
    assert all(scan_header(path.read_bytes(), LIMITS) is not None for path in plain)  # the fast path is taken
    assert scan_header(jpeg(exif=exif(6)), LIMITS).orientation == 6


def test_the_scan_leaves_the_limits_to_pillows_wording():
    data = jpeg(size=(300, 200))
    for limits in (Limits(max_bytes=100), Limits(max_pixels=1000)):
        assert scan_header(data, limits) is None
        assert (
            outcome(read_header, data, limits) == outcome(pillow_header, data, limits) == ("refused", "image_too_large")
        )


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One hostile edit near the header: flipped bytes, a cut, a junk or duplicated segment, a bad length."""
    head = min(len(data), 2048)
    kind = rng.randrange(5)
    out = bytearray(data)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(2, head)] = rng.randrange(256)
    elif kind == 1:
        del out[rng.randrange(2, head) :]
    elif kind == 2:
        at = rng.randrange(2, head)
        out[at:at] = bytes([0xFF, rng.choice([0xE1, 0xE2, 0xDB, 0xC0, 0xC2, 0xEE, 0xE0, 0xFE, 0x01, 0xD0])])
        out[at + 2 : at + 2] = rng.randbytes(rng.randint(0, 40))
    elif kind == 3:
        at = rng.randrange(4, head - 2)
        out[at : at + 2] = rng.randrange(65536).to_bytes(2, "big")
    else:
        at = rng.randrange(2, head)
        out[at:at] = out[2 : 2 + rng.randint(1, 200)]  # a copy of leading segments: duplicated SOF, EXIF, ...
    return bytes(out)


def test_fuzzed_headers_get_the_same_route_from_both_readers():
    rng = random.Random(21)
    bases = [path.read_bytes() for path in PHOTOS if path.suffix == ".jpg"] + variants()
    answered = 0
    for n in range(3000):
        data = mutate(bases[n % len(bases)], rng)
        fast = scan_header(data, LIMITS)
        answered += fast is not None
        with only_pillow_exif_warnings():  # Pillow warns of corrupt EXIF on some mutants (both readers reach it)
            assert outcome(read_header, data) == outcome(pillow_header, data), f"mutant {n}"
    assert answered > 300  # the scan still reads many mutants itself (it is not just saying 'ask Pillow')

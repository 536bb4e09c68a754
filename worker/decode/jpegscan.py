"""A JPEG's header in one pass over its marker segments, no Pillow: what the GPU decoder's route needs.

``scan_jpeg`` reads the frame header (size, precision, components and their sampling, progressive or
not) and the EXIF orientation in one walk from SOI to SOS, in a few microseconds where Pillow's
``Image.open`` costs tens (its JPEG header parser is Python that builds dictionaries of everything).
It answers only when it is sure to agree with Pillow's reading (``worker.decode.header``): any segment
Pillow would parse differently, refuse or turn into another format (junk between segments, a truncated
or malformed segment, two frame headers, 12-bit or CMYK frames, MPF, several or unusual EXIF blocks, an
orientation that may come from XMP) returns None, and the caller asks Pillow. A differential test holds
the two readers together on every test image and on fuzzed inputs.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# Pillow's marker table: frame headers (SOF0-15 but DHT, JPG, DAC; and DHP, which Pillow reads as one), and
# the other segments it reads or skips by their length; any other marker is unusual here
SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xDE}
SEGMENTS = SOF | {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xDF, 0xFE} | frozenset(range(0xE0, 0xF0))
PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})  # what Pillow marks progressive
LOSSLESS = frozenset({0xC3, 0xC7, 0xCB, 0xCF})  # libjpeg ignores a DCT scale for these (draft() must not ask one)
HUFFMAN_DCT = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive: libjpeg decodes them at a DCT scale,
# fed whole or in pieces alike (its arithmetic decoder cannot suspend: Pillow's 64 KiB pieces fail where one whole
# buffer does not)
MAX_SEGMENTS = 1_000  # segments and fill bytes walked before the first scan (containers.MAX_JPEG_SEGMENTS)
MAX_SCANS = 256  # nvImageCodec's default (NVIMGCODEC_MAX_JPEG_SCANS): each scan is a pass over every block
_SOS = re.compile(b"\xff\xda")
ORIENTATION_TAG = 0x0112
RESOLUTION_TAGS = (0x011A, 0x0128)  # XResolution, ResolutionUnit: Pillow's open reads the dpi from them
RATIONALS = (5, 10)  # RATIONAL, SRATIONAL
XMP = b"http://ns.adobe.com/xap/1.0/\x00"
SEGMENT_HEAD = struct.Struct(">BBH")  # 0xFF, the marker, the segment's length
IFD_ENTRY = {"little": struct.Struct("<HHII"), "big": struct.Struct(">HHII")}  # a TIFF IFD entry
TIFF_UNITS = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}  # bytes


@dataclass(frozen=True)
class JpegHeader:
    """A plain JPEG's frame and orientation: 8-bit, one (L) or three (YCbCr, Pillow's RGB) components."""

    width: int
    height: int
    mode: str
    progressive: bool
    layers: tuple[tuple[int, int, int, int], ...]  # (component id, h, v, quantisation table), as Pillow's
    orientation: int  # the EXIF orientation tag's value, 1 when absent (not yet checked for 1..8)
    frame: int = 0xC0  # the frame header's marker (SOF0 .. SOF15)
    multi_scan: bool = False  # progressive, or a first scan without every component: the scans may repeat


UNREAD = JpegHeader(0, 0, "", False, (), 0)  # "not scanned yet": a caller that has not walked the file itself


class _Unsure(Exception):
    """A segment this scan does not read exactly as Pillow would: Pillow reads the header instead."""


def scan_jpeg(data: bytes) -> JpegHeader | None:
    """The header of a plain JPEG, or None when it is not one this scan reads with certainty."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        frame, orientation, scan_components = _segments(data)
        return _frame(*frame, orientation, scan_components) if frame else None
    except _Unsure:
        return None


def _segments(data: bytes) -> tuple[tuple[int, memoryview] | None, int, int]:
    """Walk SOI .. SOS: the frame header (marker, body), the EXIF orientation (1: no tag) and the first scan's
    component count. Segment bodies are views and prefixes are compared in place: a photo's EXIF and ICC blocks
    are tens of KB, never copied."""
    at, end, view = 2, len(data), memoryview(data)
    frame: tuple[int, memoryview] | None = None
    orientation, exif, xmp, scan_components, seen = 0, False, False, 0, 0
    while True:
        seen += 1
        if at + 4 > end or seen > MAX_SEGMENTS:
            raise _Unsure  # truncated, or a flood of segments (Pillow's path refuses it: containers.jpeg_refusal)
        ff, marker, length = SEGMENT_HEAD.unpack_from(data, at)  # one C call, not three reads and a slice
        if ff != 0xFF:
            raise _Unsure  # junk between segments (Pillow skips it)
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker not in SEGMENTS:  # standalone markers, EOI before the scan, unknown ones: unusual
            raise _Unsure
        start, stop = at + 4, at + 2 + length
        if length < 2 or stop > end:
            raise _Unsure
        if marker == 0xDA:  # start of scan: the header is over
            scan_components = data[start] if start < stop else 0
            break
        if marker in SOF:
            if frame is not None:
                raise _Unsure
            frame = (marker, view[start:stop])
        elif marker == 0xDB:
            _check_dqt(view[start:stop])
        elif 0xE0 <= marker <= 0xEF:
            if marker == 0xE1 and data.startswith(b"Exif\x00\x00", start, stop):  # Pillow: EXIF from APP1 only
                if exif:
                    raise _Unsure  # Pillow joins several EXIF blocks
                exif, orientation = True, _exif_orientation(view[start + 6 : stop])
            else:
                xmp = xmp or (marker == 0xE1 and data.startswith(XMP, start, stop))
                _check_app(marker, data, start, stop)
        at = stop
    if exif and orientation == 0 and xmp:
        raise _Unsure  # Pillow may take the orientation from the XMP packet
    return frame, orientation or 1, scan_components


def _frame(marker: int, body: memoryview, orientation: int, scan_components: int) -> JpegHeader | None:
    if len(body) < 6 or body[0] != 8 or body[5] not in (1, 3) or (len(body) - 6) != 3 * body[5]:
        return None  # short, not 8-bit (Pillow refuses), CMYK or odd component counts: Pillow judges
    height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
    layers = tuple((body[i], body[i + 1] >> 4, body[i + 1] & 15, body[i + 2]) for i in range(6, len(body), 3))
    mode = "L" if body[5] == 1 else "RGB"
    progressive = marker in PROGRESSIVE
    multi_scan = progressive or scan_components < body[5]
    return JpegHeader(width, height, mode, progressive, layers, orientation, marker, multi_scan)


def scan_count(data: bytes) -> int:
    """How many SOS markers the file holds (entropy-coded data never contains one; an EXIF thumbnail's count too):
    ~0.3 ns a byte."""
    return len(_SOS.findall(data))


def layout(data: bytes) -> tuple[int, bool] | None:
    """A JPEG's frame marker and whether its scans may repeat (progressive, or a first scan without every
    component), by a walk of its segments up to the first scan that takes nothing for certain but the lengths
    (for files ``scan_jpeg`` is unsure of); None when the walk fails."""
    if data[:2] != b"\xff\xd8":
        return None
    at, end, frame = 2, len(data), None
    while at + 4 < end and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in SOF and frame is None and at + 9 < end:
            frame = (marker, data[at + 9])
        elif marker == 0xDA and frame is not None:
            return frame[0], frame[0] in PROGRESSIVE or data[at + 4] < frame[1]
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def _check_dqt(body: memoryview) -> None:
    """Pillow parses every quantisation table and refuses a short one."""
    at = 0
    while at < len(body):
        size = 1 + (64 if body[at] >> 4 == 0 else 128)
        if len(body) - at < size:
            raise _Unsure
        at += size


def _check_app(marker: int, data: bytes, start: int, stop: int) -> None:
    """The APP segments Pillow reads into fields that may fail, or that make it another format (MPO)."""
    size = stop - start
    if marker == 0xE0 and data.startswith(b"JFIF", start, stop) and size < 12:
        raise _Unsure
    if marker == 0xEE and data.startswith(b"Adobe", start, stop) and size < 12:
        raise _Unsure
    if marker == 0xE2 and (
        data.startswith(b"MPF\x00", start, stop) or (data.startswith(b"ICC_PROFILE\x00", start, stop) and size < 14)
    ):
        raise _Unsure
    if marker == 0xED and data.startswith(b"Photoshop 3.0\x00", start, stop):
        raise _Unsure  # parsed resource by resource: rare in photos, left to Pillow


def _exif_orientation(tiff: memoryview) -> int:
    """The orientation tag of IFD0 in a well-formed TIFF block (0 when absent). Pillow stops reading IFD0 at
    an entry whose value lies past the block, and skips entries of unknown types: any such entry, a second
    orientation entry, or one that is not one SHORT, and this scan is unsure; so too for an XResolution that is
    not one (S)RATIONAL beside a ResolutionUnit (Pillow's open reads the dpi from them, and may fail)."""
    if tiff[:4] == b"II*\x00":
        order = "little"
    elif tiff[:4] == b"MM\x00*":
        order = "big"
    else:
        raise _Unsure

    def number(at: int, size: int) -> int:
        return int.from_bytes(tiff[at : at + size], order)  # type: ignore[arg-type]

    ifd = number(4, 4)
    if ifd < 8 or ifd + 2 > len(tiff):
        raise _Unsure
    count = number(ifd, 2)
    if ifd + 2 + 12 * count > len(tiff):
        raise _Unsure
    found, outside, resolution, odd_resolution = 0, 0, set(), False
    # each entry: tag, type, count, value (or its offset); unpacked in C, not field by field (~17 µs a photo)
    for tag, kind, n, value in IFD_ENTRY[order].iter_unpack(tiff[ifd + 2 : ifd + 2 + 12 * count]):
        unit = TIFF_UNITS.get(kind)
        if unit is None:
            raise _Unsure
        if tag in RESOLUTION_TAGS:
            resolution.add(tag)
            odd_resolution |= tag == 0x011A and (kind not in RATIONALS or n != 1)
        size = unit * n
        if size > 4:  # the value lies elsewhere in the block
            outside += size
            if value + size > len(tiff) or outside > len(tiff):
                raise _Unsure
        if tag == ORIENTATION_TAG:
            if found or kind != 3 or size != 2:
                raise _Unsure
            found = (value & 0xFFFF if order == "little" else value >> 16) or -1  # a SHORT: the field's first 2 bytes
    if found == -1:
        raise _Unsure  # an orientation of 0 (invalid) on record
    if odd_resolution and len(resolution) == 2:
        raise _Unsure  # Pillow's dpi reading may fail on it (a one-value XResolution: IndexError, not caught)
    return found

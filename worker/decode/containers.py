"""Checks on an image's container before Pillow parses it: structures that are valid but cost far more than
their pixels (Pillow handles every chunk or block in Python). No torch here.

PNG: Pillow's open runs a handler per chunk up to the first IDAT (and its load every chunk after the image),
inflating each ``iCCP`` profile it meets: 20,000 iCCP chunks of 1 KB each cost 42 s for a 64 x 64 image, 1.7
million empty private chunks 4.5 s. The walk here reads only the length fields (~0.3 µs a chunk) and gives up
at the limits, so its own cost is bounded too. BMP: run-length compressed BMPs are decoded by Pillow in Python
(a 27 KB RLE8 file of 40 Mpx took 4.6 s). GIF: Pillow reads every extension block before the first image, in
Python (7 million empty comments: 1.7 s, at open and again at load). JPEG: a progressive file's scans may repeat,
each one a pass over every block (20,000 repeats of a few bytes: 13.5 s for a 3000 x 3000 image); Pillow also
reads every segment before the first scan in Python.
"""

from __future__ import annotations

import struct

from .jpegscan import MAX_SCANS, MAX_SEGMENTS, scan_count

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_CHUNKS = 100_000  # every chunk, image data included (a 20 MiB PNG in 8 KiB IDATs has 2,560)
MAX_PNG_ANCILLARY = 4_096  # chunks other than image data and animation frames
FRAME_CHUNKS = frozenset({b"IDAT", b"fdAT", b"fcTL"})
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
MAX_GIF_EXTENSIONS = 1_000  # extension blocks before the first image (a GIF has a handful)
MAX_GIF_SUBBLOCKS = 100_000  # their data sub-blocks (an XMP packet read as sub-blocks has a few thousand)
MAX_JPEG_SEGMENTS = MAX_SEGMENTS  # marker segments and fill bytes before a JPEG's first scan (a photo has 10-30)
MAX_RLE_BMP_PIXELS = 4_000_000  # BI_RLE8 / BI_RLE4 above this: refused (Pillow decodes them in Python)
BMP_RLE = (1, 2)


def png_refusal(data: bytes) -> str | None:
    """Why a PNG's chunk structure is refused (None: fine, or not a PNG, or too broken to walk: Pillow judges)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    at, end, chunks, ancillary, profiles = len(PNG_SIGNATURE), len(data), 0, 0, 0
    while at + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, at)
        chunks += 1
        if kind == b"IEND":
            break
        if kind not in FRAME_CHUNKS:
            ancillary += 1
            profiles += kind == b"iCCP"
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY:
            return f"PNG has over {MAX_PNG_CHUNKS if chunks > MAX_PNG_CHUNKS else MAX_PNG_ANCILLARY:,} chunks"
        if profiles > 1:
            return "PNG has more than one ICC profile (iCCP chunk)"
        at += 12 + length  # length, type, data, CRC
    return None


def gif_refusal(data: bytes) -> str | None:
    """Why a GIF is refused for the extension blocks before its first image (None: fine, not a GIF, or too broken
    to walk: Pillow judges). The walk reads block sizes only and stops at the limit."""
    if data[:6] not in GIF_SIGNATURES or len(data) < 13:
        return None
    flags = data[10]
    at, end, extensions, blocks = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), len(data), 0, 0
    while at < end and data[at] == 0x21:  # an extension: label, then sub-blocks until a zero size
        extensions += 1
        if extensions > MAX_GIF_EXTENSIONS:
            return f"GIF has over {MAX_GIF_EXTENSIONS:,} extension blocks before its first image"
        at += 2
        while at < end and data[at]:
            blocks += 1
            if blocks > MAX_GIF_SUBBLOCKS:  # 1-byte sub-blocks: Pillow reads each in Python, at every open
                return f"GIF has over {MAX_GIF_SUBBLOCKS:,} extension sub-blocks before its first image"
            at += 1 + data[at]
        at += 1
    return None


def jpeg_refusal(data: bytes) -> str | None:
    """Why a JPEG is refused for the segments before its first scan (None: fine, not a JPEG, or too broken to
    walk: Pillow judges). Pillow's open reads each segment, and each fill byte, in Python (200,000 empty comments:
    0.26 s; a 20 MiB file of them ~6.6 s); this walk reads lengths only and stops at ``MAX_JPEG_SEGMENTS``."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    at, end, seen = 2, len(data), 0
    while at + 4 <= end and data[at] == 0xFF:
        seen += 1
        if seen > MAX_JPEG_SEGMENTS:
            return f"JPEG has over {MAX_JPEG_SEGMENTS:,} segments before its first scan"
        marker = data[at + 1]
        if marker in (0xDA, 0xD9):  # the first scan, or the end
            return None
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # a fill byte, or a marker without a length
            at += 1 if marker == 0xFF else 2
            continue
        at += 2 + (data[at + 2] << 8 | data[at + 3])
    return None


def bmp_rle_refusal(compression: object, width: int, height: int) -> str | None:
    """Why a BMP of this compression and size is refused (None: fine)."""
    if compression in BMP_RLE and width * height > MAX_RLE_BMP_PIXELS:
        return f"run-length compressed BMP of {width}x{height} pixels, over the limit of {MAX_RLE_BMP_PIXELS:,}"
    return None


def scan_refusal(data: bytes) -> str | None:
    """Why a JPEG is refused for its number of scans (None: at most ``MAX_SCANS``); ~0.3 ns a byte."""
    scans = scan_count(data)
    if scans > MAX_SCANS:
        return f"JPEG has {scans} scans, over the limit of {MAX_SCANS} (each one decodes the image again)"
    return None

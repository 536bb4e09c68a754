"""Reading an image's header without decoding it: the limits, its EXIF orientation, and which decoder it goes to.

The GPU decoder (``worker.decode.gpu``) sends only plain JPEGs to the device: baseline, 8-bit,
YCbCr or grayscale, ordinary chroma sampling, ending with an EOI marker. Everything else goes to
the Pillow decoder, image by image. A plain JPEG's header is read by a scan of its markers
(``worker.decode.jpegscan``, a few µs); Pillow's ``Image.open`` (tens of µs) reads the rest. No torch here,
so the routing is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .cpu import Limits, open_image
from .jpegscan import layout, scan_jpeg

ORIENTATION_TAG = 0x0112
GPU_MODES = ("RGB", "L")  # Pillow's names for YCbCr and grayscale JPEGs; CMYK/YCCK go to the CPU
GPU_LUMA_SAMPLING = {(1, 1), (2, 1), (1, 2), (2, 2)}  # 4:4:4, 4:2:2, 4:4:0, 4:2:0
EOI = b"\xff\xd9"
GPU_FRAMES = (0xC0, 0xC1)  # baseline and extended sequential Huffman: not lossless, not arithmetic-coded


@dataclass(frozen=True)
class Header:
    """What an image's header says (nothing decoded); ``cpu_reason`` is None for a GPU image."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int  # EXIF orientation, 1 (as stored) to 8
    cpu_reason: str | None


def read_header(data: bytes, limits: Limits) -> Header:
    """Check the byte and pixel limits exactly as the CPU decoder does, then read format, size, mode and
    orientation from the header; raise ``ImageError`` (same kinds as ``worker.decode.cpu``). A plain JPEG
    within the limits is read by ``worker.decode.jpegscan`` (microseconds), anything else by Pillow."""
    fast = scan_header(data, limits)
    return fast if fast is not None else pillow_header(data, limits)


def scan_header(data: bytes, limits: Limits) -> Header | None:
    """``read_header`` by the marker scan alone; None when it is not sure (or a limit is near): ask Pillow."""
    if len(data) > limits.max_bytes or (jpeg := scan_jpeg(data)) is None:
        return None
    pixels = jpeg.width * jpeg.height
    bomb = Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS  # Pillow refuses at once
    if jpeg.width < 1 or jpeg.height < 1 or pixels > limits.max_pixels or bomb:
        return None  # refused, or Pillow's own bomb guard speaks: open_image words the error
    if jpeg.progressive:
        reason = "progressive"
    elif jpeg.frame not in GPU_FRAMES or jpeg.multi_scan:
        reason = frame_reason(jpeg.frame, jpeg.multi_scan)
    elif not plain_sampling(list(jpeg.layers)):
        reason = "chroma sampling"
    elif data.rstrip(b"\x00")[-2:] != EOI:
        reason = "no end marker"
    else:
        reason = None
    turn = jpeg.orientation if reason is None and 1 <= jpeg.orientation <= 8 else 1
    return Header("JPEG", jpeg.width, jpeg.height, jpeg.mode, turn, reason)


def pillow_header(data: bytes, limits: Limits) -> Header:
    """``read_header`` by Pillow's ``Image.open`` (every format, every odd case)."""
    img = open_image(data, limits)
    width, height = img.size
    reason, turn = cpu_reason(img, data), 1
    if reason is None:
        try:
            turn = orientation(img)
        except Exception:  # Pillow's EXIF parser raises any type on hostile bytes: Pillow's decoder judges it
            reason = "unreadable EXIF"
    return Header(img.format or "", width, height, img.mode, turn, reason)


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 when absent or invalid), read without decoding pixels."""
    if img.format == "JPEG" and "exif" not in img.info:  # no APP1 EXIF segment: nothing to parse
        return 1
    value = img.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def cpu_reason(img: Image.Image, data: bytes) -> str | None:
    """Why this image must be decoded by Pillow rather than on the GPU; None when the GPU can take it."""
    if img.format != "JPEG":
        return f"format {img.format}"
    if img.mode not in GPU_MODES:
        return f"mode {img.mode}"
    if img.info.get("progressive") or img.info.get("progression"):
        return "progressive"
    if getattr(img, "bits", 8) != 8:
        return f"{getattr(img, 'bits', '?')}-bit"
    found = layout(data)
    if found is None:
        return "unusual segments"  # Pillow read them; the GPU's parser may not
    if found[0] not in GPU_FRAMES or found[1]:
        return frame_reason(*found)
    if not plain_sampling(getattr(img, "layer", [])):
        return "chroma sampling"
    if data.rstrip(b"\x00")[-2:] != EOI:  # truncated, or trailing data: Pillow decides what it is
        return "no end marker"
    return None


def frame_reason(frame: int, multi_scan: bool) -> str:
    """Why a JPEG frame of this kind goes to the CPU (the caller has ruled out progressive ones)."""
    if frame not in GPU_FRAMES:
        return f"frame SOF{frame - 0xC0}"  # lossless, arithmetic coding, hierarchical
    return "non-interleaved scans" if multi_scan else ""


def plain_sampling(layers: list[tuple[int, int, int, int]]) -> bool:
    """Pillow's ``layer`` list, (component id, h, v, quantisation table) each: luma 1-2 x 1-2, chroma 1 x 1."""
    if not layers:
        return True
    luma, *chroma = layers
    return (luma[1], luma[2]) in GPU_LUMA_SAMPLING and all((h, v) == (1, 1) for _, h, v, _ in chroma)

"""The CPU decoder: untrusted image bytes to the model's fixed input size with Pillow (no torch here).

Each image is decoded on its own (a bad one fails alone). Output is the raw uint8 ``H x W x 3``
pixels; the decode pool wraps them as a tensor, and scaling and normalisation happen on the
device, on the whole batch (see ``worker.model``). No torch import, so decode processes and the
settings module stay light.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError
from PIL import __version__ as PIL_VERSION

from . import libjpeg
from .containers import bmp_rle_refusal, gif_refusal, jpeg_refusal, png_refusal, scan_refusal
from .jpegscan import HUFFMAN_DCT, LOSSLESS, UNREAD, JpegHeader, layout, scan_jpeg
from .spec import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageTooLarge,
    Limits,
    Preprocess,
    UnsupportedImage,
)

log = logging.getLogger(__name__)
__all__ = [  # what decoding is asked for and how it fails live in .spec; importers name them here too
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "ImageTooLarge",
    "Limits",
    "Preprocess",
    "UnsupportedImage",
    "decode",
    "pillow_decode",
]

CROP_RATIO = 0.875
TRANSPOSES = {  # EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def open_image(data: bytes, limits: Limits) -> Image.Image:
    """Open, check limits, apply EXIF orientation and convert to RGB; raise ``ImageError``."""
    if not data:
        raise UnsupportedImage("empty image bytes")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    if refused := png_refusal(data) or gif_refusal(data) or jpeg_refusal(data):
        raise ImageTooLarge(refused)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own bomb guard (89 Mpx warning, 179 Mpx error) speaks first: answer in our limit's terms
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow opens"
        raise ImageTooLarge(f"image has {pixels}, over the limit of {limits.max_pixels:,} (--max-pixels)") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(f"not a supported image ({'/'.join(ALLOWED_FORMATS)}): {_clean(exc)}") from exc
    except MemoryError:  # the host, not the image: the pool retries it (decode_error)
        raise
    except Exception as exc:  # Pillow's parsers raise any type on hostile bytes
        raise UnsupportedImage(f"corrupt image header: {type(exc).__name__}: {_clean(exc)}") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise UnsupportedImage(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {limits.max_pixels}")
    if img.format == "BMP" and (refused := bmp_rle_refusal(img.info.get("compression"), width, height)):
        raise ImageTooLarge(refused)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode we accept to RGB: alpha is composited on white, 16-bit scaled to 8-bit."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I")
        hi = img.getextrema()[1]
        if hi > 255:  # real 16-bit data: map 0..65535 (or the image's own maximum) onto 0..255
            img = img.point(lambda v: v * (255.0 / max(hi, 65535)))
        img = img.convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_plan(w: int, h: int, spec: Preprocess) -> tuple[int, int, int, int]:
    """For a ``w`` x ``h`` image: the size to resize to and the crop's corner, ``(new_w, new_h, left, top)``.

    center_crop: shorter side to round(H / 0.875), then the centred H x W; stretch: straight to H x W.
    The GPU decoder follows the same plan (``worker.decode.gpu``)."""
    height, width = spec.size
    if spec.resize == "stretch":
        return width, height, 0, 0
    short = round(height / CROP_RATIO)
    scale = short / min(w, h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    return new_w, new_h, (new_w - width) // 2, (new_h - height) // 2


def resize(img: Image.Image, spec: Preprocess) -> Image.Image:
    """Resize to ``spec.size`` (center_crop: shorter side to round(H / 0.875), then crop H x W)."""
    height, width = spec.size
    new_w, new_h, left, top = resize_plan(*img.size, spec)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if (new_w, new_h) == (width, height):
        return img
    return img.crop((left, top, left + width, top + height))


def draft_size(spec: Preprocess) -> tuple[int, int]:
    """The smallest size JPEG DCT scaling may decode to without losing resolution we need."""
    height, width = spec.size
    if spec.resize == "stretch":
        return width, height
    short = round(height / CROP_RATIO)
    return max(short, width), max(short, height)


def draft_scale(width: int, height: int, spec: Preprocess) -> int:
    """The DCT scale (1, 2, 4 or 8) at which ``decode`` has Pillow decode a ``width`` x ``height`` JPEG that
    needs no EXIF rotation (Pillow's ``JpegImageFile.draft`` rule); the GPU decoder mimics it (a box filter)."""
    want_w, want_h = draft_size(spec)
    most = min(width // want_w, height // want_h)
    return next((scale for scale in (8, 4, 2, 1) if most >= scale), 1)  # smaller than wanted: full size


def decode(data: bytes, spec: Preprocess, limits: Limits, jpeg: JpegHeader | None = UNREAD) -> bytes:
    """Bytes to uint8 ``H x W x 3`` pixels at the model's size; raise ``ImageError`` on bad input.

    A plain JPEG (``worker.decode.jpegscan`` reads its header with certainty, no EXIF rotation) goes
    straight to Pillow's libjpeg decoder, resize and crop, skipping ``Image.open``'s Python header parser
    (~60 of ~95 µs per 48-px JPEG); every other image, and any plain JPEG near a limit, goes through
    ``pillow_decode``. Both give the same bytes (tests/unit/test_direct_decode.py). ``jpeg``: ``scan_jpeg(data)``
    when the caller has read it already (the decode pool's pixel budget does)."""
    pixels = _plain_jpeg(data, spec, limits, jpeg) if direct_path_works() else None
    return pixels if pixels is not None else pillow_decode(data, spec, limits)


class DirectCheck:
    """Whether this Pillow's C objects still do what the direct path expects (``worker.decode.libjpeg`` uses its
    internal decoder and encoder): checked at the first decode, on an RGB and a grayscale JPEG at DCT scale 2,
    against ``pillow_decode``. If not, every image goes through ``Image.open`` (one warning), rather than every
    JPEG being refused. A check that cannot run (a pixel limit below the test images') is tried again later."""

    def __init__(self) -> None:
        self.verdict: bool | None = None
        self.lock = threading.Lock()

    def __call__(self) -> bool:
        if self.verdict is None:
            with self.lock:
                if self.verdict is None:
                    self.verdict = self._check()
        return bool(self.verdict)

    def reset(self) -> None:
        """Check again at the next decode."""
        self.verdict = None

    def _check(self) -> bool | None:
        spec, problem = Preprocess(size=(16, 24)), ""
        for mode in ("RGB", "L"):
            buf = io.BytesIO()
            Image.effect_noise((80, 60), 60).convert(mode).save(buf, "JPEG", quality=80)
            try:
                want = pillow_decode(buf.getvalue(), spec, Limits())
            except ImageError:  # Image.MAX_IMAGE_PIXELS set below 4,800 by someone: no verdict yet
                return None
            try:
                if _plain_jpeg(buf.getvalue(), spec, Limits()) != want:
                    problem = f"its pixels differ from Image.open's ({mode})"
            except Exception as exc:  # an internal API that moved: AttributeError, TypeError, ...
                problem = f"{type(exc).__name__}: {_clean(exc)}"
            if problem:
                log.warning("the direct JPEG path is off with Pillow %s (%s): Image.open decodes every image",
                            PIL_VERSION, problem)  # fmt: skip
                return False
        return True


direct_path_works = DirectCheck()


def _plain_jpeg(data: bytes, spec: Preprocess, limits: Limits, header: JpegHeader | None = UNREAD) -> bytes | None:
    """``pillow_decode``'s steps for a plain JPEG on Pillow's C objects; None when it is not one (or when a
    setting of Pillow's makes its reading differ: truncated images loaded, a bomb limit)."""
    if len(data) > limits.max_bytes or ImageFile.LOAD_TRUNCATED_IMAGES:
        return None
    if header is UNREAD:
        header = scan_jpeg(data)
    if header is None or header.orientation != 1 or header.width < 1 or header.height < 1:
        return None
    if header.frame not in HUFFMAN_DCT:
        return None  # lossless (no DCT scale), arithmetic coding (Pillow's pieces fail where a whole file works)
    pixels = header.width * header.height
    if pixels > limits.max_pixels or (Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS):
        return None  # refused: pillow_decode words the error
    if header.multi_scan and (refused := scan_refusal(data)):
        raise ImageTooLarge(refused)
    scale = draft_scale(header.width, header.height, spec)
    size = libjpeg.scaled_size(header.width, header.height, scale)  # what Pillow's draft() decodes to
    height, width = spec.size
    try:
        return libjpeg.pixels(data, header.mode, size, scale, resize_plan(*size, spec), (width, height))
    except MemoryError:  # the host, not the image: the pool retries it (decode_error)
        raise
    except Exception as exc:  # libjpeg's errors, as pillow_decode words them
        raise UnsupportedImage(f"corrupt or truncated image: {type(exc).__name__}: {_clean(exc)}") from exc


def pillow_decode(data: bytes, spec: Preprocess, limits: Limits) -> bytes:
    """``decode`` for any image, through ``Image.open``; raise ``ImageError`` on bad input."""
    img = open_image(data, limits)
    frame = _jpeg_frame(img, data)
    try:
        turn = _exif_orientation(img)
        if img.format == "JPEG" and turn in (1, None) and frame not in LOSSLESS:  # no DCT scale for lossless frames
            img.draft("RGB", draft_size(spec))
        img.seek(0)  # first frame of an animation
        if turn not in (1, None) and (method := TRANSPOSES.get(turn)) is not None:
            # ImageOps.exif_transpose's pixels, without its rebuilding of the EXIF block (every RATIONAL of every
            # IFD re-encoded: a crafted 1 MiB block cost 4 s and 109 MiB, 20 MiB over a minute and 1.8 GB)
            img = img.transpose(method)
        img = resize(to_rgb(img), spec)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"decompression bomb refused: {exc}") from exc
    except MemoryError:  # the host, not the image: the pool retries it (decode_error)
        raise
    except Exception as exc:  # Pillow's decoders raise any type on hostile bytes
        raise UnsupportedImage(f"corrupt or truncated image: {type(exc).__name__}: {_clean(exc)}") from exc
    return img.tobytes()


def _jpeg_frame(img: Image.Image, data: bytes) -> int | None:
    """A JPEG's frame marker (None when not a JPEG, or its segments can't be walked); refuses too many scans."""
    if img.format != "JPEG":
        return None
    found = layout(data)
    if (found is None or found[1]) and (refused := scan_refusal(data)):  # scans may repeat, or layout not read
        raise ImageTooLarge(refused)
    return found[0] if found else None


def _exif_orientation(img: Image.Image) -> object:
    # The EXIF orientation's value as stored (1 when absent; any type on hostile bytes): one EXIF read per image
    # (it costs more than decoding a small JPEG). draft() is skipped for rotated images to keep the size maths
    # simple; they are rare.
    if img.format == "JPEG" and "exif" not in img.info:  # no APP1 EXIF segment: nothing to parse
        return 1
    return img.getexif().get(0x0112, 1)


_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")  # <_io.BytesIO object at 0x7f..>, <PIL... image at 0x7F..>


def _clean(exc: BaseException) -> str:
    """Pillow's message without object reprs (``<_io.BytesIO object at 0x...>``, an image's or a function's
    repr; lower- or upper-case hex, as each platform prints it): a failure text names no memory address."""
    return _REPR.sub("the image", str(exc))

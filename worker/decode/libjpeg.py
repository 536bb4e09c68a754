"""A JPEG to the model's pixels on Pillow's C objects, without ``Image.open``: what ``worker.decode.cpu``'s direct
path runs for a plain JPEG (the caller has read its header with ``worker.decode.jpegscan``).

These are the calls ``Image.open`` + ``draft`` + ``load`` + ``resize`` + ``crop`` + ``tobytes`` end in, without
the Python between them (the header parser above all): Pillow's libjpeg decoder fed the whole file at the DCT
scale ``draft`` would pick, the bilinear resize, the crop, the raw encoder. They are Pillow's internal objects,
so ``worker.decode.cpu`` checks once that they still give ``Image.open``'s pixels before it uses them. Errors
are raised as Pillow's ``ImageFile.load`` raises them (``OSError``, the same words). No torch here.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageFile


def pixels(
    data: bytes, mode: str, size: tuple[int, int], scale: int, plan: tuple[int, int, int, int], out: tuple[int, int]
) -> bytes:
    """RGB bytes of ``out`` = (width, height): the JPEG decoded at 1/``scale`` (``size``, ``scaled_size``) in its
    mode (L or RGB), resized to ``plan``'s size and cropped at its corner (``cpu.resize_plan``); raise
    ``OSError``."""
    width, height = out
    new_w, new_h, left, top = plan
    image = _decoded(data, mode, size, scale)
    if (new_w, new_h) != size:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, (0, 0, *size))
    if (new_w, new_h) != out:
        image = image.crop((left, top, left + width, top + height))
    return _encoded(image, width, height)


def scaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The size Pillow's ``draft`` decodes a ``width`` x ``height`` JPEG to at 1/``scale``."""
    return -(-width // scale), -(-height // scale)


def _decoded(data: bytes, mode: str, size: tuple[int, int], scale: int) -> Any:
    """The whole file through Pillow's JPEG decoder at DCT ``scale``, as ``ImageFile.load`` feeds it."""
    image = Image.core.new(mode, size)
    decoder = Image.core.jpeg_decoder(mode, mode, "", scale, 0)
    try:
        decoder.setimage(image, (0, 0, *size))
        consumed, error = decoder.decode(data)
    finally:
        decoder.cleanup()
    if consumed >= 0:  # libjpeg wants more: the file ends early
        raise OSError(f"image file is truncated ({len(data) - consumed} bytes not processed)")
    if error < 0:
        raise ImageFile._get_oserror(error, encoder=False)  # Pillow's own words for the failure
    return image if mode == "RGB" else image.convert("RGB")


def _encoded(image: Any, width: int, height: int) -> bytes:
    """``Image.tobytes()`` of an RGB core image."""
    encoder = Image.core.raw_encoder("RGB", "RGB")
    chunks = []
    try:
        encoder.setimage(image, (0, 0, width, height))
        while True:
            _, status, chunk = encoder.encode(max(ImageFile.MAXBLOCK, width * 4))
            chunks.append(chunk)
            if status:
                break
    finally:
        encoder.cleanup()
    if status < 0:
        raise RuntimeError(f"encoder error {status} in tobytes")
    return b"".join(chunks)

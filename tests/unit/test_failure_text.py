"""A failure text names the problem, never a memory address (``<_io.BytesIO object at 0x...>``)."""

from __future__ import annotations

import os
import re

import pytest
from PIL import Image, UnidentifiedImageError

from worker.decode.cpu import ImageError, Limits, Preprocess, UnsupportedImage, decode

from ..conftest import image_bytes

SPEC = Preprocess(size=(32, 32), resize="stretch")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}|object at")

HOSTILE = {
    "random": os.urandom(4096),
    "text": b"hello, this is not an image\n" * 20,
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "truncated-jpeg": image_bytes("coffee.jpg")[:3000],
    "header-then-garbage": image_bytes("coffee.jpg")[:600] + os.urandom(8000),
    "png-header-then-garbage": b"\x89PNG\r\n\x1a\n" + b"garbage" * 100,
    "gif-header-only": b"GIF89a\x01\x00\x01\x00",
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_pillow_failures_on_hostile_bytes_name_no_address(data):
    with pytest.raises(ImageError) as caught:
        decode(data, SPEC, Limits())
    assert not ADDRESS.search(str(caught.value)), str(caught.value)


@pytest.mark.parametrize(
    "message",
    [
        "cannot identify image file <_io.BytesIO object at 0x7f3a9c2b1e50>",
        "cannot identify image file <_io.BytesIO object at 0x000001E5C2A3F1A0>",  # Windows prints upper-case hex
        "bad mode for <PIL.PngImagePlugin.PngImageFile image mode=I;16 size=8x8 at 0x7F3A9C2B1E50>",
    ],
)
def test_any_object_repr_in_a_pillow_message_is_replaced(monkeypatch, message):
    def refuse(*_args: object, **_kwargs: object) -> Image.Image:
        raise UnidentifiedImageError(message)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(UnsupportedImage) as caught:
        decode(b"\xff\xd8\xff", SPEC, Limits())
    text = str(caught.value)
    assert not ADDRESS.search(text) and text.startswith("not a supported image") and "the image" in text

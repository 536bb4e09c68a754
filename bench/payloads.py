"""JPEG payloads of exact sizes for the Redis-cost benches: a real photo re-encoded to fit, then padded.

Padding is JPEG comment segments (COM, 0xFFFE) of seeded random bytes, inserted after SOI: the file
still decodes as the same photo, and, like a JPEG's entropy-coded data, the padding does not compress.
"""

from __future__ import annotations

import io
import random

from PIL import Image

from .common import ROOT

PHOTO = ROOT / "examples" / "images" / "retina_large.jpg"
COM_MAX = 65533  # the most payload one COM segment holds (its length field counts itself)


def _encode(image: Image.Image, side: int, quality: int) -> bytes:
    small = image.copy()
    small.thumbnail((side, side))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _pad(jpeg: bytes, size: int, seed: int) -> bytes:
    """``jpeg`` with COM segments after SOI so that it is exactly ``size`` bytes (0 or >= 5 bytes short)."""
    rng, segments, missing = random.Random(seed), [], size - len(jpeg)
    while missing > 0:
        body = min(COM_MAX, missing - 4)
        if 0 < missing - 4 - body < 5:  # leave at least one segment's worth for the next one
            body -= 5
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + rng.randbytes(body))
        missing -= body + 4
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def jpeg_of_size(size: int, seed: int = 0) -> bytes:
    """A real photo as a JPEG of exactly ``size`` bytes (at least ~600: the smallest encoding)."""
    image = Image.open(PHOTO).convert("RGB")
    best = _encode(image, 16, 30)
    for side in (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048):
        candidate = _encode(image, side, 85)
        if len(candidate) + 5 > size:
            break
        best = candidate
    if 0 < size - len(best) < 5 or len(best) > size:
        raise ValueError(f"{size} bytes is below the smallest JPEG of the photo ({len(best)} bytes)")
    data = _pad(best, size, seed)
    assert len(data) == size, (len(data), size)
    return data


def reference_url(n: int) -> str:
    """A job's reference to its image instead of the bytes: a typical object-store URL."""
    return f"https://images.example.com/ads/2026/11/{n:08d}/photo-1600x1200.jpg"

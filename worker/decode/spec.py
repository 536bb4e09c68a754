"""What decoding is asked for (the model's ``Preprocess``, the ``Limits`` an image may cost) and how it fails
(``ImageError`` and its kinds). Plain data, no Pillow or torch: settings, the wire and decode processes import it."""

from __future__ import annotations

from dataclasses import dataclass

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image that cannot be used; ``kind`` becomes the result's ``error.type``."""

    kind = "bad_image"


class ImageTooLarge(ImageError):
    """Too many bytes, or too many pixels (a decompression bomb)."""

    kind = "image_too_large"


class UnsupportedImage(ImageError):
    """Not an image, a format we do not read, or a corrupt/truncated file."""

    kind = "unsupported_image"


@dataclass(frozen=True)
class Preprocess:
    """How pixels become model input: see docs/model-format.md."""

    size: tuple[int, int]  # (H, W)
    resize: str = "center_crop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_dict(cls, spec: dict) -> Preprocess:
        """Build from ``preprocess.json``; raise ``ValueError`` on a malformed spec."""
        size = tuple(int(v) for v in spec["size"])
        mean = tuple(float(v) for v in spec.get("mean", cls.mean))
        std = tuple(float(v) for v in spec.get("std", cls.std))
        resize = spec.get("resize", "center_crop")
        if len(size) != 2 or min(size) < 1 or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"bad preprocess spec: {spec!r}")
        if resize not in ("center_crop", "stretch"):
            raise ValueError(f"unknown resize {resize!r}: use center_crop or stretch")
        return cls(size=size, resize=resize, mean=mean, std=std)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """The ``preprocess.json`` map."""
        return {"size": list(self.size), "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class Limits:
    """What an image may cost us before we refuse it."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS

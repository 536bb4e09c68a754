"""The GPU decoder's device-side preprocessing: decoded full-size images to the model's input, as
``worker.decode.cpu.decode`` does on the CPU (draft scale, EXIF orientation, resize plan, crop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .cpu import Preprocess, draft_scale, resize_plan
from .header import Header

RESIZE_PIXELS = 32_000_000  # same-size images resized together up to this many pixels (~380 MB as float)


def orient(images: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to ``... x H x W x C`` images, as Pillow's ``ImageOps.exif_transpose``."""
    if orientation in (5, 6, 7, 8):  # the four that swap width and height
        images = images.transpose(-3, -2)
    flips = {2: (-2,), 3: (-3, -2), 4: (-3,), 6: (-2,), 7: (-3, -2), 8: (-3,)}.get(orientation)
    return images.flip(flips) if flips else images


def reduce(images: torch.Tensor, scale: int) -> torch.Tensor:
    """``N x h x w x 3`` uint8 images at 1/``scale`` (ceil), each output pixel the mean of its ``scale`` x ``scale``
    block: what Pillow's ``draft`` (DCT scaling in libjpeg) gives the CPU path for large JPEGs, closely."""
    if scale == 1:
        return images
    x = F.avg_pool2d(images.permute(0, 3, 1, 2).float(), scale, ceil_mode=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def resize_batch(images: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """Same-size uint8 ``N x h x w x 3`` images to ``N x H x W x 3`` (``spec``'s plan; bilinear, antialiased
    like Pillow's reducing resize, rounded and clamped to uint8)."""
    _, h, w, _ = images.shape
    height, width = spec.size
    new_w, new_h, left, top = resize_plan(w, h, spec)
    x = images.permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    x = x[:, :, top : top + height, left : left + width]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def prepare(images: Sequence[torch.Tensor], headers: Sequence[Header], spec: Preprocess) -> list[torch.Tensor]:
    """Decoded full-size ``h x w x 3`` images to the model's input, as ``worker.decode.cpu.decode`` would: the
    draft scale (unrotated JPEGs), the EXIF orientation, the resize plan. Images alike are done together."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (image, header) in enumerate(zip(images, headers, strict=True)):
        scale = draft_scale(header.width, header.height, spec) if header.orientation == 1 else 1
        groups.setdefault((*image.shape, scale, header.orientation), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for (h, w, _, scale, turn), same in groups.items():
        chunk = max(1, RESIZE_PIXELS // (h * w))
        for k in range(0, len(same), chunk):
            indices = same[k : k + chunk]
            batch = orient(reduce(torch.stack([images[i] for i in indices]), scale), turn)
            for i, image in zip(indices, resize_batch(batch, spec), strict=True):
                out[i] = image
    return out  # type: ignore[return-value]

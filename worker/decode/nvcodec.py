"""nvImageCodec behind the GPU decoder's ``BatchDecode`` seam: imported only when a GPU decoder is built
(the ``gpu`` extra), so a CPU worker never needs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class GpuDecodeUnavailable(RuntimeError):
    """nvImageCodec is missing, or cannot decode a JPEG on this device."""


def load_nvimgcodec() -> Any:
    """Import ``nvidia.nvimgcodec``; raise ``GpuDecodeUnavailable`` with the install hint."""
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        raise GpuDecodeUnavailable(
            f"nvImageCodec is not installed ({exc}): pip install 'adclassify[gpu]' "
            "(nvidia-nvimgcodec-cu13, nvidia-nvjpeg)"
        ) from exc
    return nvimgcodec


class NvImageCodec:
    """``BatchDecode`` with nvImageCodec: hardware JPEG engines where present, CUDA otherwise, never the CPU."""

    def __init__(self, device: torch.device, options: str = "", hw_load: float = 1.0) -> None:
        codec = load_nvimgcodec()
        self.codec, self.device = codec, device
        index = device.index if device.index is not None else torch.cuda.current_device()
        # hw_load: the share of a batch offered to the hardware JPEG engines (the rest to the CUDA decoder)
        backends = [codec.Backend(codec.BackendKind.HW_GPU_ONLY, load_hint=hw_load)]
        backends += [codec.Backend(k) for k in (codec.BackendKind.GPU_ONLY, codec.BackendKind.HYBRID_CPU_GPU)]
        try:
            self.decoder = codec.Decoder(device_id=index, backends=backends, options=options)
        except RuntimeError as exc:
            raise GpuDecodeUnavailable(f"nvImageCodec cannot start on {device}: {exc}") from exc
        self.params = codec.DecodeParams(
            apply_exif_orientation=False, color_spec=codec.ColorSpec.SRGB, sample_format=codec.SampleFormat.I_RGB
        )

    def __call__(self, images: Sequence[bytes], stream: int) -> list[torch.Tensor | None]:
        """Decode a batch in one call; an image nvImageCodec cannot parse or decode comes back None."""
        parsed: list[tuple[int, Any]] = []
        for i, data in enumerate(images):
            try:
                parsed.append((i, self.codec.CodeStream(data)))
            except RuntimeError:  # "Failed to get image info": Pillow gets its turn
                continue
        out: list[torch.Tensor | None] = [None] * len(images)
        if not parsed:
            return out
        decoded = self.decoder.decode([s for _, s in parsed], params=self.params, cuda_stream=stream)
        for (i, _), image in zip(parsed, decoded, strict=True):
            out[i] = None if image is None else self._tensor(image)
        return out

    def _tensor(self, image: Any) -> torch.Tensor | None:
        if image.buffer_kind != self.codec.ImageBufferKind.STRIDED_DEVICE:
            return None  # a host-side result: not expected from the GPU backends; Pillow decodes it instead
        tensor = torch.as_tensor(image, device=self.device)  # zero-copy through __cuda_array_interface__
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(-1)
        if tensor.shape[-1] == 1:
            tensor = tensor.expand(-1, -1, 3)
        return tensor if tensor.dim() == 3 and tensor.shape[-1] == 3 and tensor.dtype == torch.uint8 else None

"""The LitServe peer for the side-by-side benchmark: our model file served the way an ordinary LitServe user would.

``python -m bench.litserve_app --model M --max-batch 4 --port P [--device cpu]``

Nothing here comes from our ``worker`` or ``producer`` packages: the model file is loaded with plain
``torch.jit.load``, its labels and preprocessing are read from its ``_extra_files``, and each request
(``{"image": base64}``) is decoded with Pillow in ``decode_request`` (JPEG draft mode, shorter side to
round(H / 0.875) bilinear, centre crop H x W, scaled to [0, 1] and normalised). Requests are batched
with ``torch.stack`` and answered with ``{"label": ..., "topk": [[label, score], ...]}``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from io import BytesIO

import litserve as ls
import torch
from PIL import Image

TOP_K = 5
CROP_RATIO = 0.875  # the usual ImageNet evaluation crop: 224 out of 256
WARM_BATCHES = (1, 2, 4, 8)


class ClassifierAPI(ls.LitAPI):
    """decode_request -> batch -> predict -> unbatch -> encode_response, LitServe's native shape."""

    def __init__(self, model_path: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device: str) -> None:
        """Load the TorchScript file and its extra files, then warm it up at a few batch sizes."""
        if device == "cpu" or device.startswith("cpu"):
            torch.set_num_threads(os.cpu_count() or 1)
        self.device = device
        extra = {"labels.json": "", "preprocess.json": ""}
        self.model = torch.jit.load(self.model_path, map_location=device, _extra_files=extra).eval()
        self.labels: list[str] = json.loads(extra["labels.json"])
        pre = json.loads(extra["preprocess.json"])
        self.height, self.width = (int(v) for v in pre["size"])
        self.stretch = pre.get("resize", "center_crop") == "stretch"
        self.short_side = round(self.height / CROP_RATIO)
        self.mean = torch.tensor(pre["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(pre["std"], dtype=torch.float32).view(3, 1, 1)
        with torch.inference_mode():
            for n in WARM_BATCHES:
                for _ in range(2):
                    self.model(torch.zeros(n, 3, self.height, self.width, device=device))

    def decode_request(self, request: dict) -> torch.Tensor:
        """base64 -> Pillow -> RGB -> resize and crop -> normalised float tensor [3, H, W]."""
        img = Image.open(BytesIO(base64.b64decode(request["image"])))
        if img.format == "JPEG":
            draft = (self.width, self.height) if self.stretch else (self.short_side, self.short_side)
            img.draft("RGB", draft)
        img = self._resize(img.convert("RGB"))
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        x = pixels.view(self.height, self.width, 3).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std

    def _resize(self, img: Image.Image) -> Image.Image:
        if self.stretch:
            return img.resize((self.width, self.height), Image.BILINEAR)
        w, h = img.size
        scale = self.short_side / min(w, h)
        new_w, new_h = max(self.width, round(w * scale)), max(self.height, round(h * scale))
        img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - self.width) // 2, (new_h - self.height) // 2
        return img.crop((left, top, left + self.width, top + self.height))

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> list:
        """Top-k (scores, class indices) per image; one pair when LitServe does not batch (max_batch 1)."""
        single = x.dim() == 3
        with torch.inference_mode():
            logits = self.model((x[None] if single else x).to(self.device))
            scores, indices = torch.softmax(logits.float(), dim=1).topk(TOP_K, dim=1)
        rows = list(zip(scores.cpu().tolist(), indices.cpu().tolist(), strict=False))
        return rows[0] if single else rows

    def unbatch(self, output: list) -> list:
        return list(output)

    def encode_response(self, output: tuple[list[float], list[int]]) -> dict:
        scores, indices = output
        topk = [[self.labels[i], round(s, 6)] for s, i in zip(scores, indices, strict=False)]
        return {"label": topk[0][0], "topk": topk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-batch", type=int, default=1, help="LitServe max_batch_size (1, 4, 8)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="LitServe workers_per_device (inference processes)")
    args = parser.parse_args()
    api = ClassifierAPI(args.model, max_batch_size=args.max_batch, batch_timeout=0.010)
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=args.workers, timeout=120)
    server.run(port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()

"""The same TorchScript model served by LitServe (base64 JSON in, top-k out), for the side-by-side benchmark.

``python -m bench.litserve_app --model M --max-batch 4 --port P [--device cpu]``; decoding and
preprocessing are the worker's own, so the comparison is of the serving path alone.
"""

from __future__ import annotations

import argparse
import base64

import litserve as ls
import torch

from worker.images import Limits
from worker.model import load_model
from worker.tasks import decode_image


class ClassifierAPI(ls.LitAPI):
    """decode_request -> batch -> predict -> unbatch -> encode_response, LitServe's native shape."""

    def __init__(self, model_path: str, device: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_path, self.device_name = model_path, device

    def setup(self, device: str) -> None:
        self.model = load_model(self.model_path, self.device_name, max_batch=max(1, self.max_batch_size))
        self.model.warm_up(rounds=1)
        self.limits = Limits()

    def decode_request(self, request: dict) -> torch.Tensor:
        return decode_image(base64.b64decode(request["image"]), self.model.info.preprocess, self.limits)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> list:
        if x.dim() == 3:
            x = x[None]
        return self.model.predict(x, k=5)

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: list) -> dict:
        if output and isinstance(output[0], list):  # max_batch 1: predict returned [topk]
            output = output[0]
        return {"label": output[0][0], "topk": output}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    api = ClassifierAPI(args.model, args.device, max_batch_size=args.max_batch, batch_timeout=0.005)
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=120)
    server.run(port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()

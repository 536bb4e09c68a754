"""Tiny models built in code for the tests (exported to TorchScript by fixtures)."""

from __future__ import annotations

import torch
from torch import nn

TINY_SIZE = (32, 32)
TINY_CLASSES = 10


class TinyCNN(nn.Module):
    """Conv -> BN -> ReLU -> pool -> linear: small, deterministic, and batch-norm like real models."""

    def __init__(self, classes: int = TINY_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def tiny_cnn() -> nn.Module:
    """A TinyCNN with fixed random weights (seeded), so every export is the same model."""
    torch.manual_seed(1234)
    model = TinyCNN()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.1, 0.1)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def flat_model() -> nn.Module:
    """Returns a 1-D output: not a classifier, for export failure tests."""
    return nn.Flatten(0)


def pool_linear() -> nn.Module:
    """Average-pool to 14x14, then one linear layer: nearly free at 224 px (the decode-bound benchmark)."""
    torch.manual_seed(1234)
    return nn.Sequential(nn.AdaptiveAvgPool2d(14), nn.Flatten(), nn.Linear(3 * 14 * 14, TINY_CLASSES)).eval()


class Dominant(nn.Module):
    """Mean colour -> 4 logits whose first stands far above the rest: the same top-1 in any precision."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def dominant() -> nn.Module:
    torch.manual_seed(1234)
    model = Dominant()
    with torch.no_grad():
        model.head.weight.mul_(0.1)
        model.head.bias.copy_(torch.tensor([4.0, 1.0, 0.0, -1.0]))
    return model.eval()


class HalfFlips(nn.Module):
    """Answers class 1 in fp32 and class 0 in any other precision: a model whose half-precision answers differ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.mean(dim=(1, 2, 3)).unsqueeze(1) * 0 + 1  # [B, 1], in x's dtype
        if x.dtype == torch.float32:
            return torch.cat([ones * 0, ones * 5], dim=1)
        return torch.cat([ones * 5, ones * 0], dim=1)


def half_flips() -> nn.Module:
    return HalfFlips().eval()

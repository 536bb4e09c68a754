"""Timing a model on the real device, and choosing the batch size by measurement (``--batch-size auto``)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .model import Classifier, bucket_sizes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """One configuration's speed: median milliseconds per batch and images per second."""

    batch: int
    ms_per_batch: float
    images_per_s: float
    iters: int


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a timer reads real time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    fn: Callable[[], object], batch: int, device: torch.device, *, budget_s: float = 1.0, warmup: int = 2
) -> Timing:
    """Call ``fn`` (one batch of ``batch`` images) ``warmup`` times, then for ``budget_s`` (3 calls at least)."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    median = statistics.median(samples)
    return Timing(batch, median * 1000, batch / median, len(samples))


def random_batch(model: Classifier, size: int) -> torch.Tensor:
    """A uint8 ``[size, H, W, 3]`` batch shaped like the model's decoded input."""
    height, width = model.info.preprocess.size
    return torch.randint(0, 256, (size, height, width, 3), dtype=torch.uint8)


def time_buckets(model: Classifier, sizes: list[int], budget_s: float = 1.0) -> list[Timing]:
    """Images/s of the whole ``Classifier.logits`` path (normalise + forward) at each batch size."""
    timings = []
    for size in sizes:
        batch = random_batch(model, size)
        timings.append(time_batches(lambda b=batch: model.logits(b), size, model.device, budget_s=budget_s))
    return timings


def choose_batch_size(timings: list[Timing], max_latency_ms: float | None = None, tolerance: float = 0.02) -> int:
    """The smallest batch within ``tolerance`` of the best images/s, among those under ``max_latency_ms``.

    Preferring the smallest near-best size keeps latency low when a bigger batch buys only noise.
    """
    allowed = [t for t in timings if max_latency_ms is None or t.ms_per_batch <= max_latency_ms]
    if not allowed:
        return min(timings, key=lambda t: t.ms_per_batch).batch
    best = max(t.images_per_s for t in allowed)
    return min(t.batch for t in allowed if t.images_per_s >= best * (1 - tolerance))


def autotune(model: Classifier, max_batch: int, max_latency_ms: float | None = None) -> tuple[int, list[Timing]]:
    """Time every power-of-two bucket up to ``max_batch``, pick the cap, re-bucket ``model`` to it."""
    budget_s = 0.5 if model.device.type == "cuda" else 1.0
    timings = time_buckets(model, bucket_sizes(max_batch), budget_s=budget_s)
    chosen = choose_batch_size(timings, max_latency_ms)
    model.buckets = bucket_sizes(chosen)
    log.info("batch size auto: chose %d of %s", chosen, format_timings(timings))
    return chosen, timings


def choose_threads(model: Classifier, batch: int, budget_s: float = 0.5) -> tuple[int, dict[int, float]]:
    """On a CPU, time ``batch`` with 1 intra-op thread and with torch's default; keep the faster.

    A small model on few cores often runs faster on one thread: the others' synchronisation costs
    more than they add, and they take CPU from decoding and Redis.
    """
    rates: dict[int, float] = {}
    x = random_batch(model, batch)
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        rates[threads] = time_batches(lambda: model.logits(x), batch, model.device, budget_s=budget_s).images_per_s
    best = max(rates, key=lambda t: rates[t])
    torch.set_num_threads(best)
    log.info("intra-op threads: chose %d of %s", best, {t: round(r, 1) for t, r in rates.items()})
    return best, rates


def format_timings(timings: list[Timing]) -> str:
    """``b=1 12.3ms 81.3/s, b=2 ...`` for a log line."""
    return ", ".join(f"b={t.batch} {t.ms_per_batch:.1f}ms {t.images_per_s:.1f}/s" for t in timings)

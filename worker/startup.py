"""A worker's model at start and for a swap: loaded in the precision and layout settled on, threads chosen,
every bucket warmed, and with ``--batch-size auto`` the batch size timed; and its registration with RQ."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import torch

from .backoff import Backoff
from .config import WorkerSettings
from .decode import Decoder
from .model import Classifier, load_model
from .perf import autotune, choose_threads
from .precision import load_auto, recheck
from .store import QueueStore, StoreUnavailable

log = logging.getLogger(__name__)


def prepare_model(settings: WorkerSettings) -> tuple[Classifier, WorkerSettings]:
    """Load and warm the model; with ``--batch-size auto`` time the buckets and settle the batch size."""
    auto = settings.batch_size == "auto"
    max_batch = settings.max_batch_size if auto else int(settings.batch_size)
    if settings.precision == "auto":  # fp16 channels_last on CUDA where it answers as fp32 does (worker.precision)
        model, precision = load_auto(settings.model, settings.device, max_batch, settings.optimize)
        settings = replace(settings, precision=precision)  # the cache key names what runs
    else:
        precision, nhwc = settings.precision, channels_last(settings)
        model = load_model(settings.model, settings.device, max_batch, precision, settings.optimize, nhwc)
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    elif model.device.type == "cpu":
        choose_threads(model, max_batch)
    warm = model.warm_up()
    log.info("warmed up buckets=%s ms=%s", model.buckets, {k: round(v * 1000, 1) for k, v in warm.items()})
    if auto:
        chosen, _ = autotune(model, max_batch, settings.max_batch_latency_ms or None)
        settings = replace(settings, batch_size=chosen)
    return model, settings


def channels_last(settings: WorkerSettings) -> bool:
    """Half precisions on CUDA run in the channels_last layout (tensor cores' own), as ``--precision auto``'s."""
    return settings.precision in ("fp16", "bf16") and torch.device(settings.device).type == "cuda"


def load_warm(settings: WorkerSettings, path: str, cap: int, auto: bool = False) -> Classifier:
    """A new version of the model for a swap, from ``path`` (``--model`` resolved): loaded with the running settings
    (the precision the worker settled on at start, in its layout) and warmed on every bucket up to ``cap`` (the
    running batch cap: one an out-of-memory lowered is not tried again). ``auto`` (``--precision auto`` at
    start): a half precision is kept only if the new version too answers as in fp32 (``ModelError`` if not)."""
    max_batch, nhwc = min(int(settings.batch_size), cap), channels_last(settings)
    model = load_model(path, settings.device, max_batch, settings.precision, settings.optimize, nhwc)
    if auto:
        recheck(model, path, settings.optimize)
    model.warm_up()
    return model


def register(store: QueueStore, stop: threading.Event, decoder: Decoder | None = None) -> bool:
    """Register with RQ, waiting out a Redis that is down (capped back-off); False if stopped first. ``decoder``
    (its processes, their shared memory) is closed when this worker won't run: stopped, or its name taken."""
    backoff = Backoff()
    try:
        while not stop.is_set():
            try:
                store.register(stop)
                return True
            except StoreUnavailable as exc:
                delay_s = backoff.next()
                log.warning("redis unavailable at start (%s); retrying in %.1f s", exc, delay_s)
                stop.wait(delay_s)
    except BaseException:
        if decoder is not None:
            decoder.close()
        raise
    if decoder is not None:
        decoder.close()
    return False

"""The worker's flags: one table of flag, environment twin, type and help (defaults live in ``WorkerSettings``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def batch_size_arg(text: str) -> int | str:
    """``auto`` or a positive integer."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be a number or 'auto', got {text!r}") from None


# flag, env twin, type, help. Defaults come from WorkerSettings.
FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--model", "WORKER_MODEL", str, "model file (TorchScript + metadata, see docs/model-format.md)"),
    (
        "--redis-url",
        "REDIS_URL",
        str,
        "Redis URL; redis://, rediss:// (TLS) or unix://, may carry user:password; several (repeat the flag, or a "
        "comma-separated list) are shards, each a whole RQ world: the worker serves them all",
    ),
    (
        "--queue",
        "WORKER_QUEUE",
        str,
        "RQ queue to drain; several by priority: high,default (the highest non-empty first, as rq worker high "
        "default does); each queue's results go to its own <queue>:results channel and feed",
    ),
    (
        "--batch-size",
        "WORKER_BATCH_SIZE",
        batch_size_arg,
        "most jobs per batch (buckets up to it are warmed at start), or 'auto': time the buckets, take the fastest",
    ),
    ("--max-batch-size", "WORKER_MAX_BATCH_SIZE", int, "with --batch-size auto: the largest size tried"),
    (
        "--max-batch-latency-ms",
        "WORKER_MAX_BATCH_LATENCY_MS",
        float,
        "with --batch-size auto: ignore sizes whose forward pass takes longer (0: no limit)",
    ),
    ("--max-wait-ms", "WORKER_MAX_WAIT_MS", float, "wait at most this long after a batch's first job for more"),
    ("--device", "WORKER_DEVICE", str, "cpu, cuda or cuda:K"),
    (
        "--devices",
        "WORKER_DEVICES",
        str,
        "run one supervised worker process per device: all (every GPU), 0,1,3, or cpu:N",
    ),
    (
        "--workers-per-device",
        "WORKER_WORKERS_PER_DEVICE",
        int,
        "supervised worker processes per device (each its own GIL; with --devices, or on --device alone); "
        "decode and intra-op threads left at 0 are split between them",
    ),
    (
        "--cpus",
        "WORKER_CPUS",
        int,
        "CPUs this worker (a pod) may use: decode and intra-op threads left at 0 are this many, split between "
        "the --workers-per-device children; 0: the cores the process may run on (a container without a CPU set "
        "sees the node's)",
    ),
    (
        "--precision",
        "WORKER_PRECISION",
        str,
        "auto: on CUDA fp16 in the channels_last layout when it gives fp32's top-1 on the calibration photos, "
        "else fp32 (a .pt2 package: its own); or fp32, fp16, bf16 (half precisions are for GPUs)",
    ),
    (
        "--decode",
        "WORKER_DECODE",
        str,
        "cpu: Pillow; gpu: JPEGs decoded on the device by nvImageCodec (the gpu extra), anything else by Pillow, "
        "image by image; auto: gpu on a CUDA device when nvImageCodec is installed, else cpu",
    ),
    (
        "--decode-sync",
        "WORKER_DECODE_SYNC",
        str,
        "with --decode gpu: on: wait for each decoded batch before handing it on (guards against nvJPEG's "
        "hardware-decode ordering bug, pytorch/vision#9606); off: stream ordering only",
    ),
    (
        "--decode-hw-load",
        "WORKER_DECODE_HW_LOAD",
        float,
        "with --decode gpu: the share (0-1) of each decode call offered to the GPU's hardware JPEG engines, the "
        "rest to its CUDA decoder (nvImageCodec's load hint; 1: all the engines take)",
    ),
    (
        "--decode-threads",
        "WORKER_DECODE_THREADS",
        int,
        "threads decoding images (Pillow releases the GIL); 0: one per core",
    ),
    (
        "--decode-workers",
        "WORKER_DECODE_WORKERS",
        int,
        "decode in this many processes instead of threads (pixels come back through shared memory; 0: threads)",
    ),
    (
        "--decode-overlap",
        "WORKER_DECODE_OVERLAP",
        str,
        "on: decode beside the forward pass; off: decode only between forward passes (every core each); "
        "auto: on for GPUs and single-threaded CPU models; on a CPU device with several intra-op threads, "
        "decodes yield to a forward pass only while it costs more than twice a decode per image and a full "
        "batch is already decoded (worker.decode.gate)",
    ),
    (
        "--decode-timeout-s",
        "WORKER_DECODE_TIMEOUT_S",
        float,
        "with --decode-workers: a decode running longer fails its job (decode_timeout) and its process is replaced",
    ),
    (
        "--optimize",
        "WORKER_OPTIMIZE",
        str,
        "TorchScript files only (a .pt2 package is compiled already): auto: torch.jit.optimize_for_inference "
        "(frozen) when it matches the plain model on the warm-up batch; off: the model as loaded",
    ),
    (
        "--torch-threads",
        "WORKER_TORCH_THREADS",
        int,
        "torch intra-op threads; 0: on a CPU, time 1 vs all cores at start and keep the faster",
    ),
    ("--topk", "WORKER_TOPK", int, "labels per result"),
    ("--max-image-bytes", "WORKER_MAX_IMAGE_BYTES", int, "refuse larger payloads"),
    ("--max-pixels", "WORKER_MAX_PIXELS", int, "refuse images with more pixels (decompression bombs)"),
    (
        "--fetch-allow",
        "WORKER_FETCH_ALLOW",
        str,
        "comma-separated URL prefixes that image_url jobs may name (https://cdn.example.com/ads/; https:// for any "
        "host); empty: every image_url job fails forbidden_url. Non-public addresses only where a prefix names the IP",
    ),
    ("--fetch-root", "WORKER_FETCH_ROOT", str, "directory under which file:// image URLs are read (empty: refused)"),
    ("--fetch-threads", "WORKER_FETCH_THREADS", int, "threads fetching image URLs (beside the decoders)"),
    ("--fetch-connect-timeout-s", "WORKER_FETCH_CONNECT_TIMEOUT_S", float, "image URL connect timeout"),
    (
        "--fetch-read-timeout-s",
        "WORKER_FETCH_READ_TIMEOUT_S",
        float,
        "image URL read timeout (the longest silence while waiting for or reading the answer)",
    ),
    (
        "--fetch-timeout-s",
        "WORKER_FETCH_TIMEOUT_S",
        float,
        "the whole fetch of one image URL, redirects included; past any timeout the job fails fetch_error and is "
        "retried",
    ),
    ("--idle-wait-ms", "WORKER_IDLE_WAIT_MS", float, "longest single blocking wait for a first job"),
    (
        "--worker-ttl-s",
        "WORKER_TTL_S",
        int,
        "the worker key lives this long without a heartbeat (sent every third of it); a dead worker's jobs "
        "are re-queued by the others within about this plus 5 s",
    ),
    (
        "--max-deliveries",
        "WORKER_MAX_DELIVERIES",
        int,
        "a job lost with its worker this many times fails as 'poison' instead of being re-queued",
    ),
    (
        "--cache-ttl-s",
        "WORKER_CACHE_TTL_S",
        int,
        "keep each cached result this long in the result cache for repeated photos (SHA-256 of the bytes + "
        "model tag + precision + decode + top-k; the jobs enqueued with cache=True, see --cache-for); 0: off",
    ),
    (
        "--cache-for",
        "WORKER_CACHE_FOR",
        str,
        "whose results go into the result cache: asked (jobs enqueued with cache=True; no other photo is hashed) "
        "or all (every successful job's, as producers before cache=True marked their jobs expected)",
    ),
    (
        "--results-maxlen",
        "WORKER_RESULTS_MAXLEN",
        int,
        "entries kept in the durable results feed <queue>:results:stream (approximate trim; 0: no feed); a consumer "
        "group further behind than this loses its oldest entries",
    ),
    (
        "--shutdown-timeout-s",
        "WORKER_SHUTDOWN_TIMEOUT_S",
        float,
        "after SIGTERM, wait at most this long for Redis to record finished jobs, then exit 1 (the reaper "
        "re-queues what was not recorded)",
    ),
    ("--name", "WORKER_NAME", str, "worker name shown by rq info (default host:device:pid)"),
    ("--log-level", "WORKER_LOG_LEVEL", str, "DEBUG, INFO, WARNING or ERROR"),
    (
        "--metrics-port",
        "WORKER_METRICS_PORT",
        int,
        "serve Prometheus metrics (/metrics) and the probes (/healthz, /readyz) on this port "
        "(0: off; the metrics extra)",
    ),
    (
        "--health-port",
        "WORKER_HEALTH_PORT",
        int,
        "serve the probes /healthz (200 unless the pipeline stalled) and /readyz (200 once the model is warm and "
        "Redis answers) on this port (0: only on --metrics-port)",
    ),
    (
        "--model-watch-s",
        "WORKER_MODEL_WATCH_S",
        float,
        "poll --model's file identity every N seconds and load a new version in the background when it changes "
        "(a symlink flip); 0: only on SIGHUP",
    ),
    (
        "--reload-lock",
        "WORKER_RELOAD_LOCK",
        str,
        "a lock file shared by the worker processes on one device: they load a new model version one at a time "
        "(each holds a spare copy of the weights while it loads); the launcher gives its K children on a device "
        "one of its own",
    ),
    (
        "--stall-timeout-s",
        "WORKER_STALL_TIMEOUT_S",
        float,
        "exit 3 (after stopping the heartbeat, so the jobs are re-queued) when no batch progressed for this long "
        "while jobs are in hand; idling and waiting on Redis are not stalls",
    ),
]

"""The worker's settings: one frozen dataclass, built from CLI flags with environment twins."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from producer.wire.jobs import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_QUEUE
from producer.wire.results import DEFAULT_RESULTS_MAXLEN
from producer.wire.urls import RedisURLError, mask, split_urls
from producer.wire.urls import check as check_url

from .decode.cpu import DEFAULT_MAX_PIXELS
from .decode.urls import FetchPolicy

INSTANCE = secrets.token_hex(3)  # this process start's, for default worker names


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs; units in names."""

    model: str
    redis_url: str = "redis://localhost:6379/0"
    queue: str = DEFAULT_QUEUE
    batch_size: int | str = 8
    max_batch_size: int = 64
    max_batch_latency_ms: float = 0.0
    max_wait_ms: float = 5.0
    device: str = "cpu"
    devices: str = ""
    workers_per_device: int = 1
    precision: str = "fp32"
    decode: str = "auto"
    decode_sync: str = "on"
    decode_threads: int = 0
    decode_workers: int = 0
    decode_overlap: str = "auto"
    decode_timeout_s: float = 10.0
    optimize: str = "auto"
    torch_threads: int = 0
    topk: int = 5
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    fetch_allow: str = ""
    fetch_root: str = ""
    fetch_threads: int = 8
    fetch_connect_timeout_s: float = 3.0
    fetch_read_timeout_s: float = 5.0
    fetch_timeout_s: float = 15.0
    idle_wait_ms: float = 1000.0
    worker_ttl_s: int = 20
    max_deliveries: int = 3
    shutdown_timeout_s: float = 30.0
    results_maxlen: int = DEFAULT_RESULTS_MAXLEN
    cache_ttl_s: int = 3600
    name: str = ""
    burst: bool = False
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int = 0
    health_port: int = 0
    stall_timeout_s: float = 300.0
    model_watch_s: float = 0.0

    @property
    def worker_name(self) -> str:
        """``host:device:pid-token`` unless a name was given (``cuda:K`` reads as ``gpuK``); the token is
        random per process start, so a container's pid 1 never repeats a predecessor's name."""
        if self.name:
            return self.name
        device = self.device.replace("cuda:", "gpu").replace(":", "")
        return f"{socket.gethostname()}:{device}:{os.getpid()}-{INSTANCE}"

    @property
    def redis_urls(self) -> list[str]:
        """The shards' URLs (one for a single Redis)."""
        return split_urls(self.redis_url)

    def public(self) -> dict:
        """The settings without secrets (the Redis password is masked), for the start-up log."""
        values = asdict(self)
        values["redis_url"] = ",".join(mask_url(url) for url in self.redis_urls)
        return values


def mask_url(url: str) -> str:
    """``redis://user:secret@host?password=x`` -> ``redis://user:***@host?password=***`` (Sentinel URLs too)."""
    return mask(url)


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
    ("--precision", "WORKER_PRECISION", str, "fp32, fp16 or bf16 (half precisions are for GPUs)"),
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
        "keep each successful result this long in the result cache for repeated photos (SHA-256 of the bytes + "
        "model tag + precision + decode + top-k; producers ask with cache=True); 0: off",
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
        "--stall-timeout-s",
        "WORKER_STALL_TIMEOUT_S",
        float,
        "exit 3 (after stopping the heartbeat, so the jobs are re-queued) when no batch progressed for this long "
        "while jobs are in hand; idling and waiting on Redis are not stalls",
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every flag; each shows its environment twin and default in --help."""
    defaults = WorkerSettings(model="")
    for flag, env, kind, text in FLAGS:
        dest = flag[2:].replace("-", "_")
        default = getattr(defaults, dest)
        shown = f" (default: {default})" if default not in ("", None) else ""
        repeat = {"action": "append"} if flag == "--redis-url" else {}
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=f"{text}; env {env}{shown}", **repeat)
    parser.add_argument(
        "--burst", action="store_true", default=None, help="exit when the queue is empty; env WORKER_BURST=1"
    )
    parser.add_argument(
        "--log-json", action="store_true", default=None, help="log one JSON object per line; env WORKER_LOG_JSON=1"
    )


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> WorkerSettings:
    """Flags win over environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    values: dict = {}
    for flag, name, kind, _ in FLAGS:
        dest = flag[2:].replace("-", "_")
        value = getattr(args, dest, None)
        if isinstance(value, list):  # a repeated flag (--redis-url): one comma-separated list
            value = ",".join(value)
        if value is None and env.get(name):
            value = kind(env[name])
        if value is not None:
            values[dest] = value
    for name in ("burst", "log_json"):
        flag = getattr(args, name, None)
        values[name] = bool(flag) if flag is not None else env.get(f"WORKER_{name.upper()}", "") in ("1", "true", "yes")
    if not values.get("model"):
        raise SystemExit("worker: a model file is required: --model PATH or WORKER_MODEL")
    settings = WorkerSettings(**values)
    sizes = [settings.max_batch_size, settings.decode_threads + 1]
    if settings.batch_size != "auto":
        sizes.append(int(settings.batch_size))
    if settings.workers_per_device < 1:
        raise SystemExit("worker: --workers-per-device must be >= 1")
    if min(sizes) < 1 or settings.max_wait_ms < 0 or settings.decode_workers < 0:
        raise SystemExit("worker: batch sizes must be >= 1; --decode-threads, --decode-workers and --max-wait-ms >= 0")
    check_decode(settings)
    check_fetch(settings)
    if settings.decode_overlap not in ("auto", "on", "off"):
        raise SystemExit("worker: --decode-overlap must be auto, on or off")
    if settings.optimize not in ("auto", "off"):
        raise SystemExit("worker: --optimize must be auto or off")
    return settings


def redis_url_problem(settings: WorkerSettings) -> str | None:
    """Why ``--redis-url`` cannot name a Redis server (one line), or None when every URL can."""
    if not settings.redis_urls:
        return "--redis-url / REDIS_URL is empty"
    for url in settings.redis_urls:
        try:
            check_url(url)
        except RedisURLError as exc:
            return f"--redis-url: {exc} (a comma list for shards)"
    return None


def settings_from_env(environ: dict[str, str] | None = None) -> WorkerSettings:
    """The settings from environment variables alone (``WORKER_MODEL``, ...): the plain ``rq worker`` path,
    which has no flags of ours, reads the same settings with the same defaults and checks."""
    return settings_from(argparse.Namespace(), environ)


def check_decode(settings: WorkerSettings) -> None:
    """``--decode`` and ``--decode-sync`` values; ``gpu`` asks for a CUDA device. Raise ``SystemExit``."""
    if settings.decode not in ("auto", "cpu", "gpu"):
        raise SystemExit(f"worker: --decode must be cpu, gpu or auto, got {settings.decode!r}")
    if settings.decode_sync not in ("on", "off"):
        raise SystemExit(f"worker: --decode-sync must be on or off, got {settings.decode_sync!r}")
    on_cuda = settings.device.startswith("cuda") or (settings.devices and not settings.devices.startswith("cpu"))
    if settings.decode == "gpu" and not on_cuda:
        raise SystemExit(
            f"worker: --decode gpu decodes on a CUDA device, and this worker runs on {settings.device!r}: "
            "give --device cuda[:K], or --decode cpu / auto"
        )


def check_fetch(settings: WorkerSettings) -> None:
    """``--fetch-allow`` prefixes, ``--fetch-root``, and positive fetch threads and timeouts; raise ``SystemExit``."""
    try:
        FetchPolicy.parse(settings.fetch_allow, settings.fetch_root)
    except ValueError as exc:
        raise SystemExit(f"worker: {exc}") from None
    times = (settings.fetch_connect_timeout_s, settings.fetch_read_timeout_s, settings.fetch_timeout_s)
    if settings.fetch_threads < 1 or min(times) <= 0:
        raise SystemExit("worker: --fetch-threads must be >= 1 and the fetch timeouts > 0")

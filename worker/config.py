"""The worker's settings: one frozen dataclass, built from CLI flags with environment twins."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from dataclasses import asdict, dataclass

from producer.wire.jobs import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_QUEUE
from producer.wire.results import DEFAULT_RESULTS_MAXLEN
from producer.wire.urls import RedisURLError, mask, split_urls
from producer.wire.urls import check as check_url

from .decode.spec import DEFAULT_MAX_PIXELS
from .decode.urls import FetchPolicy
from .flags import FLAGS

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
    cpus: int = 0  # the CPUs the worker (a pod) may use, for threads left at 0; 0: the process's CPU set
    precision: str = "auto"
    decode: str = "auto"
    decode_sync: str = "on"
    decode_hw_load: float = 1.0
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
    cache_for: str = "asked"  # whose results are cached: jobs that ask (enqueue(..., cache=True)), or all
    name: str = ""
    burst: bool = False
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int = 0
    health_port: int = 0
    stall_timeout_s: float = 300.0
    model_watch_s: float = 0.0
    reload_lock: str = ""  # processes sharing a device and this file reload one at a time (the launcher sets it)

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
    if settings.workers_per_device < 1 or settings.cpus < 0:
        raise SystemExit("worker: --workers-per-device must be >= 1, --cpus >= 0")
    if min(sizes) < 1 or settings.max_wait_ms < 0 or settings.decode_workers < 0:
        raise SystemExit("worker: batch sizes must be >= 1; --decode-threads, --decode-workers and --max-wait-ms >= 0")
    check_decode(settings)
    check_fetch(settings)
    for name, allowed in CHOICES.items():
        if getattr(settings, name) not in allowed:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(f"worker: {flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}")
    return settings


# the settings that take one of a few words
CHOICES = {
    "decode_overlap": ("auto", "on", "off"),
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "optimize": ("auto", "off"),
    "cache_for": ("asked", "all"),
}


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
    if not 0.0 <= settings.decode_hw_load <= 1.0:
        raise SystemExit(f"worker: --decode-hw-load must be between 0 and 1, got {settings.decode_hw_load}")
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

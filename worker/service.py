"""One worker process, wired: model, queue store, decoder, pipeline, heartbeat; ``run()`` until stopped."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time

import redis
import torch

from .announce import announcement, start_metrics, swapped
from .backoff import Backoff
from .config import WorkerSettings, mask_url
from .decode import Decoder, Fetches, NoFetch
from .decode.cpu import Limits, Preprocess
from .decode.gate import Gate, NoGate
from .decode.pool import ProcessDecoder, ThreadDecoder
from .decode.urls import FetchPolicy
from .health import Health, ProbeServer, Watchdog
from .heartbeat import Heartbeat
from .infer import Predictor
from .metrics import Metrics
from .model import Classifier
from .pipeline import InHand, Pipeline, Stats
from .progress import finish_backoff_max, pipeline_settings_for
from .redisconn import connect, store_timeouts
from .reload import Reloader, ReloadTurn, file_identity
from .startup import load_warm, prepare_model, register
from .store import QueueStore, StoreUnavailable
from .store.rq import RedisStore
from .store.sharded import ShardedStore
from .tracing import Tracing

log = logging.getLogger(__name__)
RELOADER_JOIN_S = 5.0  # at a stop, how long a reload in progress may take to finish (the pod's grace is short)


def make_gate(settings: WorkerSettings, model: Classifier) -> Gate:
    """``--decode-overlap``: ``auto`` gates decoding only on a CPU device whose forward pass runs a
    multi-threaded OpenMP team, and then only while the forward pass is the bottleneck (``Gate``)."""
    team = model.device.type == "cpu" and torch.get_num_threads() > 1
    if settings.decode_overlap == "on" or (settings.decode_overlap == "auto" and not team):
        return NoGate()
    if settings.decode_overlap == "off":
        return Gate(always=True)
    biggest = model.buckets[-1]
    seconds = model.warmed.get(biggest)
    return Gate(seconds * 1000 / biggest if seconds else None, batch=int(settings.batch_size))


def make_decoder(settings: WorkerSettings, spec: Preprocess, gate: Gate, device: torch.device) -> Decoder:
    """``--decode``: nvImageCodec on the device with Pillow as the per-image fallback (``gpu``; ``auto`` when
    the device is CUDA and the package works), or Pillow alone: processes with ``--decode-workers N``, else
    ``--decode-threads`` threads. ``--decode gpu`` that cannot start is a startup error (``SystemExit``)."""
    limits = Limits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
    if settings.decode_workers > 0:
        cpu: Decoder = ProcessDecoder(
            spec, limits, settings.decode_workers, timeout_s=settings.decode_timeout_s, gate=gate
        )
        pillow = f"Pillow in {settings.decode_workers} processes"
    else:
        threads = settings.decode_threads or os.cpu_count() or 1
        cpu, pillow = ThreadDecoder(spec, limits, threads, gate=gate), f"Pillow on {threads} threads"
    if settings.decode == "cpu":
        log.info("decoder: cpu (%s; --decode cpu)", pillow)
        return cpu
    from .decode.gpu import GpuDecodeUnavailable, build_gpu_decoder

    try:
        sync, hw_load = settings.decode_sync == "on", settings.decode_hw_load
        decoder = build_gpu_decoder(spec, limits, cpu, device, sync=sync, hw_load=hw_load)
    except GpuDecodeUnavailable as exc:
        if settings.decode == "gpu":
            cpu.close()
            raise SystemExit(f"worker: --decode gpu: {exc}") from exc
        log.info("decoder: cpu (%s; --decode auto: %s)", pillow, exc)
        return cpu
    log.info("decoder: gpu (nvImageCodec on %s, sync %s; fallback: %s)", device, settings.decode_sync, pillow)
    return decoder


def make_fetcher(settings: WorkerSettings) -> Fetches:
    """The fetch stage for ``image_url`` jobs: urllib3 on ``--fetch-threads`` threads when ``--fetch-allow`` or
    ``--fetch-root`` is set, else ``NoFetch`` (every such job fails ``forbidden_url``)."""
    policy = FetchPolicy.parse(settings.fetch_allow, settings.fetch_root)
    if not policy.enabled:
        return NoFetch()
    from .decode.fetch import Fetcher, FetchLimits, FetchStage  # urllib3: only for a worker that fetches

    limits = FetchLimits(
        settings.max_image_bytes,
        settings.fetch_connect_timeout_s,
        settings.fetch_read_timeout_s,
        settings.fetch_timeout_s,
    )
    log.info(
        "fetching image URLs on %d threads: allow %r, file root %s",
        settings.fetch_threads,
        settings.fetch_allow,
        policy.root,
    )
    return FetchStage(Fetcher(policy, limits, pool_size=settings.fetch_threads), settings.fetch_threads)


class RedisRefused(RuntimeError):
    """Redis answers but refuses this worker's credentials (wrong password, no such user, no permission):
    a configuration error that waiting does not fix."""


def wait_for_redis(settings: WorkerSettings, stop: threading.Event) -> bool:
    """Before the model's seconds-long load: wait until some Redis of ``--redis-url`` answers PING (with capped
    back-off, one line per try; a shard that is down is picked up later, as shards are), or raise
    ``RedisRefused`` for credentials one refuses; False if stopped first."""
    backoff = Backoff()
    while not stop.is_set():
        down = [url for url in settings.redis_urls if not _answers(url)]
        if len(down) < len(settings.redis_urls):
            for url in down:
                log.warning("redis at %s unreachable at start: serving the other shards meanwhile", mask_url(url))
            return True
        delay_s = backoff.next()
        log.warning("redis unreachable (%s); retrying in %.1f s", ", ".join(map(mask_url, down)), delay_s)
        stop.wait(delay_s)
    return False


def _answers(url: str) -> bool:
    """Whether the Redis at ``url`` answers PING; ``RedisRefused`` when it refuses our credentials."""
    connection = connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        connection.ping()
        return True
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise RedisRefused(f"redis at {mask_url(url)} refuses this worker: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisRefused(f"redis at {mask_url(url)} refuses this worker: {exc}") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        connection.close()


def build_store(settings: WorkerSettings, cache: dict | None = None) -> QueueStore:
    """The Redis store for this worker's queue and name; with several URLs (shards) or queues (priorities),
    one per server and queue behind one ``ShardedStore``."""
    queues = [q.strip() for q in settings.queue.split(",") if q.strip()]  # by priority: --queue high,default
    stores: list[RedisStore] = []
    levels: list[int] = []
    for url in settings.redis_urls:
        connection = connect(url, health_check_interval=30, **store_timeouts(settings.idle_wait_ms))
        for level, queue in enumerate(queues):
            stores.append(
                RedisStore(
                    connection,
                    queue,
                    settings.worker_name,
                    worker_ttl_s=settings.worker_ttl_s,
                    max_deliveries=settings.max_deliveries,
                    results_maxlen=settings.results_maxlen,
                    max_data_bytes=settings.max_image_bytes + (1 << 20),
                    queues=queues,
                    primary=level == 0,
                    cache=cache,
                    # a worker starting may be starting just after an outage (ReapAfterOutage); not a --burst one,
                    # which may be done within a TTL: the only reaper of a fleet of batch runs
                    reap_deferred=not settings.burst,
                )
            )
            levels.append(level)
    if len(stores) == 1:
        return stores[0]
    return ShardedStore(
        stores,
        block_s=settings.idle_wait_ms / 1000,
        levels=levels,
        finish_backoff_max_s=finish_backoff_max(settings.worker_ttl_s),
    )


def start_probes(settings: WorkerSettings, health: Health) -> list[ProbeServer]:
    """``/healthz`` and ``/readyz`` (and ``/metrics``) on the metrics port and on ``--health-port``."""
    ports = dict.fromkeys(p for p in (settings.metrics_port, settings.health_port) if p)
    return [ProbeServer(port, health) for port in ports]


def run(settings: WorkerSettings, stop: threading.Event, reload_requests: threading.Event | None = None) -> int:
    """Load and warm the model, register, then run the pipeline until ``stop``; return the jobs finished.

    The probes answer from the start (``/readyz`` is 503 until the model is warm and Redis answers);
    a watchdog ends the process if the pipeline stops making progress with jobs in hand."""
    health = Health(redis_ttl_s=settings.worker_ttl_s)
    probes = start_probes(settings, health)
    try:
        if not wait_for_redis(settings, stop):
            return 0
        if reload_requests is not None:
            reload_requests.clear()  # asked before the file is read: this load answers it
        loading = time.perf_counter()  # the warm-up metric: the model's load and warm-up, not a wait for Redis
        identity = file_identity(settings.model)  # before the load: a flip during start-up is seen at the first poll
        auto = settings.precision == "auto"
        model, settings = prepare_model(settings)
        health.warmed = True
        metrics = start_metrics(settings, health, time.perf_counter() - loading)
        if metrics is not None:
            metrics.serving(model.info.tag)
        gate = make_gate(settings, model)
        decoder = make_decoder(settings, model.info.preprocess, gate, model.device)
        store = build_store(settings, announcement(settings, model.info.tag, decoder.backend))
        if not register(store, stop, decoder):
            return 0
        health.redis_answered()
        predictor = Predictor(model, int(settings.batch_size), settings.topk, gate)
        del model  # the predictor holds it: a swap frees the first version (device memory held twice otherwise)
        reloader = Reloader(
            settings.model,
            predictor,
            lambda path: load_warm(settings, path, predictor.cap, auto),
            identity=identity,
            watch_s=settings.model_watch_s,
            wanted=reload_requests,
            turn=ReloadTurn(settings.reload_lock),
            on_swap=lambda tag: swapped(tag, store, settings, decoder.backend, metrics),
            on_refuse=lambda: metrics is None or metrics.reloads.labels("refused").inc(),
        )
        reloader.start()
        try:
            return serve(
                settings, stop, store=store, decoder=decoder, predictor=predictor, health=health, metrics=metrics
            )
        finally:
            reloader.stop()
            reloader.join(RELOADER_JOIN_S)  # a thread left to the interpreter's exit aborted it at times (-6)
    finally:
        for server in probes:
            server.close()


def serve(
    settings: WorkerSettings,
    stop: threading.Event,
    *,
    store: QueueStore,
    decoder: Decoder,
    predictor: Predictor,
    health: Health,
    metrics: Metrics | None,
) -> int:
    """Run the pipeline, with its heartbeat and watchdog, until ``stop``; unregister; return the jobs finished."""
    hand, stats = InHand(), Stats()
    pipeline_settings = pipeline_settings_for(settings)
    pipeline = Pipeline(
        store,
        decoder,
        predictor,
        pipeline_settings,
        stop,
        hand=hand,
        stats=stats,
        observer=metrics,
        health=health,
        fetcher=make_fetcher(settings),
        tracing=Tracing.from_environment(),
    )
    reap_s = min(5.0, settings.worker_ttl_s / 2)
    heartbeat = Heartbeat(store, hand, stats, settings.worker_ttl_s, reap_s=reap_s, metrics=metrics, health=health)
    watchdog = Watchdog(health, hand.count, settings.stall_timeout_s, on_stall=lambda: _die(heartbeat, store))
    heartbeat.start()
    watchdog.start()
    log.info("worker %s listening on queue=%s", settings.worker_name, settings.queue)
    # what start-up made (torch's modules, the model, the scripts) lives as long as the process: out of the
    # cyclic collector's sight, so its full passes while serving walk only the objects jobs make
    gc.collect()
    gc.freeze()
    processed = 0
    try:
        processed = pipeline.run()
    finally:
        watchdog.stop()
        heartbeat.stop()
        watchdog.join(5.0)  # as the reloader: no thread left running into the interpreter's exit
        if pipeline.unstarted and not pipeline.unrecorded:  # jobs handed back unstarted; no take is in flight now
            with contextlib.suppress(StoreUnavailable):
                store.give_back(hand.snapshot(), min_age_s=0.0)
        with contextlib.suppress(StoreUnavailable):
            store.unregister()
        log.info("worker %s stopped after %d jobs", settings.worker_name, processed)
    return processed


def _die(heartbeat: Heartbeat, store: QueueStore) -> None:
    """A wedged worker's last acts: stop beating, register the death (the reaper re-queues at once)."""
    heartbeat.stopping.set()
    with contextlib.suppress(StoreUnavailable):
        store.unregister()

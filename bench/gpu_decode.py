"""Feeding the GPU: decoder capacity (Pillow on every core, nvImageCodec on the device), the model alone, and
end to end with ``--decode cpu`` and ``--decode gpu``, with the Redis server's CPU per job, in one run.

``python -m bench.gpu_decode [--device cuda] [--jobs 8000] [--pairs 2] [--write]``

- decoder alone: ``bench.decode_capacity`` (a process pool, one process per core, Pillow with draft) vs our
  ``GpuDecoder`` (header read, one nvImageCodec call per batch, orient/resize/crop on the device), fed all
  at once, with and without the stream synchronisation; on the shared photos and on phone-sized JPEGs;
- the model alone: EfficientNet-Lite0 at the end-to-end batch size (``Classifier.logits`` on uint8 batches);
- end to end: our worker draining pre-queued jobs with each decoder; efficiency = images/s over
  min(that decoder's capacity, the model's); Redis CPU per job from ``INFO cpu`` deltas (enqueue + worker);
- ``--pairs N``: N independent Redis + worker pairs on the one GPU at once (no sharding yet): their combined
  rate over one window.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import redis

from producer import Producer

from .common import ROOT, ensure_model, exit_on_sigterm, photos, pythonpath, report, table
from .decode_capacity import capacity as cpu_capacity
from .decode_capacity import phone_photos
from .devserver import RedisServer, find_redis_server
from .drain import Drain, drain, ended_times, rate_from_end_times, redis_cpu_s, worker_args


def gpu_capacity(payloads: Sequence[bytes], device: str, sync: bool, images: int = 4000, hw_load: float = 1.0) -> float:
    """Images/s of the GPU decoder alone: ``images`` submitted at once (after one warm pass), all done."""
    from worker.decode.cpu import Limits, Preprocess
    from worker.decode.gpu import build_gpu_decoder
    from worker.decode.pool import ThreadDecoder

    spec, limits = Preprocess(size=(224, 224)), Limits()
    fallback = ThreadDecoder(spec, limits, os.cpu_count() or 1)
    decoder = build_gpu_decoder(spec, limits, fallback, device, sync=sync, hw_load=hw_load)
    try:
        for count in (len(payloads) * 4, images):  # a warm pass, then the timed one
            countdown = Countdown(count)
            start = time.perf_counter()
            for i in range(count):
                decoder.submit(payloads[i % len(payloads)], countdown.done)
            countdown.wait(600)
            elapsed = time.perf_counter() - start
    finally:
        decoder.close()
    return images / elapsed


class Countdown:
    """Set once ``done`` was called ``count`` times (from any thread)."""

    def __init__(self, count: int) -> None:
        self.left, self.lock, self.event = count, threading.Lock(), threading.Event()

    def done(self, _: object) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.event.set()

    def wait(self, timeout_s: float) -> None:
        if not self.event.wait(timeout_s):
            raise TimeoutError(f"{self.left} images not decoded after {timeout_s} s")


def model_capacity(model_path: str, device: str, batch: int) -> float:
    """Images/s of the model alone on prepared uint8 batches of ``batch``."""
    from worker.model import load_model
    from worker.perf import time_buckets

    model = load_model(model_path, device, batch, optimize="auto")
    model.warm_up(rounds=1)
    return time_buckets(model, [batch], budget_s=1.0)[0].images_per_s


def side_by_side(
    urls: list[str], model: str, payloads: list[bytes], args: argparse.Namespace, decode: str
) -> tuple[float, list[float], float]:
    """Independent Redis + worker pairs draining at once: images/s of all together (every pair's completions
    in one window), each pair's alone, and Redis CPU µs per job (per server)."""
    conns = [redis.Redis.from_url(u) for u in urls]
    ids, cpu = [], []
    for url, conn in zip(urls, conns, strict=False):
        conn.flushdb()
        cpu.append(redis_cpu_s(conn))
        ids.append(Producer(url).enqueue_many(payloads))
    extra = ["--decode", decode, "--max-wait-ms", "5"]
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *worker_args("ours", u, model, args.batch, args.device, extra)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for u in urls
    ]
    for proc in procs:
        proc.wait(timeout=600)
    ended = [ended_times(c, i)[0] for c, i in zip(conns, ids, strict=False)]
    used = sum(redis_cpu_s(c) - before for c, before in zip(conns, cpu, strict=False)) / len(urls)
    together = rate_from_end_times([e for each in ended for e in each])  # all pairs' completions, one window
    return together, [rate_from_end_times(e) for e in ended], used * 1e6 / len(payloads)


def _e2e_row(
    name: str, decode: str, servers: int, run: Drain | None, rate: float, cap: float, us_per_job: float
) -> list[object]:
    jobs = f"{run.ok}/{run.jobs}" if run else "-"
    per_core = 1e6 / us_per_job if us_per_job > 0 else float("nan")
    return [name, decode, servers, jobs, rate, rate / cap, us_per_job, per_core]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128, help="the worker's --batch-size and the model's batch")
    parser.add_argument("--jobs", type=int, default=8000, help="jobs per end-to-end drain (phone photos: half)")
    parser.add_argument("--gpu-images", type=int, default=4000, help="images per GPU-decoder capacity run")
    parser.add_argument("--sets", default="photos,phone", help="payload sets: photos, phone")
    parser.add_argument("--pairs", type=int, default=2, help="also run this many Redis + worker pairs (0: skip)")
    parser.add_argument(
        "--workers-per-device",
        default="",
        help="also drain the photos with K worker processes on the one device, for each K listed (e.g. 2,4)",
    )
    parser.add_argument(
        "--hw-loads",
        default="",
        help="also the decoder alone with these hardware-engine load hints (--decode-hw-load), e.g. 0.75,0.5",
    )
    parser.add_argument("--write", action="store_true")
    return parser


def main() -> None:
    exit_on_sigterm()
    args = build_parser().parse_args()
    cuda = args.device.startswith("cuda")
    sets = {"photos": photos(), "phone": phone_photos()}
    sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    model = str(ensure_model("lite0"))
    cap_rows, caps = [], {}
    for name, payloads in sets.items():
        kb = sum(map(len, payloads)) / len(payloads) / 1024
        caps[name, "cpu"] = cpu_capacity(payloads, (224, 224))
        cap_rows.append([name, f"{kb:.0f}", f"Pillow, {os.cpu_count()} processes", caps[name, "cpu"]])
        for sync in (True, False) if cuda else ():
            rate = gpu_capacity(payloads, args.device, sync, args.gpu_images)
            if sync:  # the worker's default
                caps[name, "gpu"] = rate
            cap_rows.append([name, f"{kb:.0f}", f"nvImageCodec GpuDecoder, sync {'on' if sync else 'off'}", rate])
        for load in [float(x) for x in args.hw_loads.split(",") if x] if cuda else []:
            rate = gpu_capacity(payloads, args.device, True, args.gpu_images, hw_load=load)
            cap_rows.append([name, f"{kb:.0f}", f"nvImageCodec GpuDecoder, sync on, hw load {load:g}", rate])
        print(table(["payloads", "mean KB", "decoder", "images/s"], cap_rows[-3:]), flush=True)
    forward = model_capacity(model, args.device, args.batch)
    print(f"model alone: {forward:.0f} images/s at batch {args.batch}", flush=True)
    rows = e2e_rows(sets, model, caps, forward, args, cuda)
    body = "\n\n".join(
        [
            "Decoder alone (224 x 224 output; GPU: header read, decode, EXIF, resize, crop on the device):",
            table(["payloads", "mean KB", "decoder", "images/s"], cap_rows),
            f"Model alone: efficientnet-lite0 at batch {args.batch}: **{forward:.0f} images/s**.",
            "End to end (jobs already queued, our worker, EfficientNet-Lite0; efficiency = images/s / min(decoder, "
            "model); Redis CPU = the server's user + sys CPU per job, enqueue and worker):",
            table(
                [
                    "payloads",
                    "decode",
                    "Redis servers",
                    "ok/jobs",
                    "images/s",
                    "efficiency",
                    "Redis CPU µs/job",
                    "jobs/s per Redis core",
                ],
                rows,
            ),
        ]
    )
    report(f"gpu-decode-{args.device.split(':')[0]}", f"Feeding the GPU on {args.device}", body, args.write)


def processes_rows(
    url: str, model: str, sets: dict[str, list[bytes]], caps: dict, forward: float, args: argparse.Namespace, cuda: bool
) -> list[list[object]]:
    """The photos drained by K worker processes on the one device and one Redis (``--workers-per-device K``);
    efficiency against min(K x one process's decoder capacity, the model alone)."""
    rows: list[list[object]] = []
    counts = [int(k) for k in args.workers_per_device.split(",") if k.strip() and int(k) > 1]
    if not counts or "photos" not in sets:
        return rows
    decode = "gpu" if cuda else "cpu"
    payloads = [sets["photos"][i % len(sets["photos"])] for i in range(args.jobs)]
    for k in counts:
        extra = ["--decode", decode, "--workers-per-device", str(k)]
        run = drain("ours", url, model, payloads, batch=args.batch, device=args.device, extra=extra)
        cap = min(caps["photos", decode] * k, forward)
        rows.append(
            _e2e_row(f"photos, {k} worker processes", decode, 1, run, run.images_per_s, cap, run.redis_us_per_job)
        )
        print(
            table(["payloads", "decode", "servers", "ok/jobs", "images/s", "efficiency", "µs/job", "/core"], rows[-1:]),
            flush=True,
        )
    return rows


def e2e_rows(
    sets: dict[str, list[bytes]], model: str, caps: dict, forward: float, args: argparse.Namespace, cuda: bool
) -> list[list[object]]:
    """End-to-end drains with each decoder (one Redis), then ``--pairs`` Redis + worker pairs with the GPU one."""
    rows = []
    servers = [RedisServer(binary=find_redis_server(prefer_embedded=False)).start() for _ in range(max(1, args.pairs))]
    try:
        url = servers[0].url
        for name, sources in sets.items():
            jobs = args.jobs if name == "photos" else args.jobs // 2
            payloads = [sources[i % len(sources)] for i in range(jobs)]
            for decode in ("cpu", "gpu") if cuda else ("cpu",):
                run = drain(
                    "ours", url, model, payloads, batch=args.batch, device=args.device, extra=["--decode", decode]
                )
                cap = min(caps[name, decode], forward)
                rows.append(_e2e_row(name, decode, 1, run, run.images_per_s, cap, run.redis_us_per_job))
                print(
                    table(
                        ["payloads", "decode", "servers", "ok/jobs", "images/s", "efficiency", "µs/job", "/core"],
                        rows[-1:],
                    ),
                    flush=True,
                )
        rows += processes_rows(url, model, sets, caps, forward, args, cuda)
        if args.pairs > 1 and "photos" in sets:
            decode = "gpu" if cuda else "cpu"
            payloads = [sets["photos"][i % len(sets["photos"])] for i in range(args.jobs)]
            total, each, us = side_by_side([s.url for s in servers], model, payloads, args, decode)
            cap = min(caps["photos", decode] * args.pairs, forward)  # a decoder per worker, one model's GPU
            rows.append(
                _e2e_row(
                    f"photos (rates: {', '.join(f'{r:.0f}' for r in each)})", decode, args.pairs, None, total, cap, us
                )
            )
    finally:
        for server in servers:
            server.stop()
    return rows


if __name__ == "__main__":
    main()

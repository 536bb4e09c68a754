"""The per-process ceiling on a simulated H200: the real worker pipeline, the device replaced by GIL-free waits.

``python -m bench.simdevice [--jobs 4000] [--repeats 3] [--before REF] [--write]``

Real: a ``redis-server`` (``bench.devserver``), this checkout's producer filling the queue with real photos
(examples/images, ~96 KB, each made unique by a JPEG comment so that no batch de-duplicates them), and the
worker's own wiring run by ``bench/simrun.py`` in a child process: store, take, the GPU decoder's thread
(Pillow header read per image, routing, ``prepare``), batcher, infer stage, finish, heartbeat. Simulated: the
nvImageCodec call and the forward pass, which only wait (``time.sleep`` releases the GIL, as a CUDA wait
does). With ``--before REF`` the same child runs from a git worktree of REF (``bench.ab.worktree``;
``PYTHONPATH`` = that tree), alternating with this checkout, on the same Redis and jobs; the ratio of the
medians is the verdict. The queue is refilled before every run.

Calibration (BENCHMARKS.md, the H200 sections; docs/performance.md has the reasoning):

- forward pass of a padded batch of B: ``bench:roofline-cuda``, efficientnet-lite0 rows (2026-11-28,
  ``Classifier.logits`` on uint8 batches, fp32): 1.79, 1.88, 2.24, 2.26, 2.29, 3.77, 7.23, 13.5, 26.2 ms for
  B = 1 ... 256, linear in between (cross-check: ``bench:gpu-decode-cuda``, "model alone" 9,731 img/s at 128
  = 13.15 ms; ``bench:practices-cuda`` 13.44 ms);
- one decode call of n images: ``DECODE_FIXED_MS + n * DECODE_PER_IMAGE_MS`` = 3.1 + 0.078 n ms: the device's
  share only; the host's share (Pillow header read per image, routing, ``prepare``'s tensor calls, callbacks)
  runs for real. ``python -m bench.simcalib`` derives it: the H200's decoder alone (``bench:gpu-decode-cuda``:
  4,780 img/s on the photos, stream synchronised, calls of 128) = 26.8 ms a call, less the host work the same
  ``GpuDecoder`` does here with a free device (~105 µs an image: 13.4 ms) leaves 13.1 ms of device per 128;
  the latency run at 25% load (``bench:latency-gpudecode-cuda``: decode p50 3.48 ms for calls of ~2 images)
  leaves 3.27 ms per 2. The line through both: 3.1 ms a call + 0.078 ms an image. The H200's Xeon and this
  box do the same host work at the same speed per core as far as one row measured on both shows (Pillow
  decode capacity per process: 225 img/s there, 222 here). Host work the real decode call does that the
  simulation does not (nvImageCodec's ``CodeStream`` parse, ``torch.as_tensor`` per image) is folded into
  the wait, so it is GIL-free here: optimistic for the decode thread.

Not simulated: the GPU shared by decode and forward (here they never slow each other), the hardware JPEG
engines shared by several processes (each child here has its own), pinned copies, and CUDA launches beyond
what a tiny CPU tensor op costs. The figures are this machine's Python (Redis on the same cores) with the
H200's device times; one process's ceiling with a free device is min(128 / 13.1 ms, 128 / 13.5 ms) = 9,500
img/s, so what the table shows below that is the worker's own Python.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from producer import Producer

from .ab import head_label, worktree
from .common import OUT, ROOT, commands_total, photos, report, table
from .devserver import RedisServer, find_redis_server
from .drain import redis_cpu_s

FORWARD_MS = {1: 1.79, 2: 1.88, 4: 2.24, 8: 2.26, 16: 2.29, 32: 3.77, 64: 7.23, 128: 13.5, 256: 26.2}
DECODE_FIXED_MS = 3.1
DECODE_PER_IMAGE_MS = 0.078
CHILD = ROOT / "bench" / "simrun.py"
LAUNCH = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
BINS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HEADERS = [
    "run",
    "code",
    "img/s (median)",
    "each run",
    "x before",
    "decode call (mean images)",
    "forward batch (mean)",
    "worker CPU µs/image",
    "1e6 / CPU (img/s)",
    "Redis CPU µs/job",
    "Redis commands/job",
]


def unique_photos(count: int, exif: bool = False) -> list[bytes]:
    """``count`` JPEGs cycling through the shared photos, each with its own COM segment after SOI (same pixels,
    same header route, distinct bytes: distinct SHA-256, so no batch runs a photo once for several jobs); with
    ``exif``, a phone camera's EXIF block too (the shared photos carry none; uploads from phones do)."""
    sources, block = photos(), phone_exif() if exif else b""
    out = []
    for i in range(count):
        data, note = sources[i % len(sources)], f"simdevice {i}".encode()
        out.append(data[:2] + block + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:])
    return out


def phone_exif() -> bytes:
    """An APP1 EXIF segment as a phone writes one: IFD0 with the camera, orientation (upright), resolution,
    software and time (Pillow's writer: big-endian, as many cameras write it)."""
    from PIL import Image

    exif = Image.Exif()
    tags = {0x010F: "Google", 0x0110: "Pixel 7", 0x0112: 1, 0x011A: 72.0, 0x011B: 72.0, 0x0128: 2}
    tags |= {0x0131: "HDR+ 1.0.540104767zd", 0x0132: "2026:11:30 14:02:11", 0x0213: 1}
    for tag, value in tags.items():
        exif[tag] = value
    payload = exif.tobytes()  # with its "Exif\0\0" header
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def run_once(tree: Path, url: str, payloads: list[bytes], args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Fill the queue, run one child from ``tree`` until it is empty; its JSON plus Redis's CPU and commands."""
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    Producer(url).enqueue_many(payloads)
    out = OUT / "simdevice" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cpu, commands = redis_cpu_s(conn), commands_total(conn)
    path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-c", LAUNCH, str(CHILD), "--url", url, "--jobs", str(len(payloads))]
    if args.profile:  # py-spy's GIL-holder samples of the child (raw stacks; read with bench.spystacks)
        raw = OUT / "simdevice" / f"{tag}.raw"
        cmd = ["py-spy", "record", "--gil", "--rate", "1000", "--format", "raw", "-o", str(raw), "--", *cmd]
    cmd += ["--batch", str(args.batch), "--max-wait-ms", str(args.max_wait_ms), "--forward-ms", json.dumps(FORWARD_MS)]
    cmd += ["--decode-fixed-ms", str(args.decode_fixed_ms), "--decode-per-image-ms", str(args.decode_per_image_ms)]
    cmd += ["--worker-args", args.worker_args, "--out", str(out)]
    subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": path}, check=True, timeout=900)
    result = json.loads(out.read_text())
    result["redis_us_per_job"] = (redis_cpu_s(conn) - cpu) * 1e6 / len(payloads)
    result["commands_per_job"] = (commands_total(conn) - commands - 2) / len(payloads)
    print(f"  {tag}: {result['images_per_s']:.0f} img/s, {result['ok']}/{len(payloads)} ok", flush=True)
    return result


def histogram(counts: dict[str, int]) -> str:
    """Counts by size in power-of-two bins: ``1: 3, 2-3: 10, ... 128: 31`` (sizes as the bins' lower bounds)."""
    binned: dict[int, int] = {}
    for size, n in counts.items():
        low = max(b for b in BINS if b <= int(size))
        binned[low] = binned.get(low, 0) + n
    parts = []
    for low in sorted(binned):
        high = BINS[BINS.index(low) + 1] - 1 if low != BINS[-1] else low
        parts.append(f"{low if high == low else f'{low}-{high}'}: {binned[low]}")
    return ", ".join(parts)


def mean_size(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    return sum(int(k) * v for k, v in counts.items()) / total if total else float("nan")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]


def redis_costs(run: dict[str, Any]) -> list[float]:
    return [run["redis_us_per_job"], run["commands_per_job"]]


def summary_rows(arms: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> list[list[object]]:
    base = median_run(arms["before"])["images_per_s"] if "before" in arms else None
    rows = []
    for arm, runs in arms.items():
        m = median_run(runs)
        each = ", ".join(f"{r['images_per_s']:.0f}" for r in runs)
        ratio = m["images_per_s"] / base if base else ""
        calls, batches = m["decode_calls"], m["forward_batches"]
        cpu = sum(m["cpu_us_per_image"].values())
        sizes = [mean_size(calls), mean_size(batches)]
        rows.append([arm, labels[arm], m["images_per_s"], each, ratio, *sizes, cpu, 1e6 / cpu, *redis_costs(m)])
    return rows


def thread_rows(arms: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[list[object]]]:
    """Per-thread CPU µs per image, the median over each arm's runs."""
    names = sorted({n for runs in arms.values() for r in runs for n in r["cpu_us_per_image"]})
    rows = []
    for name in names:
        cells = [statistics.median(r["cpu_us_per_image"].get(name, 0.0) for r in runs) for runs in arms.values()]
        if max(cells) >= 0.5:
            rows.append([name, *cells])
    return ["thread", *(f"{arm}: CPU µs/image" for arm in arms)], rows


def render(arms: dict[str, list[dict[str, Any]]], labels: dict[str, str], args: argparse.Namespace) -> str:
    parts = [table(HEADERS, summary_rows(arms, labels))]
    parts.append(table(*thread_rows(arms)))
    hist = []
    for arm, runs in arms.items():
        m = median_run(runs)
        hist.append([arm, histogram(m["decode_calls"]), histogram(m["forward_batches"])])
    parts.append(table(["run", "decode calls by images per call", "forward batches by size"], hist))
    notes = [
        f"{args.jobs} jobs of real photos (~96 KB, unique bytes{', phone EXIF' if args.exif else ''}) queued before "
        "each run; worker --batch-size "
        f"{args.batch} --max-wait-ms {args.max_wait_ms:g} {args.worker_args}".rstrip()
        + f"; {args.repeats} alternating rounds; rate after the first finished batch.",
        f"Device: decode call {args.decode_fixed_ms:g} + {args.decode_per_image_ms:g} ms/image, forward "
        "per padded batch from the H200 roofline rows (efficientnet-lite0); both GIL-free sleeps. "
        "CPU from /proc/self/task/*/schedstat over the measured window (1e6 / CPU: the rate if the process's "
        "threads had one core to themselves, steadier than img/s on a shared box); calibration: "
        "bench/simdevice.py, bench/simcalib.py.",
    ]
    if "before" in arms:
        a, b = arms["after"], arms["before"]
        pairs = ", ".join(f"{x['images_per_s'] / y['images_per_s']:.2f}" for x, y in zip(a, b, strict=False))
        ratio = median_run(a)["images_per_s"] / median_run(b)["images_per_s"]
        cpu = [sum(median_run(r)["cpu_us_per_image"].values()) for r in (b, a)]
        verdict = f"after / before = **{ratio:.2f}x** (each round: {pairs})"
        notes.insert(0, f"{verdict}; worker CPU per image after / before = {cpu[1] / cpu[0]:.2f}x")
    return "\n\n".join([*parts, "\n".join(f"- {n}" for n in notes)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="the worker's --batch-size (the H200 runs': 128)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--before", help="also run this commit (a ref or hash), alternating, and print the ratio")
    parser.add_argument("--before-tree", type=Path, help="that commit's files, already checked out")
    parser.add_argument("--after-label", help="how to name this checkout (default: git's HEAD)")
    parser.add_argument("--decode-fixed-ms", type=float, default=DECODE_FIXED_MS)
    parser.add_argument("--decode-per-image-ms", type=float, default=DECODE_PER_IMAGE_MS)
    parser.add_argument("--worker-args", default="", help="more worker flags for both sides, e.g. '--cache-ttl-s 0'")
    parser.add_argument("--exif", action="store_true", help="a phone camera's EXIF block in every photo")
    parser.add_argument("--profile", action="store_true", help="run each child under py-spy (--gil); raw stacks")
    parser.add_argument("--write", action="store_true", help="record the tables in BENCHMARKS.md")
    args = parser.parse_args(argv)
    trees, labels = {"after": ROOT}, {"after": args.after_label or head_label()}
    if args.before:
        before, sha = (args.before_tree.resolve(), args.before) if args.before_tree else worktree(args.before)
        trees, labels = {"before": before, **trees}, {"before": sha, **labels}
    payloads = unique_photos(args.jobs, args.exif)
    arms: dict[str, list[dict[str, Any]]] = {arm: [] for arm in trees}
    with RedisServer(find_redis_server()) as server:
        for round_ in range(args.repeats):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for arm in order:
                arms[arm].append(run_once(trees[arm], server.url, payloads, args, f"{arm}-{round_}"))
    title = "Simulated H200, one worker process" + (f": {labels['before']} vs {labels['after']}" if args.before else "")
    report("simdevice", title, render(arms, labels, args), args.write)


if __name__ == "__main__":
    main()

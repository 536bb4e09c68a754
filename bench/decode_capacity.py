"""Decode capacity: how many JPEGs per second this machine's cores can decode and resize with Pillow alone.

Independent of our code: a ``multiprocessing`` pool (spawn) of ``os.cpu_count()`` processes, each doing
open -> draft (JPEG) -> RGB -> shorter side to round(H / 0.875) bilinear -> centre crop H x W -> ``tobytes()``.
The payloads are handed to each process once, at start, so the figure is decode work and not IPC. This is the
ceiling any CPU-decoding server (ours, LitServe, ...) can reach on the machine, whatever its model costs.

``python -m bench.decode_capacity`` prints the table for the shared photos and for phone-sized versions of them.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import time
from collections.abc import Sequence

from PIL import Image

from .common import photos, table

CROP_RATIO = 0.875  # shorter side to round(H / 0.875) before the centre crop: 256 for 224
PHONE_LONG_SIDE = 1600
PHONE_QUALITY = 85

_payloads: Sequence[bytes] = ()  # each pool process's copy, set by _init


def prepare(data: bytes, size: tuple[int, int] = (224, 224)) -> bytes:
    """One image: open, draft (JPEG), RGB, shorter side to round(H / 0.875) bilinear, centre crop H x W, raw RGB."""
    height, width = size
    short = round(height / CROP_RATIO)
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (short, short))
    img = img.convert("RGB")
    w, h = img.size
    scale = short / min(w, h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height)).tobytes()


def _init(payloads: Sequence[bytes]) -> None:
    global _payloads
    _payloads = payloads


def _work(task: tuple[int, tuple[int, int]]) -> int:
    index, size = task
    return len(prepare(_payloads[index], size))


def capacity(
    payloads: Sequence[bytes], size: tuple[int, int] = (224, 224), processes: int | None = None, repeats: int = 30
) -> float:
    """Images/s that ``processes`` (default: all cores) Pillow processes reach on ``payloads`` x ``repeats``.

    The pool is warmed first (every process started and through every payload once), then the fixed set of
    ``len(payloads) * repeats`` images is timed.
    """
    if not payloads:
        raise ValueError("no payloads")
    processes = processes or os.cpu_count() or 1
    size = (int(size[0]), int(size[1]))
    tasks = [(i, size) for _ in range(repeats) for i in range(len(payloads))]
    warm = [(i, size) for _ in range(processes) for i in range(len(payloads))]
    chunk = max(1, len(tasks) // (processes * 8))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes, initializer=_init, initargs=(list(payloads),)) as pool:
        pool.map(_work, warm, chunksize=1)
        start = time.perf_counter()
        pool.map(_work, tasks, chunksize=chunk)
        elapsed = time.perf_counter() - start
    return len(tasks) / elapsed


def phone_photos() -> list[bytes]:
    """The shared photos upscaled so the long side is 1600 px, JPEG quality 85: phone-camera-sized uploads."""
    return list(_phone_photos())


@functools.lru_cache(maxsize=1)
def _phone_photos() -> tuple[bytes, ...]:
    out = []
    for data in photos():
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = PHONE_LONG_SIDE / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=PHONE_QUALITY)
        out.append(buf.getvalue())
    return tuple(out)


def rows(sets: dict[str, Sequence[bytes]], size: tuple[int, int] = (224, 224)) -> list[list[object]]:
    """One row per payload set and process count (1, all cores): images/s and images/s per process."""
    cores = os.cpu_count() or 1
    out: list[list[object]] = []
    for name, payloads in sets.items():
        kb = sum(len(p) for p in payloads) / len(payloads) / 1024
        for processes in sorted({1, cores}):
            rate = capacity(payloads, size, processes)
            out.append([name, f"{kb:.0f}", processes, rate, rate / processes])
    return out


def main() -> None:
    """Print the decode-capacity table for the 9 shared photos (and their phone-sized versions) at 224 px."""
    phone = f"phone photos ({PHONE_LONG_SIDE} px, q{PHONE_QUALITY})"
    sets = {"photos (examples/images)": photos(), phone: phone_photos()}
    headers = ["payloads", "mean KB", "processes", "images/s", "images/s per process"]
    print(f"\n## Pillow decode capacity (224 x 224, {os.cpu_count()} cores)\n")
    print(table(headers, rows(sets)), flush=True)


if __name__ == "__main__":
    main()

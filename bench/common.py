"""Shared helpers for the benchmarks: tables, BENCHMARKS.md sections, machine facts, Redis and models."""

from __future__ import annotations

import io
import math
import os
import platform
import re
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BENCHMARKS = ROOT / "BENCHMARKS.md"
PHOTOS = (
    "astronaut.jpg",
    "cat.jpg",
    "china.jpg",
    "coffee.jpg",
    "flower.jpg",
    "grace_hopper.jpg",
    "motorcycle.jpg",
    "rocket.jpg",
    "retina_large.jpg",
)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; floats get sensible precision."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine: CPU, cores, GPU, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers in BENCHMARKS.md."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"<!-- bench:{name} -->\n_{stamp}; {machine()}_\n\n{body.strip()}\n<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def report(name: str, title: str, body: str, write: bool) -> None:
    """Print a result table, and record it in BENCHMARKS.md when ``write``."""
    print(f"\n## {title}\n\n{body}\n", flush=True)
    if write:
        write_section(name, body)


def commands_total(conn: redis.Redis) -> int:
    """Commands the server has run (sum of INFO commandstats calls)."""
    stats = conn.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def photos() -> list[bytes]:
    """The real photos in examples/images."""
    return [(ROOT / "examples" / "images" / name).read_bytes() for name in PHOTOS]


def unique_payloads(sources: list[bytes], count: int, tag: str = "bench") -> list[bytes]:
    """``count`` jobs cycling through ``sources``, each made distinct by a JPEG comment after SOI (same pixels,
    same decode): our worker runs a photo repeated within a batch once, which a peer never does, so a repeated
    input would measure less work for ours than for the peer."""
    return [with_note(sources[i % len(sources)], f"{tag} {i}") for i in range(count)]


def with_note(jpeg: bytes, note: str) -> bytes:
    """``jpeg`` with a comment segment (COM) after SOI: other bytes, the same pixels."""
    text = note.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def small_jpegs(count: int = 8, size: int = 48) -> list[bytes]:
    """Small JPEGs (``size`` px) made from the photos: the overhead regime's inputs."""
    from PIL import Image

    out = []
    for data in photos()[:count]:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def ensure_model(kind: str) -> Path:
    """``tiny`` (the test CNN, 32x32), ``pool224`` (pool + linear at 224 px: nearly free) or ``lite0`` (the demo
    EfficientNet-Lite0), exported under bench/out."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{kind}.pt"
    if path.exists():
        return path
    args = ["export", "--out", str(path)]
    if kind == "lite0":
        args.append("--demo")
    elif kind == "pool224":
        args += ["--factory", "tests.tinymodels:pool_linear", "--name", "pool224", "--size", "224", "224"]
    else:
        args += ["--factory", "tests.tinymodels:tiny_cnn", "--name", "tiny", "--size", "32", "32"]
        args += ["--resize", "stretch"]
    subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def pythonpath() -> str:
    """PYTHONPATH for child processes: the repository first, then whatever the parent had (carried wheels)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def import_sections(source: Path, suffix: str, target: Path = BENCHMARKS) -> list[str]:
    """Copy every ``<!-- bench:*suffix -->`` section of ``source`` (e.g. a GPU run's BENCHMARKS.md) into ``target``."""
    pattern = re.compile(r"<!-- bench:([\w-]+) -->\n(.*?)<!-- /bench:\1 -->", re.S)
    names = []
    text = target.read_text() if target.exists() else "# Benchmarks\n"
    for match in pattern.finditer(source.read_text()):
        name = match.group(1)
        if not name.endswith(suffix):
            continue
        block = match.group(0)
        mine = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
        text = mine.sub(lambda _, b=block: b, text) if mine.search(text) else text.rstrip() + "\n\n" + block + "\n"
        names.append(name)
    target.write_text(text)
    return names


if __name__ == "__main__":
    print(import_sections(Path(sys.argv[1]), sys.argv[2]))


def exit_on_sigterm() -> None:
    """A SIGTERM (``timeout`` ending a step of bench/gpu.sh) as ``SystemExit``: the ``finally`` blocks run, so the
    servers and workers this benchmark started (LitServe's process group, a worker) stop with it."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

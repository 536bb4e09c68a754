"""The worker's per-job pieces one by one, on this checkout: CPU µs per job of each, and of cheaper variants.

``python -m bench.jobparts [--repeats 5]``

Each piece runs alone in one thread (``time.thread_time``), many times, ``--repeats`` times; the median is
printed, with the spread. Inputs: a 48-px JPEG of the overhead regime (~1.5 KB) and a ~96 KB photo.
Store pieces run on a real Redis (``bench.devserver``) with 64 queued jobs per take, as ``--batch-size 64``
does. Used by docs/performance.md to price what each commit added (the pixel budget's second header read,
the SHA-256, the separate field read, the cache entry) and what the proposals there would save.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import redis

from producer import Producer

from .common import photos, small_jpegs, table
from .devserver import RedisServer, find_redis_server

BATCH = 64
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15; not DHT, JPG, DAC
INLINE = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end return out"


def cost_us(fn: Callable[[], object], per_call: int, repeats: int, seconds: float = 0.2) -> tuple[float, str]:
    """Median CPU µs per job of ``fn`` (which handles ``per_call`` jobs), and the repeats' range."""
    fn()
    start, calls = time.thread_time(), 0
    while time.thread_time() - start < seconds / 4:
        fn()
        calls += 1
    runs = []
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(calls * 4):
            fn()
        runs.append((time.thread_time() - start) / (calls * 4 * per_call) * 1e6)
    return statistics.median(runs), f"{min(runs):.1f}-{max(runs):.1f}"


def sof_pixels(data: bytes) -> int:
    """Width x height from a JPEG's frame header, walking its marker segments (so an EXIF thumbnail's SOF,
    inside APP1, is never taken for the photo's); 0 when not a JPEG or not found: the proposal for the pixel
    budget (Pillow's ``header_pixels`` for everything else)."""
    if data[:2] != b"\xff\xd8":
        return 0
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in SOF_MARKERS:
            return int.from_bytes(data[at + 5 : at + 7], "big") * int.from_bytes(data[at + 7 : at + 9], "big")
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return 0


def image_pieces(repeats: int) -> list[list[object]]:
    from producer.wire.cache import digest
    from worker.decode.budget import header_pixels
    from worker.decode.cpu import Limits, Preprocess, decode
    from worker.decode.header import read_header

    small, photo = small_jpegs()[0], photos()[3]
    tiny, lite = Preprocess(size=(32, 32), resize="stretch"), Preprocess(size=(224, 224))
    rows = []
    for name, data, spec in (("48-px JPEG", small, tiny), ("96 KB photo", photo, lite)):
        pieces = {
            "Pillow decode + resize (worker.decode.cpu.decode)": lambda d=data, s=spec: decode(d, s, Limits()),
            "pixel budget: header_pixels (a 2nd Pillow open)": lambda d=data: header_pixels(d),
            "proposal: walk the JPEG markers to the SOF": lambda d=data: sof_pixels(d),
            "SHA-256 of the bytes (producer.wire.cache.digest)": lambda d=data: digest(d),
            "GPU route: read_header (Pillow open + EXIF)": lambda d=data: read_header(d, Limits()),
        }
        for piece, fn in pieces.items():
            rows.append([name, piece, *cost_us(fn, 1, repeats)])
    return rows


def store_pieces(url: str, repeats: int) -> list[list[object]]:
    from producer.wire import keys

    conn = redis.Redis.from_url(url)
    conn.flushdb()
    ids = Producer(url).enqueue_many([small_jpegs()[0]] * BATCH)
    fields = [b"data", b"enqueued_at", b"lost_deliveries", b"retries_left", b"result_ttl", b"failure_ttl"]

    def read(command: str) -> Callable[[], object]:
        def run() -> object:
            with conn.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(keys.job(job_id)) if command == "hgetall" else pipe.hmget(keys.job(job_id), fields)
                return pipe.execute()

        return run

    hgetall, hmget = read("hgetall"), read("hmget")
    job_keys = [keys.job(job_id) for job_id in ids]
    inline = conn.register_script(INLINE)
    rows = [["take", "fields: pipelined HGETALL x 64 (today, f8f0ed4)", *cost_us(hgetall, BATCH, repeats)]]
    rows.append(["take", "proposal: pipelined HMGET of the 6 fields read", *cost_us(hmget, BATCH, repeats)])
    in_reply = cost_us(lambda: inline(keys=job_keys), BATCH, repeats)

    def raw_hmget() -> list[object]:
        connection = conn.connection_pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_commands([("HMGET", k, *fields) for k in job_keys]))
            return [connection.read_response() for _ in job_keys]
        finally:
            conn.connection_pool.release(connection)

    rows.append(["take", "proposal: HMGET x 64 packed in one write, read raw", *cost_us(raw_hmget, BATCH, repeats)])
    rows.append(["take", "fields in the script's reply (HGETALL in Lua, before f8f0ed4)", *in_reply])
    rows.append(["take", "one round trip alone (PING)", *cost_us(conn.ping, BATCH, repeats)])
    return rows


def finish_pieces(repeats: int) -> list[list[object]]:
    from producer.wire.results import make_result
    from worker.store.base import JobRecord, Outcome
    from worker.store.rqcalls import finish_job

    job = JobRecord("j" * 36, "e" * 32, "worker.tasks.classify", (), {"image": b"x" * 1500, "meta": {}})
    topk = [(f"label {i}", 0.1) for i in range(5)]
    result = make_result(job.job_id, model="m@1", worker="w", timings_ms={}, meta={}, topk=topk)
    outcome = Outcome(job, result, digest="0" * 64)
    cache = {"tag": "m@1", "precision": "fp32", "decode": "cpu", "topk": 5, "ttl_s": 3600}
    off = cost_us(lambda: finish_job(outcome, None), 1, repeats)
    on = cost_us(lambda: finish_job(outcome, cache), 1, repeats)
    return [["finish", "finish_job, cache off", *off], ["finish", "finish_job, cache on (key + compact result)", *on]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = image_pieces(args.repeats)
    with RedisServer(find_redis_server()) as server:
        rows += store_pieces(server.url, args.repeats)
    rows += finish_pieces(args.repeats)
    print(table(["input / stage", "piece", "CPU µs per job (median)", "range"], rows))


if __name__ == "__main__":
    main()

"""The decode pools: threads and processes give the same pixels; a stuck decode is cut off; the CPU gate."""

from __future__ import annotations

import io
import threading
import time

import pytest

from worker.decode import DecodeResult
from worker.decode.budget import PixelBudget
from worker.decode.cpu import Limits, Preprocess, decode
from worker.decode.gate import Gate
from worker.decode.pool import ProcessDecoder, ThreadDecoder

from ..conftest import image_bytes, wait_for

SPEC = Preprocess(size=(32, 48), resize="center_crop")
NAMES = ["cat.jpg", "coffee.jpg", "odd_rgba.png", "odd.webp"]


def collect(decoder, images: list[bytes]) -> list[DecodeResult]:
    results: dict[int, DecodeResult] = {}
    done = threading.Event()

    def on_done(i: int, result: DecodeResult) -> None:
        results[i] = result
        if len(results) == len(images):
            done.set()

    for i, data in enumerate(images):
        decoder.submit(data, lambda r, i=i: on_done(i, r))
    assert done.wait(60)
    return [results[i] for i in range(len(images))]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_pools_give_the_decoders_pixels_and_its_errors(kind):
    decoder = ThreadDecoder(SPEC, Limits(), 2) if kind == "threads" else ProcessDecoder(SPEC, Limits(), 2)
    try:
        results = collect(decoder, [image_bytes(n) for n in NAMES] + [b"not an image"])
    finally:
        decoder.close()
    for name, result in zip(NAMES, results, strict=False):
        assert result.error is None and result.pixels == decode(image_bytes(name), SPEC, Limits())
    assert results[-1].pixels is None and results[-1].error.kind == "unsupported_image"


def collect_many(decoder, images: list[bytes]) -> tuple[list[DecodeResult], list[int]]:
    """``submit_many``'s results by index, and the size of each hand-off."""
    results: dict[int, DecodeResult] = {}
    sizes: list[int] = []
    lock, done = threading.Lock(), threading.Event()

    def on_done(pairs: list[tuple[int, DecodeResult]]) -> None:
        with lock:
            sizes.append(len(pairs))
            for i, result in pairs:
                assert i not in results  # every index comes back exactly once
                results[i] = result
            if len(results) == len(images):
                done.set()

    decoder.submit_many(images, on_done)
    assert done.wait(60)
    return [results[i] for i in range(len(images))], sizes


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_takes_images_come_back_once_each_by_index_whatever_thread_decodes_them(kind):
    decoder = ThreadDecoder(SPEC, Limits(), 3) if kind == "threads" else ProcessDecoder(SPEC, Limits(), 2)
    images = [image_bytes(NAMES[i % len(NAMES)]) for i in range(13)] + [b"not an image"]
    try:
        results, sizes = collect_many(decoder, images)
        again, _ = collect_many(decoder, images[:1])  # the pool serves the next take
    finally:
        decoder.close()
    assert sizes == [1] * len(images)  # image by image: a batch-mate's decode is never waited for
    for data, result in zip(images[:-1], results, strict=False):
        assert result.error is None and result.pixels == decode(data, SPEC, Limits())
    assert results[-1].error.kind == "unsupported_image" and again[0].pixels == results[0].pixels


class FailingBudget(PixelBudget):
    """A budget that fails (as a decoder bug or a MemoryError would) for images of one pixel count."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(Limits().max_pixels)
        self.fail_at = fail_at

    def acquire(self, pixels: int) -> int:
        if pixels == self.fail_at:
            raise MemoryError("injected")
        return super().acquire(pixels)


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_an_unexpected_failure_fails_its_image_only_and_is_logged(kind, caplog):
    from PIL import Image

    odd = image_bytes("odd_rgba.png")
    with Image.open(io.BytesIO(odd)) as img:
        budget = FailingBudget(img.size[0] * img.size[1])
    decoder = (
        ThreadDecoder(SPEC, Limits(), 2, budget=budget)
        if kind == "threads"
        else ProcessDecoder(SPEC, Limits(), 1, budget=budget)
    )
    images = [image_bytes("cat.jpg"), odd, image_bytes("coffee.jpg"), odd, image_bytes("cat.jpg")]
    try:
        results, _ = collect_many(decoder, images)
    finally:
        decoder.close()
    assert [r.error is None for r in results] == [True, False, True, False, True]
    assert results[1].error.kind == "decode_error" and "MemoryError" in results[1].error.message
    assert results[1].error.retryable  # the photo may be fine: its job is retried
    assert "decoding an image failed unexpectedly" in caplog.text


def test_a_hand_off_that_raises_loses_no_other_image_of_its_take(caplog):
    decoder = ThreadDecoder(SPEC, Limits(), 1)  # one thread: one drain for the whole take
    images = [image_bytes(n) for n in ("cat.jpg", "coffee.jpg", "cat.jpg", "coffee.jpg")]
    got, done = [], threading.Event()

    def on_done(pairs: list[tuple[int, DecodeResult]]) -> None:
        got.extend(i for i, _ in pairs)
        if len(got) == len(images):
            done.set()
        if pairs[0][0] == 1:
            raise RuntimeError("a bug in the caller's hand-off")

    try:
        decoder.submit_many(images, on_done)
        assert done.wait(30)
    finally:
        decoder.close()
    assert sorted(got) == [0, 1, 2, 3] and "hand-off failed" in caplog.text


def test_a_process_exchange_cut_short_replaces_the_process_so_no_reply_goes_to_the_next_image(caplog):
    decoder = ProcessDecoder(SPEC, Limits(), 1)
    slot, real, calls = decoder.slots[0], decoder.slots[0].decode, []

    def cut_short(data: bytes, timeout_s: float) -> DecodeResult:
        if not calls:
            calls.append(data)
            slot.conn.send_bytes(data)  # the exchange began: the child will answer for this image
            raise MemoryError("injected after the send")
        return real(data, timeout_s)

    slot.decode = cut_short
    try:
        first, second = collect(decoder, [image_bytes("cat.jpg"), image_bytes("coffee.jpg")])
    finally:
        decoder.close()
    assert first.error.kind == "decode_error"
    assert second.error is None and second.pixels == decode(image_bytes("coffee.jpg"), SPEC, Limits())
    assert "replacing decode process" in caplog.text


def test_a_decode_past_its_timeout_fails_and_its_process_is_replaced():
    decoder = ProcessDecoder(SPEC, Limits(), 1, timeout_s=0.0005)
    try:
        (slow,) = collect(decoder, [image_bytes("retina_large.jpg")])
        assert slow.error is not None and slow.error.kind == "decode_timeout"
        decoder.timeout_s = 30.0
        (after,) = collect(decoder, [image_bytes("cat.jpg")])
        assert after.error is None and after.pixels == decode(image_bytes("cat.jpg"), SPEC, Limits())
    finally:
        decoder.close()


def test_a_closed_gate_lets_decodes_share_and_a_forward_pass_run_alone():
    gate, events = Gate(always=True), []
    inside = threading.Barrier(2, timeout=5)

    def decode_job(name: str) -> None:
        with gate.decoding():
            events.append(f"{name} in")
            inside.wait()  # both decodes are inside at once: shared
            time.sleep(0.02)
            events.append(f"{name} out")

    decodes = [threading.Thread(target=decode_job, args=(n,)) for n in ("d1", "d2")]
    for t in decodes:
        t.start()
    wait_for(lambda: events.count("d1 in") + events.count("d2 in") == 2, timeout_s=10, interval_s=0.001)
    with gate.forward():  # waits for both running decodes to end
        events.append("forward")
    for t in decodes:
        t.join()
    assert events.index("forward") > max(events.index("d1 out"), events.index("d2 out"))


def test_the_gate_closes_only_while_the_forward_pass_is_the_bottleneck_and_a_batch_waits():
    gate = Gate(forward_ms_per_image=20.0, batch=2)
    assert not gate.active  # no decode measured yet
    with gate.decoding():
        pass
    gate.decoded()
    assert gate.decode_ms is not None and not gate.active  # one decoded image: less than a batch waits
    gate.decoded()
    assert gate.active  # a full batch waits and a decode takes far less than 20 ms: decodes yield
    with gate.forward(2):
        pass
    assert gate.ahead == 0 and not gate.active  # the batch went into the forward pass
    gate.decoded(), gate.decoded()
    gate.forward_ms = gate.decode_ms / 10  # a cheap model: decoding is the bottleneck
    assert not gate.active
    with gate.decoding(), gate.forward(8):  # open: a forward pass does not wait for running decodes
        pass


def _big_png(size: tuple[int, int], seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (seed, 40, 90)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_pixels_decoding_at_once_stay_within_the_budget(kind):
    from worker.decode.budget import PixelBudget

    images = [_big_png((1500, 1000), i) for i in range(6)]  # 1.5 Mpx each
    budget = PixelBudget(3_200_000)  # two at a time, never three
    if kind == "threads":
        decoder = ThreadDecoder(SPEC, Limits(), 4, budget=budget)
    else:
        decoder = ProcessDecoder(SPEC, Limits(), 4, budget=budget)
    try:
        results = collect(decoder, [*images, b"not an image"])
    finally:
        decoder.close()
    assert all(r.error is None for r in results[:-1]) and results[-1].error is not None
    assert 1_500_000 <= budget.peak <= 3_200_000 and budget.used == 0


def test_an_image_bigger_than_the_budget_still_decodes_alone():
    from worker.decode.budget import PixelBudget

    budget = PixelBudget(1_000_000)
    decoder = ThreadDecoder(SPEC, Limits(), 3, budget=budget)
    try:
        results = collect(decoder, [_big_png((1500, 1000), i) for i in range(3)])
    finally:
        decoder.close()
    assert all(r.error is None for r in results) and budget.peak == 1_000_000


def test_running_out_of_memory_mid_decode_is_retried_not_blamed_on_the_image(monkeypatch):
    from worker.decode import libjpeg

    def no_memory(*args: object) -> bytes:
        raise MemoryError("injected")

    decode(image_bytes("cat.jpg"), SPEC, Limits())  # the direct path's one-time self-check passes first
    monkeypatch.setattr(libjpeg, "pixels", no_memory)  # libjpeg's allocation fails: the host, not the photo
    with pytest.raises(MemoryError):
        decode(image_bytes("cat.jpg"), SPEC, Limits())
    decoder = ThreadDecoder(SPEC, Limits(), 1)
    try:
        (result,), _ = collect_many(decoder, [image_bytes("cat.jpg")])
    finally:
        decoder.close()
    assert result.error.kind == "decode_error" and result.error.retryable


def test_a_decode_process_out_of_memory_answers_decode_error(monkeypatch):
    import multiprocessing
    from multiprocessing.shared_memory import SharedMemory

    from worker.decode import pool

    def no_memory(*args: object) -> bytes:
        raise MemoryError("injected")

    monkeypatch.setattr(pool, "decode", no_memory)
    parent, child = multiprocessing.Pipe()
    shm = SharedMemory(create=True, size=SPEC.size[0] * SPEC.size[1] * 3)
    runner = threading.Thread(target=pool._child, args=(child, shm.name, SPEC, Limits()))  # the child's loop
    runner.start()
    try:
        parent.send_bytes(image_bytes("cat.jpg"))
        assert parent.poll(10)
        size, kind, message, _ = parent.recv()
    finally:
        parent.close()
        runner.join(10)
        shm.close()
        shm.unlink()
    assert (size, kind) == (0, "decode_error") and "MemoryError" in message


def test_a_decode_process_that_cannot_be_replaced_fails_its_images_and_its_dispatcher_lives_on(caplog):
    decoder = ProcessDecoder(SPEC, Limits(), 1)
    slot = decoder.slots[0]

    def broken(*args: object) -> DecodeResult:
        raise OSError(24, "Too many open files")

    slot.decode, slot.restart = broken, broken
    try:
        results = collect(decoder, [image_bytes("cat.jpg"), image_bytes("coffee.jpg")])
    finally:
        slot.decode, slot.restart = type(slot).decode.__get__(slot), type(slot).restart.__get__(slot)
        decoder.close()
    assert [r.error.kind for r in results] == ["decode_error", "decode_error"]
    assert "could not replace a decode process" in caplog.text


def test_a_decode_process_that_died_idle_is_replaced_and_the_next_image_decoded():
    decoder = ProcessDecoder(SPEC, Limits(), 1)
    try:
        slot = decoder.slots[0]
        slot.proc.kill()  # the kernel's out-of-memory killer, between two images
        slot.proc.join(10)
        (result,) = collect(decoder, [image_bytes("cat.jpg")])
    finally:
        decoder.close()
    assert result.error is None and result.pixels  # not this image's doing: decoded by its replacement


def test_a_decoder_killed_under_an_image_is_the_hosts_doing_and_a_crash_the_images():
    import signal

    from worker.decode.pool import death_error

    killed, crashed = death_error(-signal.SIGKILL), death_error(-signal.SIGSEGV)
    assert (killed.kind, killed.retryable) == ("decode_error", True)
    assert (crashed.kind, crashed.retryable) == ("unsupported_image", False)

"""The batching policy with a fake clock: which decoded jobs form the next batch and how long it waits."""

from __future__ import annotations

from collections import deque

from worker.batching import next_batch


class Stream:
    """Decoded items arriving at given fake times (each with its take time); waits advance the clock."""

    def __init__(self, arrivals: list[tuple[float, str]], taken: dict[str, float] | None = None) -> None:
        self.now = 0.0
        self.pending = deque(sorted(arrivals))
        self.ready: deque[str] = deque()
        self.taken = taken or {}
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def _arrive(self) -> None:
        while self.pending and self.pending[0][0] <= self.now:
            self.ready.append(self.pending.popleft()[1])

    def get(self, timeout: float) -> str | None:
        if timeout > 0:
            self.waits.append(timeout)
        self._arrive()
        if not self.ready and self.pending and self.pending[0][0] <= self.now + timeout:
            self.now = self.pending[0][0]
            self._arrive()
        elif not self.ready:
            self.now += timeout
        return self.ready.popleft() if self.ready else None

    def batch(self, *, cap: int = 8, max_wait_s: float = 0.005, busy: bool = False) -> list[str]:
        return next_batch(
            self.get,
            max_items=cap,
            max_wait_s=max_wait_s,
            busy=busy,
            idle_wait_s=1.0,
            taken_at=lambda item: self.taken.get(item, 0.0),
            clock=self.clock,
        )


def test_a_busy_model_takes_what_is_ready_without_waiting():
    stream = Stream([(0.0, "a"), (0.0, "b"), (0.001, "c")])
    assert stream.batch(busy=True) == ["a", "b"]
    assert stream.waits == [] and stream.now == 0.0


def test_a_busy_model_lets_a_decode_call_in_flight_complete_rather_than_run_a_fragment():
    # a GPU decoder's call of six lands 3 ms after the model finished; one fallback image is ready
    arrivals = [(0.0, "odd"), *((0.003, f"call-{i}") for i in range(6)), (0.05, "next-take")]

    def batch(call_wait_s: float) -> tuple[list[str], float]:
        stream = Stream(arrivals)
        got = next_batch(
            stream.get,
            max_items=16,
            max_wait_s=0.005,
            busy=True,
            idle_wait_s=1.0,
            taken_at=lambda item: 0.0,
            decoding=lambda: sum(1 for at, _ in stream.pending if at <= 0.003),
            clock=stream.clock,
            call_wait_s=call_wait_s,
        )
        return got, stream.now

    assert batch(0.0) == (["odd"], 0.0)  # CPU decoders: what is ready goes at once
    got, now = batch(0.005)
    assert got == ["odd", *(f"call-{i}" for i in range(6))] and now == 0.003  # the call's six join, no more wait


def test_a_busy_model_with_nothing_ready_waits_like_an_idle_one():
    stream = Stream([(0.5, "a"), (0.502, "b"), (0.6, "late")], taken={"a": 0.499, "b": 0.501})
    assert stream.batch(busy=True) == ["a", "b"]
    assert stream.now <= 0.499 + 0.005 + 1e-9


def test_an_idle_model_waits_at_most_max_wait_from_the_first_jobs_take():
    # "a" was taken at 0.0 but decoded only at 0.004: 1 ms of max-wait is left, not 5
    stream = Stream([(0.004, "a"), (0.0045, "b"), (0.0062, "too-late")], taken={"a": 0.0, "b": 0.004})
    assert stream.batch() == ["a", "b"]
    assert abs(stream.now - 0.005) < 1e-9


def test_a_full_batch_goes_at_once():
    stream = Stream([(0.0, str(i)) for i in range(10)])
    assert stream.batch(cap=4) == ["0", "1", "2", "3"]
    assert stream.now == 0.0


def test_nothing_arriving_returns_empty_after_the_idle_wait():
    stream = Stream([])
    assert stream.batch() == [] and stream.waits == [1.0]


def test_zero_max_wait_takes_only_what_is_there():
    stream = Stream([(0.0, "a"), (0.0001, "b")])
    assert stream.batch(max_wait_s=0.0) == ["a"]


def test_past_max_wait_it_still_waits_for_jobs_already_taken_and_decoding():
    # a prefilled queue: 4 jobs taken at 0.0, decoded slowly; max-wait is for traffic, not for our decoders
    stream = Stream([(0.001, "a"), (0.02, "b"), (0.03, "c"), (0.04, "d")])
    decoding = lambda: len(stream.pending)  # noqa: E731
    batch = next_batch(
        stream.get,
        max_items=4,
        max_wait_s=0.005,
        busy=False,
        idle_wait_s=1.0,
        taken_at=lambda item: 0.0,
        decoding=decoding,
        clock=stream.clock,
    )
    assert batch == ["a", "b", "c", "d"]


def test_max_wait_counts_from_the_earliest_take_among_the_jobs_ready_together():
    # "a" and "b" are both ready when the batch starts; "a" was taken first, so the deadline is 0.0 + 5 ms,
    # not "b"'s 3 ms + 5 ms: "c", decoded at 6 ms, misses this batch
    stream = Stream([(0.004, "a"), (0.004, "b"), (0.006, "c")], taken={"a": 0.0, "b": 0.003, "c": 0.005})
    assert stream.batch() == ["a", "b"]
    assert abs(stream.now - 0.005) < 1e-9

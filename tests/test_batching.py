"""The batching policy on an in-memory queue with a fake clock: no Redis, no torch."""

from __future__ import annotations

from collections import deque

from worker.batching import collect


class FakeQueue:
    """Items arrive at given fake times; blocking waits advance the fake clock."""

    def __init__(self, arrivals: list[tuple[float, str]]) -> None:
        self.now = 0.0
        self.pending = deque(sorted(arrivals, key=lambda a: a[0]))
        self.ready: deque[str] = deque()
        self.blocking_calls: list[float] = []
        self.bulk_calls = 0

    def clock(self) -> float:
        return self.now

    def _arrive(self) -> None:
        while self.pending and self.pending[0][0] <= self.now:
            self.ready.append(self.pending.popleft()[1])

    def take_blocking(self, timeout: float) -> str | None:
        self.blocking_calls.append(timeout)
        self._arrive()
        if not self.ready and self.pending and self.pending[0][0] <= self.now + timeout:
            self.now = self.pending[0][0]
            self._arrive()
        elif not self.ready:
            self.now += timeout
        return self.ready.popleft() if self.ready else None

    def take_now(self, n: int) -> list[str]:
        self.bulk_calls += 1
        self._arrive()
        return [self.ready.popleft() for _ in range(min(n, len(self.ready)))]


def run(q: FakeQueue, max_items: int, max_wait_s: float, idle_wait_s: float = 1.0) -> list[str]:
    return collect(q.take_blocking, q.take_now, max_items=max_items, max_wait_s=max_wait_s,
                   idle_wait_s=idle_wait_s, clock=q.clock)  # fmt: skip


def test_an_empty_queue_gives_an_empty_batch_after_the_idle_wait():
    q = FakeQueue([])
    assert run(q, 8, 0.01, idle_wait_s=1.0) == []
    assert q.blocking_calls == [1.0]


def test_a_deep_backlog_is_taken_in_one_bulk_call_up_to_the_cap():
    q = FakeQueue([(0.0, f"j{i}") for i in range(20)])
    assert run(q, 8, 0.05) == [f"j{i}" for i in range(8)]
    assert len(q.blocking_calls) == 1 and q.bulk_calls == 1
    assert run(q, 8, 0.05) == [f"j{i}" for i in range(8, 16)]


def test_zero_max_wait_takes_only_what_is_there():
    q = FakeQueue([(0.0, "a"), (0.0, "b"), (0.001, "late")])
    assert run(q, 8, 0.0) == ["a", "b"]


def test_a_short_batch_waits_for_more_until_the_deadline_from_the_first_job():
    q = FakeQueue([(0.5, "first"), (0.52, "second"), (0.58, "too late")])
    assert run(q, 8, max_wait_s=0.05) == ["first", "second"]
    # the last blocking wait is what was left of the 50 ms after the first job, not a fresh 50 ms
    assert abs(q.blocking_calls[-1] - 0.03) < 1e-9
    assert q.now == 0.55


def test_waiting_stops_as_soon_as_the_batch_is_full():
    q = FakeQueue([(0.0, "a"), (0.01, "b"), (0.02, "c"), (5.0, "d")])
    assert run(q, 3, max_wait_s=10.0) == ["a", "b", "c"]
    assert q.now == 0.02

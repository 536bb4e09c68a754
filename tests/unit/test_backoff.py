"""The worker's one back-off: doubles, caps, resets."""

from worker.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_again_after_a_reset():
    backoff = Backoff(0.5, max_s=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.peek() == 3.0
    backoff.reset()
    assert backoff.peek() == 0.5
    assert backoff.next() == 0.5

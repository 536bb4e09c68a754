"""What the producer's tools print about jobs (``listen``, ``push --wait``, ``requeue``): ids, labels and error
messages come from whoever may enqueue, so each is one line with no terminal escape in it."""

from __future__ import annotations

import pytest

from producer.__main__ import result_line
from producer.requeue import Failure, describe
from producer.wire.results import make_result

HOSTILE = "ad-1\x1b[2J\nERROR worker crashed\r\u2028"


def clean(line: str) -> bool:
    return "\x1b" not in line and "\n" not in line and "\r" not in line and "\u2028" not in line


@pytest.mark.parametrize("ok", [True, False])
def test_a_result_line_is_one_line_without_escapes_whatever_the_job_wrote(ok):
    error = None if ok else {"type": "bad_request\x1b[31m", "message": HOSTILE}
    topk = [(HOSTILE, 0.9)] if ok else None
    result = make_result(HOSTILE, model="m@1", worker="w", timings_ms={"total": 3.0}, meta={}, topk=topk, error=error)
    line = result_line(result)
    assert clean(line) and "ad-1\\x1b[2J\\nERROR" in line


def test_requeue_describes_a_failure_on_one_line_without_escapes():
    failure = Failure(HOSTILE, 0, "failed", {"type": "fetch_error", "message": HOSTILE}, failed_at=None)
    line = describe(failure, now=0.0)
    assert clean(line) and line.startswith("ad-1\\x1b[2J\\nERROR")

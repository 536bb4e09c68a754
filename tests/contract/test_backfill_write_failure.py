"""A backfill whose output cannot be written (a full disk) stops without acknowledging the result it could not
write: the result stays pending in its feed group and is delivered again to the next run, whose output lacks it."""

from __future__ import annotations

import io
import threading
from pathlib import Path

from producer import Producer
from producer.backfill import run_backfill
from producer.backfill_out import OutFile
from producer.backfill_run import BackfillSettings
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps

from ..conftest import wait_for

STREAM = results_stream("classify")


def test_a_result_whose_line_could_not_be_written_stays_unacknowledged(redis_url, conn, tmp_path, monkeypatch):
    manifest = tmp_path / "ads.txt"
    manifest.write_text("http://images.example/ad-1.jpg\n")  # no worker runs: the test feeds the result
    settings = BackfillSettings(manifest, tmp_path / "out.jsonl", tmp_path / "failed.txt", model_tag="m@1")

    def full_disk(self: OutFile, record: dict) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OutFile, "write", full_disk)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_backfill(Producer(redis_url), settings, io.StringIO())
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    (job_key,) = wait_for(lambda: conn.keys("rq:job:backfill-*"))
    job_id = job_key.decode().removeprefix("rq:job:")
    (group,) = wait_for(lambda: conn.xinfo_groups(STREAM) if conn.exists(STREAM) else None)
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    conn.xadd(STREAM, {"job_id": job_id, "result": dumps(result)})
    thread.join(30)
    assert not thread.is_alive() and raised and isinstance(raised[0], OSError)
    assert conn.xpending(STREAM, group["name"])["pending"] == 1  # not acknowledged: the next run gets it
    assert not Path(settings.out).read_text()

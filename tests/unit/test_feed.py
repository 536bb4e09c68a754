"""The results feed without a server: the consumer-group protocol on replies alone, and total JSON output."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import msgpack
import pytest
import redis

from producer.drivers import SyncDriver
from producer.feed import ResultFeed
from producer.groupcursor import (
    CLAIM,
    CREATE,
    NEW,
    OWN,
    GroupCursor,
    autoclaim_reply,
    decode_entry,
    read_reply_entries,
)
from producer.jsonout import dumps_json, jsonable
from producer.wire.results import make_result
from producer.wire.serializer import dumps, loads


def result_bytes(job_id: str, meta: dict | None = None) -> bytes:
    return dumps(make_result(job_id, model="tiny@7", worker="w", timings_ms={}, meta=meta))


def fields(job_id: str) -> dict[bytes, bytes]:
    return {b"job_id": job_id.encode(), b"result": result_bytes(job_id)}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cursor(clock: Clock | None = None, **options) -> GroupCursor:
    return GroupCursor("classify:results:stream", "web", "host:1", clock=clock or Clock(), **options)


# -- reply shapes ---------------------------------------------------------------------------------------


def test_xreadgroup_replies_in_resp2_and_map_shape_give_the_same_entries():
    entries = [(b"1-0", fields("a")), (b"2-0", fields("b"))]
    assert read_reply_entries([[b"classify:results:stream", entries]]) == entries
    assert read_reply_entries({b"classify:results:stream": entries}) == entries
    assert read_reply_entries(None) == read_reply_entries([]) == read_reply_entries({}) == []


def test_xautoclaim_reply_of_redis_6_2_counts_deleted_entries_it_cannot_name():
    raw_nil, parsed_nil = None, (None, None)  # Redis's nil, and redis-py's parse of it
    next_id, claimed, nils, deleted = autoclaim_reply([b"0-0", [(b"1-0", fields("a")), raw_nil, parsed_nil]])
    assert (next_id, [i for i, _ in claimed], nils, deleted) == ("0-0", [b"1-0"], 2, [])


def test_xautoclaim_reply_of_redis_7_names_deleted_entries_in_a_third_element():
    next_id, claimed, nils, deleted = autoclaim_reply([b"5-0", [(b"3-0", fields("a"))], [b"2-0"]])
    assert (next_id, [i for i, _ in claimed], nils, deleted) == ("5-0", [b"3-0"], 0, [b"2-0"])


def test_an_entry_decodes_to_its_checked_result_from_a_map_or_a_flat_list():
    assert decode_entry(b"1-0", fields("a")).result["job_id"] == "a"
    assert decode_entry("1-0", [b"job_id", b"a", b"result", result_bytes("a")]).result["job_id"] == "a"


@pytest.mark.parametrize(
    "bad",
    [None, {}, {b"job_id": b"x"}, {b"result": b"\xc1"}, {b"result": dumps({"job_id": "x"})}, {b"result": "text"}],
    ids=["deleted-nil", "deleted-empty", "no-result", "not-msgpack", "not-a-result", "not-bytes"],
)
def test_a_deleted_or_malformed_entry_decodes_to_none_with_its_id(bad):
    entry = decode_entry(b"7-1", bad)
    assert entry.id == "7-1" and entry.result is None


# -- the protocol: phases ---------------------------------------------------------------------------------


def test_a_reader_creates_its_group_then_reads_its_own_pending_then_sweeps_then_reads_new_entries():
    clock = Clock()
    c = cursor(clock, start="0", claim_idle_s=10, block_ms=1000, count=5)
    assert c.next_command() == ("XGROUP", "CREATE", "classify:results:stream", "web", "0", "MKSTREAM")
    assert c.take(b"OK") == [] and c.phase == OWN
    assert c.next_command()[-1] == "0" and "BLOCK" not in c.next_command()
    assert [e.result["job_id"] for e in c.take([[b"s", [(b"4-0", fields("a"))]]])] == ["a"]
    assert c.next_command()[-1] == "4-0"  # own pending list read onwards from the last id
    assert c.take([[b"s", []]]) == [] and c.phase == CLAIM
    assert c.next_command() == ("XAUTOCLAIM", "classify:results:stream", "web", "host:1", 10_000, "0-0", "COUNT", 5)
    assert [e.id for e in c.take([b"9-0", [(b"8-0", fields("b"))], []])] == ["8-0"]
    assert c.phase == CLAIM and c.next_command()[5] == "9-0"  # the sweep goes on from where it stopped
    assert c.take([b"0-0", [], []]) == [] and c.phase == NEW
    command = c.next_command()
    assert command[-1] == ">" and command[command.index("BLOCK") + 1] == 1000


def test_a_blocking_read_never_outlasts_the_next_sweep_or_the_callers_timeout():
    clock = Clock()
    c = cursor(clock, claim_idle_s=1, block_ms=5000)
    c.phase, c.next_sweep = NEW, clock.now + 0.3
    command = c.next_command()
    assert command[command.index("BLOCK") + 1] == 300
    command = c.next_command(max_block_ms=20)
    assert command[command.index("BLOCK") + 1] == 20
    clock.now += 0.3
    assert c.next_command()[0] == "XAUTOCLAIM" and c.phase == CLAIM


def test_a_sweep_on_redis_6_2_that_claimed_deleted_entries_rereads_the_own_list_to_acknowledge_them():
    clock = Clock()
    c = cursor(clock, claim_idle_s=1)
    c.phase = CLAIM
    c.take([b"0-0", [(None, None)]])
    assert c.phase == OWN and c.next_command()[-1] == "0"
    (deleted,) = c.take([[b"s", [(b"3-0", None)]]])
    assert deleted.id == "3-0" and deleted.result is None  # acknowledged and skipped by the feed
    c.take([[b"s", []]])
    assert c.phase == NEW  # the sweep is not due again yet


def test_busygroup_keeps_the_existing_group_and_nogroup_creates_it_again():
    c = cursor()
    c.next_command()
    assert c.failed(redis.ResponseError("BUSYGROUP Consumer Group name already exists")) and c.phase == OWN
    c.phase = NEW
    assert c.failed(redis.ResponseError("NOGROUP No such key 'x' or consumer group 'web'")) and c.phase == CREATE
    assert not c.failed(redis.ResponseError("NOPERM this user has no permissions"))


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        cursor(claim_idle_s=-1)
    with pytest.raises(ValueError):
        cursor(block_ms=0)


# -- the feed on a scripted connection ------------------------------------------------------------------


class ScriptedRedis:
    """Answers commands from a list of replies (an exception is raised); records XACKs (answered 1)."""

    def __init__(self, replies: list) -> None:
        self.replies, self.acked, self.sent = list(replies), [], []

    def execute_command(self, *args):
        if args[0] == "XACK":
            self.acked.append(args[3])
            return 1
        self.sent.append(args[0])
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def feed_on(*conns: ScriptedRedis, **options) -> ResultFeed:
    """A feed over one scripted connection per shard."""
    return ResultFeed(SyncDriver(conns), [cursor(**options) for _ in conns])


def test_the_feed_acknowledges_an_entry_when_the_next_is_asked_for_and_skips_bad_ones():
    entries = [(b"1-0", fields("a")), (b"2-0", {b"result": b"junk"}), (b"3-0", fields("b"))]
    conn = ScriptedRedis([b"OK", [[b"s", []]], [b"0-0", [], []], [[b"s", entries]]])
    feed = feed_on(conn, claim_idle_s=60).open()
    assert next(feed)["job_id"] == "a" and conn.acked == ["2-0"]  # junk acknowledged unseen; "a" handed out
    assert next(feed)["job_id"] == "b" and conn.acked == ["2-0", "1-0"]  # asking for "b" acknowledged "a"
    feed.ack()
    assert conn.acked == ["2-0", "1-0", "3-0"]


def test_the_feed_retries_when_redis_is_unreachable_and_returns_none_on_timeout():
    conn = ScriptedRedis([b"OK", redis.ConnectionError("refused"), [[b"s", [(b"1-0", fields("a"))]]]])
    feed = feed_on(conn).open()
    assert feed.get(timeout_s=5)["job_id"] == "a"
    assert conn.sent == ["XGROUP", "XREADGROUP", "XREADGROUP"]
    assert feed_on(ScriptedRedis([])).get(timeout_s=0) is None


def test_a_feed_over_two_shards_reads_each_in_turn_and_acknowledges_where_an_entry_came_from():
    def shard(job_id: str) -> ScriptedRedis:  # group created, own list empty, sweep finds nothing, one new entry
        return ScriptedRedis([b"OK", [[b"s", []]], [b"0-0", [], []], [[b"s", [(b"1-0", fields(job_id))]]]])

    a, b = shard("a"), shard("b")
    feed = feed_on(a, b, claim_idle_s=60).open()
    assert feed.get(timeout_s=5)["job_id"] == "a" and a.acked == b.acked == []
    assert feed.get(timeout_s=5)["job_id"] == "b" and a.acked == ["1-0"] and b.acked == []
    feed.ack()
    assert b.acked == ["1-0"] and a.sent == b.sent == ["XGROUP", "XREADGROUP", "XAUTOCLAIM", "XREADGROUP"]


def test_the_feed_raises_errors_that_are_not_part_of_the_protocol():
    feed = feed_on(ScriptedRedis([redis.exceptions.NoPermissionError("NOPERM")]))
    with pytest.raises(redis.exceptions.NoPermissionError):
        feed.open()


# -- listen --json is total --------------------------------------------------------------------------------


def test_json_output_handles_every_value_msgpack_decodes():
    meta = {
        "raw": b"\x00\xffbytes",
        "ext": msgpack.ExtType(5, b"\x01\x02"),
        "when": msgpack.Timestamp(1_700_000_000, 5),
        "whole": msgpack.Timestamp(0, 0),
        "far": msgpack.Timestamp(2**62, 0),
        "nan": math.nan,
        "inf": -math.inf,
        b"bkey": 1,
        "nested": [{"t": (1, b"x")}],
        "text": "caf\u00e9",
    }
    decoded = loads(msgpack.packb(meta, use_bin_type=True, datetime=False))
    line = dumps_json({"meta": decoded})
    assert line.isascii()
    out = json.loads(line)["meta"]
    assert out["raw"] == {"$bytes": "AP9ieXRlcw=="}
    assert out["ext"] == {"$ext": 5, "data": "AQI="}
    assert out["when"] == "2023-11-14T22:13:20.000000005Z" and out["whole"] == "1970-01-01T00:00:00Z"
    assert out["far"] == {"$timestamp": [2**62, 0]}
    assert out["nan"] == {"$float": "nan"} and out["inf"] == {"$float": "-inf"}
    assert out['{"$bytes": "YmtleQ=="}'] == 1 and out["nested"] == [{"t": [1, {"$bytes": "eA=="}]}]
    assert out["text"] == "caf\u00e9"


def test_json_output_handles_datetimes_and_keys_that_are_not_strings():
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert jsonable({1: moment, None: 2, (1, 2): 3}) == {"1": "2024-05-01T12:00:00+00:00", "null": 2, "[1, 2]": 3}
    assert jsonable(object())["$repr"].startswith("<object")


class ScriptedPipeline:
    """A scripted connection's pipeline: the batch's reply is the connection's next one (or its exception)."""

    def __init__(self, conn: ScriptedRedis) -> None:
        self.conn, self.commands = conn, []

    def __enter__(self) -> ScriptedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute_command(self, *args, **options) -> None:
        self.commands.append(args)

    def execute(self):
        self.conn.sent.append("PIPELINE")
        if self.conn.down:
            raise redis.ConnectionError("gone")
        return self.conn.batch_reply


def test_entries_read_just_before_redis_went_away_wait_staged_and_the_callers_timeout_still_holds():
    lean = {b"job_id": b"a", b"result": dumps({**loads(result_bytes("a")), "meta": None})}  # meta left in the job
    call = dumps(["worker.tasks.classify", None, [], {"meta": {"ad": 7}}])
    conn = ScriptedRedis([b"OK", [[b"s", [(b"1-0", lean)]]]])
    conn.down, conn.batch_reply = True, [call]  # Redis goes away after the read, before the meta's HGET
    conn.pipeline = lambda transaction=False: ScriptedPipeline(conn)
    feed = feed_on(conn).open()
    assert feed.get(timeout_s=0.3) is None  # not blocked until Redis answers: the entry waits, unacknowledged
    assert conn.acked == [] and conn.sent.count("XREADGROUP") == 1
    conn.down = False
    got = feed.get(timeout_s=5)
    assert got["job_id"] == "a" and got["meta"] == {"ad": 7}
    assert conn.sent.count("XREADGROUP") == 1  # the staged entry was not read twice


def test_a_result_wait_whose_call_failed_past_its_deadline_times_out_without_another_round_trip():
    from producer.errors import JobTimeout
    from producer.results import wait_for_result

    conn = ScriptedRedis([])  # no reply at all: a second command would fail the test (IndexError)
    conn.down, conn.batch_reply = True, None  # its one read fails: the server is away (a partition, say)
    conn.pipeline = lambda transaction=False: ScriptedPipeline(conn)
    with pytest.raises(JobTimeout, match="Redis unavailable"):
        SyncDriver([conn]).run(wait_for_result(0, "j1", 0.0))
    assert conn.sent == ["PIPELINE"]  # not one more EXISTS, which a silent server would hold for its timeout

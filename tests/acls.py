"""The least-privilege Redis users of docs/security.md, for the tests that run with them (keep in step)."""

from __future__ import annotations

import re

import redis

# Redis 6.2 (and 7): key patterns and commands are granted together, so every write command the producer
# needs works on every key it may touch: it can create any of them with another type (the workers then
# leave the jobs where they are and report the key: RELIABILITY.md, "Keys of the wrong type").
PRODUCER_ACL_62 = (
    "on >producer-secret resetkeys ~rq:job:* ~rq:queue:classify ~rq:queues ~rq:results:* "
    "~classify:results:stream resetchannels &classify:results -@all +ping +hset +hget +hgetall "
    "+rpush +sadd +exists +llen +xread +xrevrange +multi +exec +watch +unwatch +subscribe +unsubscribe "
    "+xreadgroup +xack +xautoclaim +xgroup|create +xinfo|groups "
    "~rq:canceled:classify ~rq:wip:classify ~rq:executions:* ~rq:queue:classify:intermediate "
    "+evalsha +type +time +lrem +zadd +zrem +zrange +wait +expire "
    "~rq:failed:classify +persist "
    "~rq:adclassify:cache:* ~rq:adclassify:model:* +get"
)

# Redis 7: selectors, in parentheses, bind commands to the keys they are for, so the producer writes only what
# an enqueue, the results feed and a cancel need, where they need it.
PRODUCER_ACL_7 = (
    "on >producer-secret resetkeys resetchannels &classify:results -@all "
    "+ping +multi +exec +unwatch +subscribe +unsubscribe "
    "(~rq:job:* +hset +hget +hgetall +exists +watch) "
    "(~rq:queue:classify +rpush +llen +lrem) "
    "(~rq:queues +sadd) "
    "(~rq:results:* +xread) "
    "(~classify:results:stream +xreadgroup +xack +xautoclaim +xgroup|create +xinfo|groups +xread +xrevrange) "
    "(~rq:adclassify:cache:* ~rq:adclassify:model:* +get) "
    "+time +wait "
    "(~rq:job:* ~rq:executions:* ~rq:queue:classify ~rq:queue:classify:intermediate ~rq:wip:classify "
    "~rq:canceled:classify +evalsha +type) "
    "(~rq:queue:classify:intermediate +lrem) (~rq:executions:* +zrange) (~rq:wip:classify +zrem +zrange) "
    "(~rq:canceled:classify +zadd) "
    "(~rq:failed:classify ~rq:job:* ~rq:results:* ~rq:queue:classify ~rq:queues +evalsha +type) "
    "(~rq:failed:classify +zrange +zrem) (~rq:job:* +persist +expire) (~rq:results:* +xrevrange)"
)

# KEDA's Redis scalers: PING, then EVAL of a script that calls TYPE and that type's length command
KEDA_ACL = (
    "on >keda-secret resetkeys ~rq:queue:classify ~rq:queue:classify:intermediate ~rq:wip:classify "
    "resetchannels -@all +ping +eval +type +llen +zcard"
)

WORKER_ACL = (
    "on >worker-secret resetkeys ~rq:* ~classify:results:stream resetchannels &classify:results "
    "+@all -@admin -@dangerous +info +client|setname +script|load"
)


def rules(acl: str) -> list[str]:
    """An ACL line as ``ACL SETUSER`` arguments: split at spaces, a selector ``(...)`` kept whole."""
    return re.findall(r"\([^)]*\)|\S+", acl)


def major_version(conn: redis.Redis) -> int:
    return int(str(conn.info("server")["redis_version"]).split(".")[0])


def producer_acl(conn: redis.Redis) -> str:
    """The producer ACL docs/security.md gives for this server's version."""
    return PRODUCER_ACL_7 if major_version(conn) >= 7 else PRODUCER_ACL_62


def set_users(conn: redis.Redis, redis_url: str, producer: str | None = None) -> tuple[str, str]:
    """Create the ``producer`` (``producer``: its rules, else the ACL for this server) and ``worker`` users;
    their URLs."""
    conn.execute_command("ACL", "SETUSER", "producer", "reset", *rules(producer or producer_acl(conn)))
    conn.execute_command("ACL", "SETUSER", "worker", "reset", *rules(WORKER_ACL))
    base = redis_url.removeprefix("redis://")
    return f"redis://producer:producer-secret@{base}", f"redis://worker:worker-secret@{base}"


def drop_users(conn: redis.Redis) -> None:
    conn.acl_deluser("producer", "worker")

"""The hiredis packer sends the very bytes redis-py's packer would, and leaves it every case it does not own."""

from __future__ import annotations

import pytest
import redis
from redis.connection import Encoder, PythonRespSerializer

from producer.wire.packer import FastPacker, fast_packer

REDIS_PY = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack
CASES = [
    ("SET", "k", "v"),
    ("HSET", "rq:job:1", "data", b"\x94\xa0\xc0\x00" * 4000, "created_at", "2026-12-04T00:00:00.000000Z"),
    ("EVALSHA", "ab" * 20, 3, "k1", "k2", "k3", 1.5, -7, 10**20, "é ü"),
    ("SCRIPT LOAD", "return 1"),  # a two-word command name: redis-py splits it
    ("XADD", "s", "MAXLEN", "~", 100, "*", "f", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),  # not hiredis's: redis-py packs it
]


@pytest.mark.parametrize("args", CASES, ids=[str(c[0]) for c in CASES])
def test_the_bytes_are_redis_pys(args):
    packer = fast_packer(REDIS_PY)
    assert isinstance(packer, FastPacker)
    assert b"".join(packer.pack(*args)) == b"".join(REDIS_PY(*args))


@pytest.mark.parametrize("bad", [True, None, {"a": 1}])
def test_what_redis_py_refuses_it_still_refuses(bad):
    with pytest.raises(redis.DataError):
        fast_packer(REDIS_PY).pack("SET", "k", bad)

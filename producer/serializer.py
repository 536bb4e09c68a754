"""``producer.serializer.MsgpackSerializer``: the name RQ's CLI is given (``rq worker -S ...``); the
serializer itself is ``producer.wire.serializer``."""

from .wire.serializer import MsgpackSerializer

__all__ = ["MsgpackSerializer"]

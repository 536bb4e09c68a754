"""How ids and keys read from Redis are written into log lines (``producer.wire.printable``, shared with the
producer's tools)."""

from producer.wire.printable import shown

__all__ = ["shown"]

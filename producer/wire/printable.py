"""How ids, keys and messages read from Redis go into log lines and terminals: escaped, so none forges a line.

Job ids come from whoever can enqueue (a web backend's credentials are enough), so a queued id such as
``"x\\nERROR worker crashed"`` would print as two lines, and ``\\x1b[...`` would drive the operator's terminal.
"""

from __future__ import annotations

import re

_PLAIN = re.compile(r"[^\\]*")  # what needs no escape at all, if it is also printable


def shown(value: str | bytes | None) -> str:
    """``value`` for a log line: printable characters as they are; the backslash, newlines and every other
    character that is not printable (control, format, line and paragraph separators) escaped as Python
    writes them (``\\\\``, ``\\n``, ``\\x1b``, ``\\u2028``); bytes that are not UTF-8 as ``\\xff``."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if value.isprintable() and _PLAIN.fullmatch(value):
        return value
    return "".join(_escaped(c) for c in value)


def _escaped(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c.isprintable():
        return c
    if 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{ord(c) - 0xDC00:02x}"
    return c.encode("unicode_escape").decode("ascii")

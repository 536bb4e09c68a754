"""Registration at start: a worker that won't run closes its decoder (decode processes hold shared memory)."""

from __future__ import annotations

import threading

import pytest

from worker.startup import register
from worker.store.names import NameTaken


class Decoder:
    closed = False

    def close(self) -> None:
        self.closed = True


class TakenName:
    """A store whose worker name another live worker holds (``--name`` given twice)."""

    def register(self, stop: threading.Event) -> None:
        raise NameTaken("box:0 is still beating elsewhere")


class Registers:
    def register(self, stop: threading.Event) -> None:
        pass


def test_a_name_taken_closes_the_decoder_and_a_registered_worker_keeps_it():
    decoder = Decoder()
    with pytest.raises(NameTaken):
        register(TakenName(), threading.Event(), decoder)  # type: ignore[arg-type]
    assert decoder.closed  # the launcher restarts the child: its decode processes' shared memory would pile up
    kept = Decoder()
    assert register(Registers(), threading.Event(), kept) and not kept.closed  # type: ignore[arg-type]
    stopped, event = Decoder(), threading.Event()
    event.set()
    assert not register(Registers(), event, stopped) and stopped.closed

"""Signals are acted on by a thread of their own (worker.signals): a handler that sets an event the main thread
is waiting on or clearing can wait for a lock its own thread holds, and hang the process for good (with the
handlers the worker and the launcher had before, 4 of 5 runs of the child below hung)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from ..conftest import ROOT

CHILD = textwrap.dedent(
    """
    import signal, sys, threading
    from worker.signals import SignalThread

    hup, stop = threading.Event(), threading.Event()
    SignalThread({signal.SIGHUP: lambda _: hup.set(), signal.SIGTERM: lambda _: stop.set()}).install()
    print("ready", flush=True)
    while not stop.is_set():  # the main thread in and out of the event's lock, as a stage's wait loop is
        hup.clear()
        hup.wait(0.00001)
    print("stopped", flush=True)
    """
)


def test_a_storm_of_signals_never_hangs_the_process_and_a_stop_still_stops_it():
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ}
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            for _ in range(20000):
                os.kill(child.pid, signal.SIGHUP)
            os.kill(child.pid, signal.SIGTERM)
            assert child.wait(timeout=30) == 0 and child.stdout.read().strip() == "stopped"
        finally:
            child.kill()
            child.wait()


def test_an_action_that_raises_is_logged_and_the_next_signal_is_still_acted_on():
    script = textwrap.dedent(
        """
        import os, signal, threading
        from worker.signals import SignalThread

        done = threading.Event()
        def fails(_):
            raise RuntimeError("a bug in one action")
        SignalThread({signal.SIGUSR1: fails, signal.SIGUSR2: lambda _: done.set()}).install()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        print("acted" if done.wait(20) else "lost", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "acted" and "a bug in one action" in out.stderr

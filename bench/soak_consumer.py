"""The soak's results consumer: ``python -m bench.soak_consumer URL FILE`` reads the durable results feed
as consumer ``soak-1`` of group ``soak`` and appends each job id to FILE (flushed) before asking for the
next entry, which acknowledges it. The soak SIGKILLs and restarts it; ids missing from FILE at the end
were lost through the feed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from producer import Producer

from .common import ROOT, pythonpath


def main() -> None:
    url, path = sys.argv[1], sys.argv[2]
    feed = Producer(url).results(group="soak", consumer="soak-1", start="0", claim_idle_s=2.0)
    with open(path, "a", encoding="utf-8") as out:
        while True:
            result = feed.get(timeout_s=1.0)
            if result is not None:
                out.write(result["job_id"] + "\n")
                out.flush()


class FeedConsumer:
    """The consumer process, killed (SIGKILL) and restarted by the soak."""

    def __init__(self, url: str, path: Path) -> None:
        self.url, self.path, self.kills = url, path, 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bench.soak_consumer", self.url, str(self.path)]
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()})

    def kill_and_restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.proc = self._start()

    def seen(self) -> set[str]:
        return set(self.path.read_text(encoding="utf-8").split()) if self.path.exists() else set()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    main()

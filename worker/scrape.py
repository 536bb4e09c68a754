"""One scrape target per pod: the launcher serves its children's metrics as one page.

With several worker processes (``--workers-per-device K``, ``--devices``) and ``--metrics-port P``, the
launcher serves ``/metrics`` on P, and child ``i`` serves its own on ``P + 1 + i``. The launcher's page is
every child's series with a ``process="i"`` label added (one HELP/TYPE per family), plus
``adclassify_worker_processes{state="scraped"|"missing"}`` and ``adclassify_worker_restarts_total{process}``
(children the launcher restarted: Kubernetes sees the pod, not a child crash-looping in it). A Kubernetes
Service, a ServiceMonitor or a ``prometheus.io/port`` annotation names one port per pod, whatever K is.
``/readyz`` on P answers 200 while any child is ready; ``/healthz`` answers for the launcher (each child has
its own watchdog, and the launcher restarts a child that exits). The launcher never imports torch.
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 3.0  # per child, all read at once: under Prometheus' default 10 s scrape timeout


def child_metrics_port(base: int, index: int) -> int:
    """Where child ``index`` serves its own page when the launcher serves the merged one on ``base``."""
    return base + 1 + index


def _get(port: int, path: str, timeout_s: float) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError, http.client.HTTPException):  # refused (a child starting or restarting), timed
        return None  # out, or cut short (a child ending mid-answer)


class ChildrenPage:
    """A prometheus_client collector over the children's pages, and the launcher's probe answers."""

    def __init__(
        self, ports: list[int], timeout_s: float = SCRAPE_TIMEOUT_S, restarts: Callable[[], list[int]] | None = None
    ) -> None:
        self.ports, self.timeout_s = ports, timeout_s
        self.restarts = restarts or (lambda: [0] * len(ports))  # the launcher's count per process
        self.pool = ThreadPoolExecutor(max_workers=min(8, len(ports)), thread_name_prefix="scrape")
        self.stalled = False  # the probe server's /healthz: the launcher answers, so it is alive
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)  # the probe server's /metrics: collect() below
        self.registry.register(self)

    def _each(self, path: str) -> list[tuple[int, str] | None]:
        return list(self.pool.map(lambda port: _get(port, path, self.timeout_s), self.ports))

    def ready(self) -> tuple[bool, str]:
        """Ready while any child is: the pod can take work (each child takes its own jobs)."""
        answers = self._each("/readyz")
        ready = sum(1 for a in answers if a is not None and a[0] == 200)
        return ready > 0, f"{ready} of {len(answers)} worker processes ready"

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        scraped = 0
        for index, answer in enumerate(self._each("/metrics")):
            if answer is None or answer[0] != 200:
                continue
            try:
                parsed = list(text_string_to_metric_families(answer[1]))
            except ValueError as exc:  # a page cut short: that child is missing from this scrape
                log.warning("metrics of worker process %d unreadable: %s", index, exc)
                continue
            scraped += 1
            for family in parsed:
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                label = str(index)
                merged.samples.extend(s._replace(labels={**s.labels, "process": label}) for s in family.samples)
        yield from families.values()
        processes = GaugeMetricFamily(
            "adclassify_worker_processes",
            "Worker processes of this launcher, by whether this scrape read their metrics (missing: (re)starting)",
            labels=["state"],
        )
        processes.add_metric(["scraped"], scraped)
        processes.add_metric(["missing"], len(self.ports) - scraped)
        yield processes
        restarts = CounterMetricFamily(
            "adclassify_worker_restarts",
            "Worker processes the launcher started again after they exited (a crash loop inside one pod)",
            labels=["process"],
        )
        for index, count in enumerate(self.restarts()):
            restarts.add_metric([str(index)], count)
        yield restarts

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

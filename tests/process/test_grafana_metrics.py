"""The Grafana dashboard asks only for metrics a real worker exports: its queries against a /metrics scrape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from bench.devserver import free_port

from ..conftest import ROOT, wait_for

DASHBOARD = ROOT / "deploy" / "grafana" / "adclassify.json"
# Grafana's interval variables, replaced by a duration before parsing (the others only appear in label values)
INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")
# the series a family of each type exposes (prometheus-client's text format)
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def dashboard_queries() -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(query)
            assert match and match["selector"], f"variable {variable['name']}: label_values(metric, label) expected"
            queries.append((f"variable {variable['name']}", match["selector"]))
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects; fails on a syntax error or an unknown function."""
    promql_parser = pytest.importorskip("promql_parser", reason="pip install promql-parser (the dev extra)")
    ast = promql_parser.parse(INTERVALS.sub("5m", expr))
    names: list[str | None] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.append(node.name)

    promql_parser.walk(ast, visit)
    assert names and None not in names, f"every selector names its metric: {expr}"
    return {name for name in names if name}


def exported_series(text: str) -> set[str]:
    """Every series name a /metrics page offers: its samples, and for families with no sample yet (a
    labelled metric nothing has touched) the names their type implies."""
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",)))
    return names


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet, or 404 until the model is warm and metrics are on


def test_dashboard_queries_only_metrics_a_running_worker_exports(start_worker):
    pytest.importorskip("prometheus_client", reason="the metrics extra")
    port = free_port()
    start_worker("--metrics-port", str(port))
    text = wait_for(lambda: scrape(port), 60)
    exported = exported_series(text)
    assert "adclassify_jobs_total" in exported  # the scrape is the worker's, with its labelled families
    exported |= producer_series()
    queries = dashboard_queries()
    assert len(queries) >= 10
    missing = {where: sorted(metric_names(expr) - exported) for where, expr in queries}
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, f"asked for by the dashboard, not exported by the worker or the producer: {missing}"


def producer_series() -> set[str]:
    """What a web backend's /metrics offers of ours once it looked the result cache up (a real producer
    process: its default registry, as a web framework's exporter serves it)."""
    code = (
        "from producer.metrics import cache_lookup; from prometheus_client import generate_latest; "
        "cache_lookup(hit=True); cache_lookup(hit=False); print(generate_latest().decode())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    series = {name for name in exported_series(out.stdout) if name.startswith("adclassify_")}
    assert "adclassify_producer_cache_lookups_total" in series
    return series

"""``python -m producer dashboard``: rq-dashboard, set up to read our msgpack jobs (never unpickle).

Why a launcher: rq-dashboard (0.9) has no serializer option (only ``--json``). It reads jobs and
results with one module-level setting, ``rq_dashboard.web.config.serializer`` (pickle by default),
and lists workers with ``Worker.all(connection=...)``, which falls back to RQ's pickle serializer.
Against our msgpack jobs its finished lists and finished-job pages fail (``UnpicklingError``), and
so does its workers page while a worker is busy (the current job is read with pickle). This module
builds its Flask app in this process and:

- sets ``web.config.serializer`` to ``MsgpackSerializer`` (job lists, job pages, results);
- makes msgpack RQ's fallback serializer in this process only (``rq.serializers.PickleSerializer``,
  what ``resolve_serializer(None)`` returns), so the calls that pass no serializer (``Worker.all``,
  delete, requeue) read msgpack too: nothing here ever unpickles, whatever the page;
- replaces its two description helpers so no page renders image bytes, even with
  ``--show-full-args`` (bytes become ``bytes[12345]``);
- HTML-escapes every string of every JSON answer (``escaped``): its pages insert them as HTML unescaped, and
  meta, results, errors, ids and queue names come from whoever may enqueue;
- writes bytes inside results and meta as ``"bytes[N]"`` in its JSON;
- guards every request (``dashboard_guard``): an allow-listed ``Host``, basic auth with a password
  (required beyond loopback), no state change on ``GET``, and no cross-site state change.

Only ``run()``/``create_app()`` change anything (nothing at import). Needs the ``dashboard`` extra.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from .dashboard_guard import DEFAULT_USERNAME, Guard, default_allowed_hosts, install, is_loopback
from .dashboard_state import install_state_routes
from .wire.serializer import MsgpackSerializer
from .wire.urls import split_urls

DEFAULT_PORT = 9181
DEFAULT_BIND = "127.0.0.1"
ALLOWED_HOSTS_ENV = "DASHBOARD_ALLOWED_HOSTS"
PASSWORD_ENV = "DASHBOARD_PASSWORD"
DESCRIPTION_CHARS = 200  # longest description shown
ARG_CHARS = 200  # longest single argument in a full call string
_BYTES_LITERAL = re.compile(r"""\bb['"]""")


class _Elided:
    """Stands for a bytes value: its repr is ``bytes[N]``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"bytes[{self.size}]"


def elide(value: Any) -> Any:
    """``value`` with every bytes value (at any depth in lists and maps) replaced by ``bytes[N]``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return _Elided(len(value))
    if isinstance(value, dict):
        return {k: elide(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [elide(v) for v in value]
    return value


def call_string(job: Any) -> str:
    """``worker.tasks.classify(image=bytes[12345], meta={...})``: the job's call, bytes elided."""
    from rq.utils import get_call_string

    return get_call_string(job.func_name, elide(list(job.args)), elide(job.kwargs), max_length=ARG_CHARS) or ""


def job_description(job: Any, show_full_args: bool) -> str:
    """The job's own description (``classify 12345 bytes``), or its call with bytes elided when full
    arguments are asked for or the description holds a bytes literal (plain RQ's default)."""
    text = job.description or ""
    if show_full_args or _BYTES_LITERAL.search(text):
        text = call_string(job)
    if len(text) > DESCRIPTION_CHARS:
        text = text[: DESCRIPTION_CHARS - 1] + "…"
    return text  # escaped with every other string of the JSON it goes into (``escaped``)


def escaped(value: Any) -> Any:
    """Every string of a JSON value, keys too, HTML-escaped. rq-dashboard's pages insert its data routes' values
    as HTML (underscore's ``<%= %>`` does not escape), and job meta, results, errors, ids and queue names are
    anyone's to write who may enqueue: unescaped, a meta of ``<img src=x onerror=...>`` would run script in the
    dashboard's own origin, past its guard."""
    if isinstance(value, str):
        return html.escape(value, quote=True)
    if isinstance(value, dict):
        return {escaped(k): escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escaped(v) for v in value]
    return value


def _escape_json(app: Any) -> None:
    """Escape every JSON answer's strings (``escaped``) before it leaves the app."""
    from flask import Response

    def escape(response: Response) -> Response:
        if response.mimetype == "application/json" and not response.direct_passthrough:
            data = json.loads(response.get_data())
            safe = escaped(data)
            if safe != data:  # only what needed it is written again (as Flask's jsonify writes it)
                response.set_data(json.dumps(safe, separators=(",", ":")) + "\n")
        return response

    app.after_request(escape)


class _MetaEncoder(json.JSONEncoder):
    """The dashboard's encoder for job meta: bytes as ``bytes[N]``."""

    def default(self, o: Any) -> Any:
        if isinstance(o, bytes | bytearray | memoryview):
            return repr(_Elided(len(o)))
        return super().default(o)


def _configure_rq(web: Any) -> None:
    """Point rq-dashboard's readers at msgpack, and its description helpers at ours."""
    from flask import current_app
    from rq import serializers

    web.config.serializer = MsgpackSerializer
    serializers.PickleSerializer = MsgpackSerializer  # RQ's fallback in this process: never unpickle

    def format_job_description(job: Any) -> str:
        return job_description(job, bool(current_app.config.get("RQ_DASHBOARD_SHOW_FULL_ARGS")))

    def serialize_current_job(job: Any) -> Any:
        if job is None:
            return "idle"
        return {
            "job_id": job.id,
            "description": format_job_description(job),
            "created_at": web.serialize_date(job.created_at),
            "call_string": call_string(job),
        }

    web.format_job_description = format_job_description
    web.serialize_current_job = serialize_current_job


def create_app(
    redis_urls: list[str],
    *,
    show_full_args: bool = False,
    username: str | None = None,
    password: str | None = None,
    poll_interval_ms: int = 2500,
    allowed_hosts: Iterable[str] | None = None,
) -> Any:
    """rq-dashboard's Flask app on ``redis_urls`` (one dashboard instance per URL, e.g. per shard),
    reading our msgpack jobs, behind the guard: ``allowed_hosts`` (default: loopback names with the
    default port), basic auth when ``password`` is set (user ``username``, default ``admin``).
    Changes RQ's fallback serializer in this process (see the module doc)."""
    try:
        from rq_dashboard import web
        from rq_dashboard.cli import make_flask_app
    except ImportError as exc:
        raise SystemExit(
            f"dashboard: rq-dashboard is not installed ({exc}): pip install 'adclassify[dashboard]'"
        ) from exc
    hosts = default_allowed_hosts(DEFAULT_BIND, DEFAULT_PORT) if allowed_hosts is None else allowed_hosts
    guard = Guard.build(hosts, password=password, username=username)
    _configure_rq(web)
    # No credentials to rq-dashboard: its basic auth hooks its module-level blueprint (once per app
    # built, never removed) and compares with ``!=``; the guard's auth covers every route instead.
    app = make_flask_app(None, None, None, "")
    install(app, guard)
    _escape_json(app)
    install_state_routes(app, len(redis_urls))  # requeue by our script; no state change across shards
    app.config.update(
        RQ_DASHBOARD_REDIS_URL=tuple(redis_urls),
        RQ_DASHBOARD_SHOW_FULL_ARGS=show_full_args,
        RQ_DASHBOARD_JSON_ENCODER=_MetaEncoder,
        RQ_DASHBOARD_POLL_INTERVAL=poll_interval_ms,
    )
    flask_default = app.json.default
    app.json.default = lambda o: repr(_Elided(len(o))) if isinstance(o, bytes | bytearray) else flask_default(o)
    web.setup_rq_connection(app)
    return app


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``dashboard``: its own options (the Redis URL is the CLI's ``--redis-url``)."""
    p = sub.add_parser(
        "dashboard",
        help="rq-dashboard on our msgpack jobs (needs the dashboard extra)",
        description="Serve rq-dashboard (queues, jobs, results, workers) set up for our msgpack jobs. "
        "A comma-separated --redis-url gives one dashboard instance per shard. State changes (requeue, "
        "delete, empty) are POST only and refused from other sites; see docs/dashboard.md.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help=f"address to listen on (default {DEFAULT_BIND}); beyond loopback (0.0.0.0 in a container) "
        f"it needs {PASSWORD_ENV}",
    )
    p.add_argument("--show-full-args", action="store_true", help="show each job's call (image bytes still elided)")
    p.add_argument(
        "--username",
        help=f"HTTP basic auth user (default {DEFAULT_USERNAME}); the password comes from {PASSWORD_ENV}, "
        "which turns basic auth on for every page",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="HOST[:PORT]",
        help="a Host header this dashboard answers to, with its port unless it is the scheme's default "
        "(e.g. dash.example.com behind a proxy on 443); repeatable; else env "
        f"{ALLOWED_HOSTS_ENV}, comma-separated; default: the --bind address, localhost, 127.0.0.1 and "
        "[::1], each with --port",
    )
    return p


def startup_problem(bind: str, username: str | None, password: str | None) -> str | None:
    """Why the dashboard must not start with these settings (one line), or ``None``."""
    if username and not password:
        return f"--username needs {PASSWORD_ENV} in the environment"
    if not password and not is_loopback(bind):
        return (
            f"--bind {bind} reaches beyond this host and the dashboard can requeue, delete and empty "
            f"queues: set {PASSWORD_ENV} (HTTP basic auth) or bind 127.0.0.1"
        )
    return None


def run(redis_url: str, args: argparse.Namespace, password: str | None = None) -> int:
    """Serve the dashboard until interrupted (Flask's threaded server: an operator's tool, not a site).
    Returns 2, saying why in one line, when the settings are unsafe or an allowed host is malformed."""
    urls = split_urls(redis_url)  # a Sentinel URL's own commas stay inside it (rq-dashboard reads it natively)
    env_hosts = [h for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]
    hosts = args.allowed_host or env_hosts or default_allowed_hosts(args.bind, args.port)
    problem = startup_problem(args.bind, args.username, password)
    try:
        Guard.build(hosts)  # a malformed --allowed-host: one line, not a traceback
    except ValueError as exc:
        problem = problem or str(exc)
    if problem:
        print(f"python -m producer dashboard: {problem}", file=sys.stderr)
        return 2
    app = create_app(
        urls, show_full_args=args.show_full_args, username=args.username, password=password, allowed_hosts=hosts
    )
    auth = "basic auth" if password else "no auth"
    print(
        f"rq-dashboard for our msgpack jobs on http://{args.bind}:{args.port}/ ({len(urls)} Redis, {auth}; "
        f"hosts: {', '.join(sorted(hosts))})",
        flush=True,
    )
    app.run(host=args.bind, port=args.port, threaded=True)
    return 0

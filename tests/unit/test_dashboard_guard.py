"""The dashboard's guard, in process (Flask's test client, fakeredis): other sites can't change state,
GET never changes state, only allowed Host names are answered, basic auth covers every route, and the
dashboard won't listen beyond loopback without a password."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from rq import Queue, serializers

from producer.__main__ import main
from producer.dashboard import create_app
from producer.dashboard_guard import Guard, default_allowed_hosts, is_loopback, normalize_allowed_host
from producer.wire.serializer import MsgpackSerializer

web = pytest.importorskip("rq_dashboard.web", reason="rq-dashboard is not installed (pip install -e '.[dashboard]')")

OWN = "http://127.0.0.1:9181"
EVIL = "https://evil.example"
MARKER = {"X-Requested-With": "XMLHttpRequest"}
STATE_CHANGES = ("POST", "PUT", "DELETE", "PATCH")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One in-memory Redis behind every dashboard instance; RQ's and rq-dashboard's module settings
    that ``create_app`` changes are put back after the test."""
    server = fakeredis.FakeRedis()
    monkeypatch.setattr(web, "from_url", lambda *args, **kwargs: (None, server))
    for name in ("format_job_description", "serialize_current_job"):
        monkeypatch.setattr(web, name, getattr(web, name))
    monkeypatch.setattr(web.config, "serializer", web.config.serializer)
    monkeypatch.setattr(serializers, "PickleSerializer", serializers.PickleSerializer)
    return server


@pytest.fixture
def make_client(fake: Any) -> Iterator[Any]:
    def make(**options: Any) -> Any:
        return create_app(["redis://127.0.0.1:1/0"], **options).test_client()

    yield make


@pytest.fixture
def client(make_client: Any) -> Any:
    return make_client()


@pytest.fixture
def queue(fake: Any) -> Queue:
    return Queue("classify", connection=fake, serializer=MsgpackSerializer)


def failed_job(queue: Queue) -> str:
    job = queue.enqueue("worker.tasks.classify", kwargs={"image": b"\xff\xd8", "meta": {}})
    queue.remove(job)
    queue.failed_job_registry.add(job, exc_string="unsupported_image")
    return job.id


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": EVIL, **MARKER},
        {"Origin": "null"},  # a sandboxed frame, or a page with no-referrer
        {"Origin": "http://127.0.0.1:8080"},  # another local service is another site
        {"Referer": EVIL + "/attack.html"},
        {},  # an old browser's form: neither header, no marker
    ],
    ids=["foreign-origin", "foreign-origin-with-marker", "null-origin", "other-port", "foreign-referer", "bare"],
)
def test_a_cross_site_post_is_refused_and_requeues_nothing(client, queue, headers):
    job_id = failed_job(queue)
    reply = client.post("/requeue/classify", base_url=OWN, headers=headers)
    assert reply.status_code == 403
    assert queue.failed_job_registry.get_job_ids() == [job_id] and queue.count == 0


def test_a_cross_site_form_cannot_empty_the_queue(client, queue):
    queue.enqueue("worker.tasks.classify", kwargs={"image": b"x", "meta": {}})
    reply = client.post("/queue/classify/queued/empty", base_url=OWN, headers={"Origin": EVIL})
    assert reply.status_code == 403 and queue.count == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": OWN, **MARKER},  # what jQuery's $.post sends from the dashboard's own page
        {"Origin": "http://localhost:9181"},
        {"Referer": OWN + "/0/view/jobs/classify/failed/8/asc/1"},
        MARKER,  # neither header, but a custom header no cross-site form or image can set
    ],
    ids=["jquery", "origin-localhost", "own-referer", "marker-only"],
)
def test_the_dashboards_own_post_changes_state(client, queue, headers):
    # (a delete: a requeue, or an empty, runs a Lua script, which fakeredis lacks here; the process test
    # tests/process/test_dashboard.py requeues through the dashboard on a real Redis)
    job_id = queue.enqueue("worker.tasks.classify", kwargs={"image": b"x", "meta": {}}).id
    reply = client.post(f"/job/{job_id}/delete", base_url=OWN, headers=headers)
    assert reply.status_code == 200 and queue.fetch_job(job_id) is None


def test_the_dashboards_own_post_deletes_a_job_and_a_cross_site_one_does_not(client, queue):
    job_id = queue.enqueue("worker.tasks.classify", kwargs={"image": b"x", "meta": {}}).id
    assert client.post(f"/job/{job_id}/delete", base_url=OWN, headers={"Origin": EVIL}).status_code == 403
    assert queue.fetch_job(job_id) is not None
    reply = client.post(f"/job/{job_id}/delete", base_url=OWN, headers={"Origin": OWN, **MARKER})
    assert reply.status_code == 200 and queue.fetch_job(job_id) is None


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_get_never_requeues_even_from_the_dashboards_own_origin(client, queue, method):
    job_id = failed_job(queue)
    reply = client.open("/requeue/classify", method=method, base_url=OWN, headers={"Origin": OWN, **MARKER})
    assert reply.status_code == 405 and reply.headers["Allow"] == "POST"
    assert queue.failed_job_registry.get_job_ids() == [job_id] and queue.count == 0


def test_no_route_that_changes_state_answers_get(client):
    app = client.application
    writers = [r for r in app.url_map.iter_rules() if set(r.methods or ()) & set(STATE_CHANGES)]
    assert {r.endpoint for r in writers} >= {"rq_dashboard.requeue_all", "rq_dashboard.empty_queue"}
    for rule in writers:
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", "x")
        reply = client.get(path, base_url=OWN)
        assert reply.status_code == 405, (rule.rule, reply.status_code)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9181", "127.0.0.1:9182", "localhost"])
def test_an_unknown_host_is_refused_before_anything_is_read(client, host):
    assert client.get("/0/data/queues.json", base_url=f"http://{host}").status_code == 421
    assert client.post("/requeue/classify", base_url=f"http://{host}", headers=MARKER).status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:9181", "localhost:9181", "[::1]:9181", "LOCALHOST:9181"])
def test_the_default_hosts_are_answered(client, queue, host):
    queue.enqueue("worker.tasks.classify", kwargs={"image": b"x", "meta": {}})
    reply = client.get("/0/data/queues.json", base_url=f"http://{host}")
    assert reply.status_code == 200 and reply.get_json()["queues"][0]["name"] == "classify"


def test_allowed_hosts_replace_the_defaults_and_a_bare_name_means_the_default_port(make_client):
    client = make_client(allowed_hosts=["dash.example.com", "10.0.0.5:9181"])
    assert client.get("/0/data/queues.json", base_url="https://dash.example.com").status_code == 200
    assert client.get("/0/data/queues.json", base_url="http://10.0.0.5:9181").status_code == 200
    assert client.get("/0/data/queues.json", base_url="http://dash.example.com:9181").status_code == 421
    assert client.get("/0/data/queues.json", base_url=OWN).status_code == 421
    own = {"Origin": "https://dash.example.com"}
    reply = client.post("/job/absent/delete", base_url="https://dash.example.com", headers=own)
    assert reply.status_code == 200  # let through (the job's absence is the view's answer)


@pytest.mark.parametrize(
    "path", ["/", "/0/data/queues.json", "/static/js/jquery-3.5.1.min.js", "/favicon.ico", "/nowhere"]
)
def test_with_a_password_every_route_needs_basic_auth(make_client, path):
    client = make_client(password="s3cret")
    for headers in ({}, basic("admin", "wrong"), basic("root", "s3cret")):
        reply = client.get(path, base_url=OWN, headers=headers)
        assert reply.status_code == 401 and reply.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.get(path, base_url=OWN, headers=basic("admin", "s3cret")).status_code in (200, 404)


def test_basic_auth_does_not_let_a_cross_site_post_through(make_client, queue):
    client = make_client(password="s3cret", username="ops")
    job_id = failed_job(queue)
    auth = basic("ops", "s3cret")  # a browser re-sends remembered credentials cross-site
    assert client.post("/requeue/classify", base_url=OWN, headers={**auth, "Origin": EVIL}).status_code == 403
    assert queue.failed_job_registry.get_job_ids() == [job_id]
    assert client.post(f"/job/{job_id}/delete", base_url=OWN, headers={**auth, "Origin": OWN}).status_code == 200
    assert queue.fetch_job(job_id) is None


def test_pages_cannot_be_framed(client):
    reply = client.get("/0/data/queues.json", base_url=OWN)
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "argv",
    [["--bind", "0.0.0.0"], ["--bind", "::"], ["--bind", "10.1.2.3"], ["--bind", "dash-host"]],
)
def test_binding_beyond_loopback_without_a_password_exits_2_with_one_line(monkeypatch, capsys, argv):
    monkeypatch.delenv("DASHBOARD_PASSWORD", raising=False)
    assert main(["dashboard", "--redis-url", "redis://127.0.0.1:1/0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DASHBOARD_PASSWORD" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [(["--username", "ops"], "DASHBOARD_PASSWORD"), (["--allowed-host", "dash:http"], "bad port")],
)
def test_other_unsafe_or_malformed_settings_exit_2_with_one_line(monkeypatch, capsys, argv, says):
    monkeypatch.delenv("DASHBOARD_PASSWORD", raising=False)
    assert main(["dashboard", "--redis-url", "redis://127.0.0.1:1/0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        *[(bind, True) for bind in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")],
        *[(bind, False) for bind in ("0.0.0.0", "", "::", "192.168.1.9", "dash-host")],
    ],
)
def test_only_loopback_binds_count_as_this_host_only(bind, loopback):
    assert is_loopback(bind) is loopback


def test_the_default_allow_list_is_the_bind_address_and_the_loopback_names_with_the_port():
    expected = {"0.0.0.0:9181", "localhost:9181", "127.0.0.1:9181", "[::1]:9181"}
    assert set(default_allowed_hosts("0.0.0.0", 9181)) == expected
    assert Guard.build(default_allowed_hosts("::1", 80)).allowed_hosts == {"[::1]:80", "localhost:80", "127.0.0.1:80"}


@pytest.mark.parametrize(
    ("entry", "host"),
    [
        ("Dash.Example.com", "dash.example.com"),
        ("dash:9181", "dash:9181"),
        ("::1", "[::1]"),
        ("[::1]:9181", "[::1]:9181"),
        ("10.0.0.5:9181", "10.0.0.5:9181"),
    ],
)
def test_allowed_hosts_are_spelled_as_host_headers(entry, host):
    assert normalize_allowed_host(entry) == host

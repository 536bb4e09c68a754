"""Images by reference, pure: the job contract, the address checks, the allow-list, redirects and answers."""

from __future__ import annotations

import os

import pytest

from producer.wire.jobs import ImageRef, ProtocolError, image_source, job_kwargs, parse_job_args
from worker.config import settings_from
from worker.decode.urls import FetchPolicy, Prefix, Target, answer_error, public_address
from worker.errors import JobError
from worker.jobs import checked_args


def refused(call, *args) -> JobError:
    with pytest.raises(JobError) as err:
        call(*args)
    return err.value


# -- the job contract ------------------------------------------------------------------------------
def test_a_job_by_reference_carries_image_url_instead_of_image():
    kwargs = job_kwargs(ImageRef("https://cdn.example.com/a.jpg"), {"ad": 1})
    assert kwargs == {"image_url": "https://cdn.example.com/a.jpg", "meta": {"ad": 1}}
    assert parse_job_args((), kwargs) == (ImageRef("https://cdn.example.com/a.jpg"), {"ad": 1})
    assert checked_args((), {"image": b"x"}) == (b"x", {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": b"x", "image_url": "https://a/b.jpg"}, "not both"),
        ({"meta": {}}, "missing job argument: image"),
        ({"image_url": 7}, "image_url must be a string"),
        ({"image_url": "ftp://a/b.jpg"}, "must be https://, http:// or file://"),
        ({"image_url": "https:///b.jpg"}, "has no host"),
        ({"image_url": "https://a/" + "x" * 5000}, "over the limit"),
    ],
)
def test_image_url_arguments_that_break_the_contract_are_named(kwargs, message):
    with pytest.raises(ProtocolError, match=message):
        parse_job_args((), kwargs)


def test_enqueue_takes_exactly_one_of_image_and_image_url():
    assert image_source(b"x", None) == b"x"
    assert image_source(None, "https://a/b.jpg") == ImageRef("https://a/b.jpg")
    for image, url in ((None, None), (b"x", "https://a/b.jpg")):
        with pytest.raises(ProtocolError, match="exactly one"):
            image_source(image, url)


# -- addresses -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1%eth0",
        "fc00::1",
        "fd12::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::a00:1",
    ],
)
def test_loopback_private_shared_link_local_multicast_and_embedded_ones_are_not_public(address):
    assert not public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_global_unicast_addresses_are_public(address):
    assert public_address(address)


# -- the allow-list --------------------------------------------------------------------------------
def test_an_empty_allow_list_refuses_every_url():
    policy = FetchPolicy.parse("", "")
    assert not policy.enabled
    assert refused(policy.check, "https://cdn.example.com/a.jpg").kind == "forbidden_url"


@pytest.mark.parametrize("prefix", ["ftp://x/", "https://user:pw@x/", "https://x/?q=1", "x.example.com", "https:///a/"])
def test_prefixes_that_cannot_be_matched_exactly_are_refused_at_start(prefix):
    with pytest.raises(ValueError, match="--fetch-allow"):
        Prefix.parse(prefix)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cdn.example.com/ads/a.jpg", True),
        ("https://CDN.example.com./ads/a.jpg?w=1", True),
        ("https://cdn.example.com:443/ads/a.jpg", True),
        ("https://cdn.example.com:8443/ads/a.jpg", False),
        ("http://cdn.example.com/ads/a.jpg", False),
        ("https://cdn.example.com/other/a.jpg", False),
        ("https://cdn.example.com.evil.net/ads/a.jpg", False),
        ("https://cdn.example.com@evil.net/ads/a.jpg", False),
        ("https://evil.net/ads/a.jpg#https://cdn.example.com/ads/", False),
        ("https://cdn.example.com/ads/../admin", False),
        ("https://cdn.example.com/ads/%2e%2e/admin", False),
        ("https://cdn.example.com/ads/..%5cadmin", False),
    ],
)
def test_a_url_passes_only_under_a_prefix_by_scheme_host_port_and_path(url, allowed):
    policy = FetchPolicy.parse("https://cdn.example.com/ads/")
    if allowed:
        assert policy.check(url).host == "cdn.example.com"
    else:
        assert refused(policy.check, url).kind == "forbidden_url"


def test_a_scheme_prefix_allows_any_public_host_but_no_private_address():
    policy = FetchPolicy.parse("https://,http://")
    target = policy.check("https://images.example.org/x.jpg?v=2")
    assert target == Target("https://images.example.org/x.jpg?v=2", "https", "images.example.org", 443, "/x.jpg?v=2")
    for url in (
        "http://127.0.0.1:8080/x.jpg",
        "http://[::1]/x.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/x.jpg",
        "http://[::ffff:7f00:1]/x.jpg",
    ):
        assert refused(policy.check, url).kind == "forbidden_url", url
    assert policy.check("http://8.8.8.8/x.jpg").named is False


def test_a_prefix_that_names_a_private_address_allows_that_address_only():
    policy = FetchPolicy.parse("http://127.0.0.1:8080/, http://localhost:8080/")
    assert policy.check("http://127.0.0.1:8080/img/a.jpg").named
    assert refused(policy.check, "http://127.0.0.1:9090/img/a.jpg").kind == "forbidden_url"
    # a name is not an address: what it resolves to is checked at connect time, and loopback is refused there
    assert not policy.check("http://localhost:8080/a.jpg").named


# -- redirects -------------------------------------------------------------------------------------
def test_a_redirect_is_followed_only_inside_the_allow_list():
    policy = FetchPolicy.parse("https://cdn.example.com/, https://img.example.net/")
    here = policy.check("https://cdn.example.com/ads/a.jpg")
    assert policy.redirect(here, "b.jpg").url == "https://cdn.example.com/ads/b.jpg"
    assert policy.redirect(here, "/v2/a.jpg").url == "https://cdn.example.com/v2/a.jpg"
    assert policy.redirect(here, "https://img.example.net/a.jpg").host == "img.example.net"
    for location in (
        "https://evil.net/a.jpg",
        "http://cdn.example.com/a.jpg",
        "//evil.net/a.jpg",
        "file:///etc/passwd",
        "http://169.254.169.254/",
        "https://cdn.example.com@evil.net/",
    ):
        error = refused(policy.redirect, here, location)
        assert error.kind == "forbidden_url" and not error.retryable, location
    assert refused(policy.redirect, here, None).kind == "fetch_failed"


# -- answers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "headers", "kind", "retryable"),
    [
        (503, {}, "fetch_error", True),
        (500, {"Content-Type": "image/jpeg"}, "fetch_error", True),
        (404, {"Content-Type": "image/jpeg"}, "fetch_failed", False),
        (403, {}, "fetch_failed", False),
        (200, {"Content-Type": "text/html"}, "fetch_failed", False),
        (200, {}, "fetch_failed", False),
        (200, {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}, "fetch_failed", False),
        (200, {"Content-Type": "image/jpeg", "Content-Length": "2000"}, "fetch_failed", False),
    ],
)
def test_bad_answers_are_retryable_only_when_the_server_is_at_fault(status, headers, kind, retryable):
    error = answer_error("https://x/a.jpg", status, headers, max_bytes=1000)
    assert error is not None and (error.kind, error.retryable) == (kind, retryable)


def test_an_image_answer_within_the_limit_is_accepted():
    assert answer_error("https://x/a.jpg", 200, {"Content-Type": "Image/JPEG", "Content-Length": "1000"}, 1000) is None


# -- files -----------------------------------------------------------------------------------------
def test_file_urls_are_read_only_under_the_fetch_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    os.symlink(outside, root / "escape")
    policy = FetchPolicy.parse("", str(root))
    assert policy.enabled and policy.check(f"file://{root}/a.jpg").path == str(root.resolve() / "a.jpg")
    for url in (
        f"file://{outside}/a.jpg",
        f"file://{root}/../outside/a.jpg",
        f"file://{root}/escape/a.jpg",
        f"file://otherhost{root}/a.jpg",
        "file:///etc/passwd",
    ):
        assert refused(policy.check, url).kind == "forbidden_url", url
    assert refused(FetchPolicy.parse("https://", "").check, f"file://{root}/a.jpg").kind == "forbidden_url"
    with pytest.raises(ValueError, match="not a directory"):
        FetchPolicy.parse("", str(tmp_path / "nope"))


# -- settings ----------------------------------------------------------------------------------------
def test_fetch_flags_have_environment_twins_and_bad_values_stop_the_worker_at_start(tmp_path):
    import argparse

    from worker.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"WORKER_MODEL": "m.pt", "WORKER_FETCH_ALLOW": "https://cdn.example.com/", "WORKER_FETCH_THREADS": "3"}
    settings = settings_from(parser.parse_args(["--fetch-root", str(tmp_path)]), env)
    assert (settings.fetch_allow, settings.fetch_root, settings.fetch_threads) == (
        env["WORKER_FETCH_ALLOW"],
        str(tmp_path),
        3,
    )
    assert settings_from(parser.parse_args([]), {"WORKER_MODEL": "m.pt"}).fetch_allow == ""
    for argv in (
        ["--fetch-allow", "ftp://x/"],
        ["--fetch-root", str(tmp_path / "nope")],
        ["--fetch-threads", "0"],
        ["--fetch-timeout-s", "0"],
    ):
        with pytest.raises(SystemExit, match="fetch"):
            settings_from(parser.parse_args(argv), {"WORKER_MODEL": "m.pt"})

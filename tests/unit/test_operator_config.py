"""The operator's settings (``raykube_operator.config``): the liveness endpoint's URL is
checked before kopf gets it, and whether its port is free before anything starts."""

from __future__ import annotations

import socket

import pytest

from raykube_operator.config import OperatorConfig, liveness_endpoint


@pytest.mark.parametrize("raw", ["", "  ", "off", "OFF", "none", "false", "0", None])
def test_liveness_off(raw):
    assert liveness_endpoint(raw) is None


@pytest.mark.parametrize("raw", ["http://0.0.0.0:8080/healthz", "http://127.0.0.1:1/",
                                 "http://localhost:65535/a/b", "http://[::1]:8080/healthz",
                                 "HTTP://127.0.0.1:8080/healthz"])
def test_a_valid_liveness_url_is_kept(raw):
    assert liveness_endpoint(f" {raw} ") == raw


@pytest.mark.parametrize("raw,why", [
    ("foo", "expected http://HOST:PORT/PATH"),  # kopf: Exception: Unsupported scheme: foo
    ("8080", "expected http://HOST:PORT/PATH"),
    ("127.0.0.1:8080/healthz", "expected http://HOST:PORT/PATH"),
    ("https://0.0.0.0:8443/healthz", "plain http"),
    ("tcp://0.0.0.0:8080/healthz", "expected http://HOST:PORT/PATH"),
    ("http:///healthz", "expected http://HOST:PORT/PATH"),
    ("http://:8080/healthz", "no host"),
    ("http://127.0.0.1/healthz", "no port"),  # kopf: 8080, silently
    ("http://127.0.0.1:/healthz", "no port"),
    ("http://[::1]/healthz", "no port"),
    # kopf: ValueError: Port could not be cast to integer value as 'notaport'
    ("http://127.0.0.1:notaport/healthz", "the port 'notaport' is not a number"),
    ("http://127.0.0.1:-1/healthz", "the port '-1' is not a number"),
    ("http://127.0.0.1:0/healthz", "the port 0 is out of range (1-65535)"),  # kopf: 8080
    ("http://127.0.0.1:65536/healthz", "the port 65536 is out of range (1-65535)"),
    ("http://127.0.0.1:8080", "no path"),
    ("http://[::1:8080/healthz", "Invalid IPv6 URL"),
])
def test_a_bad_liveness_url_is_one_line_naming_its_source(raw, why):
    for source in ("RAYKUBE_LIVENESS", "--liveness"):
        with pytest.raises(ValueError) as err:
            liveness_endpoint(raw, source)
        msg = str(err.value)
        assert msg.startswith(f"{source}={raw!r}: ") and why in msg, msg
        assert "\n" not in msg


def test_no_liveness_endpoint_unless_asked():
    """A local operator (``python -m raykube_operator -A``) served 404s on 0.0.0.0:8080 to
    a kubectl without KUBECONFIG (its fallback is localhost:8080): no default now."""
    assert OperatorConfig().liveness is None
    assert OperatorConfig.from_env({}).liveness is None
    got = OperatorConfig.from_env({"RAYKUBE_LIVENESS": "http://127.0.0.1:9/healthz"})
    assert got.liveness == "http://127.0.0.1:9/healthz"
    with pytest.raises(ValueError, match=r"^RAYKUBE_LIVENESS='foo': "):
        OperatorConfig.from_env({"RAYKUBE_LIVENESS": "foo"})


@pytest.fixture
def held_port():
    """A port something listens on (another operator's health endpoint)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_refused(held_port):
    from raykube_operator.preflight import PreflightError, check_liveness

    url = f"http://127.0.0.1:{held_port}/healthz"
    with pytest.raises(PreflightError) as err:
        check_liveness(url, "--liveness")
    assert str(err.value) == (f"--liveness={url!r}: 127.0.0.1:{held_port} is in use "
                              f"(another operator?): pick another port, or 'off'")
    # the wildcard address conflicts too (aiohttp would fail the same way)
    with pytest.raises(PreflightError, match="is in use"):
        check_liveness(f"http://0.0.0.0:{held_port}/healthz")


def test_a_free_port_passes_and_stays_free():
    from raykube.ports import free_port
    from raykube_operator.preflight import check_liveness

    port = free_port()
    check_liveness(f"http://127.0.0.1:{port}/healthz")
    check_liveness(f"http://127.0.0.1:{port}/healthz")  # the check's socket is closed
    with socket.socket() as sock:  # and kopf can bind it after the check
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_an_address_of_another_machine_is_refused():
    from raykube_operator.preflight import PreflightError, check_liveness

    # TEST-NET-1 (RFC 5737): never an address of this machine
    with pytest.raises(PreflightError, match="192.0.2.1 is no address of this machine"):
        check_liveness("http://192.0.2.1:8080/healthz")


@pytest.mark.parametrize("argv,env,expected", [
    (["--liveness", "foo"], {}, "--liveness='foo': expected http://HOST:PORT/PATH"),
    ([], {"RAYKUBE_LIVENESS": "http://127.0.0.1:x/h"}, "RAYKUBE_LIVENESS='http://127.0.0.1:x/h'"),
    # RAYKUBE_LIVENESS is a setting: a bad value is refused even under --liveness
    (["--liveness", "off"], {"RAYKUBE_LIVENESS": "foo"}, "RAYKUBE_LIVENESS='foo'"),
])
def test_the_entry_point_refuses_a_bad_liveness_before_kopf(monkeypatch, capsys, argv, env,
                                                             expected):
    import kopf

    from raykube_operator import __main__ as entry

    monkeypatch.setattr(kopf, "run", lambda **kw: pytest.fail("kopf started"))
    monkeypatch.setattr(kopf, "configure", lambda **kw: pytest.fail("kopf configured"))
    monkeypatch.delenv("RAYKUBE_LIVENESS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert entry.main(["-A", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raykube operator: {expected}") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv,env,expected", [
    ([], {}, None),  # no endpoint unless asked
    ([], {"RAYKUBE_LIVENESS": "http://127.0.0.1:{port}/healthz"},
     "http://127.0.0.1:{port}/healthz"),
    (["--liveness=http://127.0.0.1:{port}/h"], {"RAYKUBE_LIVENESS": "http://127.0.0.1:9/x"},
     "http://127.0.0.1:{port}/h"),  # the flag wins
    (["--liveness=off"], {"RAYKUBE_LIVENESS": "http://127.0.0.1:{port}/healthz"}, None),
])
def test_the_endpoint_kopf_is_given(monkeypatch, argv, env, expected):
    import kopf

    from raykube.ports import free_port
    from raykube_operator import __main__ as entry

    port = free_port()
    seen = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setenv("RAYKUBE_PREFLIGHT", "0")  # no API server here
    monkeypatch.setenv("RAYKUBE_NAMESPACES", "")  # main() sets it: restored after the test
    monkeypatch.delenv("RAYKUBE_LIVENESS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=port))
    assert entry.main(["-A", *(a.format(port=port) for a in argv)]) == 0
    assert seen["liveness_endpoint"] == (expected and expected.format(port=port))


def test_the_probes_access_lines_stay_out_of_the_log_unless_verbose(monkeypatch):
    """kubelet probes the liveness endpoint every few seconds; aiohttp's access line for
    each was most of the operator pod's log (seen on the real node)."""
    import logging

    import kopf

    from raykube_operator import __main__ as entry

    monkeypatch.setattr(kopf, "run", lambda **kw: None)
    monkeypatch.setenv("RAYKUBE_PREFLIGHT", "0")
    monkeypatch.setenv("RAYKUBE_NAMESPACES", "")
    access = logging.getLogger("aiohttp.access")
    monkeypatch.setattr(access, "level", logging.NOTSET)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)
    assert entry.main(["-A"]) == 0
    assert not access.isEnabledFor(logging.INFO) and access.isEnabledFor(logging.WARNING)

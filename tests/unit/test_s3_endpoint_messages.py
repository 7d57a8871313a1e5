"""What a new user's bad S3 setting prints: one line naming it, no secret in it, and no
request sent where the setting alone tells (no S3 server needed: the endpoints that
must answer are loopback servers started here).

Found by a new-user probe: a password in AWS_ENDPOINT_URL was echoed under 'cannot
reach'; a query was named as '()' and a fragment passed; an empty AWS_ENDPOINT_URL meant
AWS without a word; a bad host or region came back in the AWS SDK's words; https:// on a
plain-HTTP port said 'cannot reach'; half a key pair said 'no credentials are set'."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading

import pytest

from raykube import s3

SECRET = "s3cr3t/PW+x"


def refused(env: dict[str, str], uri: str = "s3://bkt/runs") -> str:
    """The line ``check`` raises for these settings (no request may be sent)."""
    settings = s3.S3Settings.from_env(env)
    with pytest.raises(s3.S3Unavailable) as info:
        s3.check(uri, settings=settings)
    with pytest.raises(s3.S3Unavailable):
        settings.filesystem()  # what Ray Train and the datasets get: the same refusal
    line = str(info.value)
    assert "\n" not in line and not info.value.transient, line
    return line


KEYS = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}


# --------------------------------------------------------------- 1. credentials in the URL
@pytest.mark.parametrize("endpoint,shown", [
    (f"http://user:{SECRET}@127.0.0.1:19000", "'http://user:***@127.0.0.1:19000'"),
    (f"https://user:{SECRET}@minio.storage", "'https://user:***@minio.storage'"),
    (f"user:{SECRET}@127.0.0.1:19000", "'user:***@127.0.0.1:19000'"),  # no scheme either
    (f"http://user:{SECRET}@[::1", "'http://user:***@[::1'"),  # urlsplit would raise
    ("http://user@127.0.0.1:19000", "'http://user@127.0.0.1:19000'"),
])
def test_credentials_in_the_endpoint_are_refused_masked(endpoint, shown, no_requests):
    """Was 'cannot reach the S3 endpoint http://user:pw@...': the password echoed, and
    the wrong cause named."""
    line = refused({"AWS_ENDPOINT_URL": endpoint, **KEYS})
    assert line == (f"s3://bkt/runs: AWS_ENDPOINT_URL {shown}: credentials do not go in the "
                    "endpoint URL; give scheme://host[:port] and set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY instead"), line
    assert SECRET not in line and "s3cr3t" not in line
    assert "s3cr3t" not in s3.S3Settings.from_env({"AWS_ENDPOINT_URL": endpoint}).where


def test_no_secret_in_the_settings_repr():
    """A repr in a log or a Ray error (the settings are pickled to workers) names no key."""
    text = repr(s3.S3Settings.from_env({**KEYS, "AWS_SECRET_ACCESS_KEY": SECRET,
                                        "AWS_SESSION_TOKEN": "tok3n"}))
    assert SECRET not in text and "tok3n" not in text


# ------------------------------------------------------------- 2. query and fragment
@pytest.mark.parametrize("endpoint,words", [
    ("http://127.0.0.1:19000?x=1", "an endpoint takes no query or fragment (?x=1 would be ignored)"),
    ("http://127.0.0.1:19000#f", "an endpoint takes no query or fragment (#f would be ignored)"),
    ("http://127.0.0.1:19000/?x=1", "an endpoint takes no query or fragment (/?x=1 would be ignored)"),
    ("http://127.0.0.1:19000/b?x=1", "S3 clients put the bucket in the path (/b?x=1 would be ignored)"),
])
def test_a_query_or_fragment_is_named(endpoint, words, no_requests):
    """A query was 'the path ( would be ignored)'; a fragment passed without a word."""
    line = refused({"AWS_ENDPOINT_URL": endpoint, **KEYS})
    assert line == f"s3://bkt/runs: AWS_ENDPOINT_URL {endpoint!r}: give scheme://host:port only; {words}"
    assert "()" not in line


# ---------------------------------------------------------------- 3. empty endpoint
@pytest.mark.parametrize("env,var", [
    ({"AWS_ENDPOINT_URL": ""}, "AWS_ENDPOINT_URL"),
    ({"AWS_ENDPOINT_URL": "  "}, "AWS_ENDPOINT_URL"),
    ({"AWS_ENDPOINT_URL_S3": ""}, "AWS_ENDPOINT_URL_S3"),
])
def test_an_empty_endpoint_is_refused_before_any_request(env, var, no_requests):
    """It meant AWS S3 without a word: a Secret with an empty AWS_ENDPOINT_URL sent the
    run's credentials to amazonaws.com. ``no_requests`` proves nothing went out."""
    assert refused({**env, **KEYS}) == (f"s3://bkt/runs: {var} is set but empty: unset it "
                                        "for AWS S3, or give scheme://host[:port]")


def test_unset_still_means_aws_and_an_empty_s3_variable_defers_to_the_other():
    assert s3.S3Settings.from_env(KEYS).problem() is None
    got = s3.S3Settings.from_env({"AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": "http://m:9000"})
    assert (got.endpoint, got.endpoint_var, got.problem()) == ("http://m:9000", "AWS_ENDPOINT_URL", None)


# --------------------------------------------------------------- 4. host and region
@pytest.mark.parametrize("host,words", [
    ("-bad-", "the host '-bad-' is not a DNS name (a label cannot start or end with '-')"),
    ("minio-.storage", "a label cannot start or end with '-'"),
    ("a..b", "the host 'a..b' is not a DNS name (labels of 1 to 63 characters between dots, 253 in all)"),
    ("x" * 64 + ".storage", "labels of 1 to 63 characters"),
    ("999.1.1.1", "the host '999.1.1.1' is not an IPv4 address"),
    ("10.0.0", "the host '10.0.0' is not an IPv4 address"),
])
def test_a_host_that_is_no_dns_name_or_address_is_named(host, words, no_requests):
    """'-bad-' came back as 'AWS Error VALIDATION ... Invalid DNS Label found in URI
    host'; 'a..b' and '999.1.1.1' went to the resolver and read as 'cannot reach'."""
    line = refused({"AWS_ENDPOINT_URL": f"http://{host}:9000", **KEYS})
    assert f"AWS_ENDPOINT_URL 'http://{host}:9000': " in line and words in line, line


@pytest.mark.parametrize("host", ["minio.storage", "minio.storage.", "10.0.0.1", "localhost",
                                  "r2-1.example.com", "[::1]"])
def test_dns_names_and_addresses_pass(host):
    assert s3.S3Settings(endpoint=f"https://{host}:9000").problem() is None


def test_a_host_the_s3_client_refuses_anyway_is_one_line(monkeypatch):
    """An underscore passes our check (the tests allow ``minio_1``) but not the AWS SDK's:
    its 'Invalid DNS Label' is said in our words, naming the host."""
    settings = s3.S3Settings(endpoint="http://minio_1.storage:9000", **_keys())
    line = failure_line(monkeypatch, settings, "When listing objects under key 'runs/' in bucket "
                        "'bkt': AWS Error VALIDATION during ListObjectsV2 operation: Invalid DNS "
                        "Label found in URI host")
    assert line == ("s3://bkt/runs: AWS_ENDPOINT_URL 'http://minio_1.storage:9000': the S3 "
                    "client refuses the host 'minio_1.storage' (letters, digits and '-' between "
                    "dots; no '_')")


@pytest.mark.parametrize("env,var,value", [
    ({"AWS_REGION": "not a region"}, "AWS_REGION", "not a region"),
    ({"AWS_DEFAULT_REGION": "us_east_1"}, "AWS_DEFAULT_REGION", "us_east_1"),
    ({"AWS_REGION": "-x"}, "AWS_REGION", "-x"),
    ({"AWS_REGION": "us-east-1 "}, "AWS_REGION", "us-east-1 "),
])
def test_a_region_that_is_no_region_name_is_named(env, var, value, no_requests):
    """Was 'A region must be set when sending requests to S3.' (the AWS SDK's words,
    naming neither the variable nor the value), with or without an endpoint."""
    for endpoint in ({}, {"AWS_ENDPOINT_URL": "http://127.0.0.1:19000"}):
        assert refused({**env, **endpoint, **KEYS}) == (
            f"s3://bkt/runs: {var} {value!r} is not a region name (letters, digits and "
            "'-', e.g. us-east-1; R2 wants auto)")


@pytest.mark.parametrize("region", ["us-east-1", "auto", "eu-central-2", "minio", "US-EAST-1"])
def test_region_names_pass(region):
    assert s3.S3Settings.from_env({"AWS_REGION": region}).problem() is None


# ------------------------------------------------------------ 5. half a key pair
@pytest.mark.parametrize("have,missing", [("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                          ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")])
def test_half_a_key_pair_names_the_missing_half(have, missing, no_requests):
    """Was 'access denied by ... and no credentials are set', with one of them set."""
    for env in ({have: "x"}, {have: "x", missing: ""}):
        assert refused(env) == (f"s3://bkt/runs: {have} is set but {missing} is not (or is "
                                "empty): set both, or neither where the machine has a role")
    assert s3.S3Settings.from_env({}).problem() is None  # a machine role: neither


# ---------------------------------------------------------- 5. http:// and https:// mixed
def _keys() -> dict[str, str]:
    return {"access_key": "a", "secret_key": "b"}


def failure_line(monkeypatch, settings: s3.S3Settings, text: str) -> str:
    """The line ``check`` says when the first request fails with pyarrow's ``text``."""
    class Failing:
        def get_file_info(self, *_):
            raise OSError(text)

    monkeypatch.setattr(s3.S3Settings, "filesystem", lambda *_, **__: Failing())
    with pytest.raises(s3.S3Unavailable) as info:
        s3.check("s3://bkt/runs", settings=settings)
    return str(info.value)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.end_headers()
        self.wfile.write(b"<?xml version='1.0'?><ListBucketResult/>")

    def log_message(self, *_) -> None:
        pass


def _serve(context: ssl.SSLContext | None = None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    if context:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def plain_http():
    """A loopback HTTP server (no TLS): ``127.0.0.1:port``."""
    server = _serve()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_only(tmp_path):
    """A loopback HTTPS server with a self-signed certificate: ``127.0.0.1:port``."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command for a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _serve(context)
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def check_line(endpoint: str) -> s3.S3Unavailable:
    with pytest.raises(s3.S3Unavailable) as info:
        s3.check("s3://bkt/runs", settings=s3.S3Settings(endpoint=endpoint, **_keys()))
    assert "\n" not in str(info.value)
    return info.value


def test_https_on_a_plain_http_port_says_it_speaks_no_tls(plain_http):
    """Was 'cannot reach the S3 endpoint https://... (is it running...)' (curl's 'SSL
    connect error ... wrong version number'): it answered, in plain HTTP."""
    exc = check_line(f"https://{plain_http}")
    assert str(exc) == (f"s3://bkt/runs: the S3 endpoint https://{plain_http} does not speak TLS "
                        f"(https): use http://{plain_http} in AWS_ENDPOINT_URL")
    assert not exc.transient  # a retry meets the same answer


def test_http_on_a_tls_only_port_says_use_https(tls_only):
    """Plain HTTP on a TLS port: the server hangs up (curl's 'Recv failure: Connection
    reset'), which read as 'cannot reach'; a TLS handshake there tells them apart."""
    exc = check_line(f"http://{tls_only}")
    assert str(exc) == (f"s3://bkt/runs: the S3 endpoint http://{tls_only} speaks TLS: use "
                        f"https://{tls_only} in AWS_ENDPOINT_URL")
    assert not exc.transient


def test_an_untrusted_certificate_is_named_not_unreachable(tls_only):
    """Was 'cannot reach': curl's 'SSL peer certificate ... was not OK' is a network error."""
    line = str(check_line(f"https://{tls_only}"))
    assert line.startswith(f"s3://bkt/runs: the S3 endpoint https://{tls_only} sent a TLS "
                           "certificate this machine does not trust (self"), line  # OpenSSL's words


def test_a_dead_port_that_hung_up_is_still_unreachable(monkeypatch):
    """A reset from a port that speaks no TLS either stays 'cannot reach' (transient)."""
    from raykube.ports import free_port

    settings = s3.S3Settings(endpoint=f"http://127.0.0.1:{free_port()}", **_keys())
    line = failure_line(monkeypatch, settings, "AWS Error NETWORK_CONNECTION during "
                        "ListObjectsV2 operation: curlCode: 56, Failure when receiving data from "
                        "the peer; Details: Recv failure: Connection reset by peer")
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in line, line

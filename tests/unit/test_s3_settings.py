"""How raykube reads S3 settings (no server needed; the real-server tests are in
tests/integration/test_s3*.py)."""

from __future__ import annotations

import pytest

from raykube import s3
from raykube.commands.run import local_storage
from raykube.spec import parse_spec


def test_settings_come_from_the_standard_aws_variables():
    got = s3.S3Settings.from_env({"AWS_ENDPOINT_URL": "http://minio:9000/", "AWS_DEFAULT_REGION": "eu-west-1",
                                  "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert got == s3.S3Settings(endpoint="http://minio:9000", region="eu-west-1",
                                access_key="a", secret_key="b")
    # The S3-specific endpoint and AWS_REGION win, as in the AWS SDKs.
    got = s3.S3Settings.from_env({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2",
                                  "AWS_REGION": "r1", "AWS_DEFAULT_REGION": "r2"})
    assert (got.endpoint, got.region) == ("http://b:2", "r1")
    assert s3.S3Settings.from_env({}) == s3.S3Settings(region="us-east-1")
    assert s3.S3Settings.from_env({}).where == "AWS S3 (us-east-1)"


def test_filesystem_targets_the_endpoint_path_style():
    fs = s3.S3Settings(endpoint="http://127.0.0.1:9", region="r").filesystem()
    assert fs.region == "r"
    # pyarrow keeps the options it was built with; path-style unless forced virtual.
    assert "127.0.0.1:9" in repr(fs.__reduce__()) and "http" in repr(fs.__reduce__())


@pytest.mark.parametrize("uri,bucket,key", [("s3://bkt", "bkt", ""), ("s3://bkt/", "bkt", ""),
                                            ("s3://bkt/x/y/", "bkt", "x/y")])
def test_split(uri, bucket, key):
    assert s3.split(uri) == (bucket, key)


@pytest.mark.parametrize("uri", ["s3://", "s3:///x", "s3://bkt/x?endpoint_override=h", "gs://b/x"])
def test_split_refuses_what_is_not_a_bucket_and_path(uri):
    with pytest.raises(s3.S3Unavailable, match="s3://|not an s3"):
        s3.split(uri)


def test_local_run_uses_the_specs_s3_storage_unless_told_otherwise():
    base = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    tr = parse_spec({**base, "checkpoint": {"storage": {"uri": "s3://bkt/runs/"}}}, name="r")
    assert local_storage(tr, None) == "s3://bkt/runs/default"  # where the operator puts it
    assert local_storage(tr, "/tmp/x") == "/tmp/x"
    assert local_storage(parse_spec(base, name="r"), None) == "./runs"


@pytest.mark.parametrize("endpoint,words", [
    ("127.0.0.1:9000", "give the scheme, e.g. http://127.0.0.1:9000"),
    ("ftp://127.0.0.1:9000", "http:// or https://"),
    ("not a url", "give the scheme"), ("http://not a url", "is not a URL"),
    ("http://127.0.0.1:9000/some/path", "(/some/path would be ignored)"),
    # urlsplit raised "Invalid IPv6 URL"; urlopen raised http.client.InvalidURL (no
    # ValueError); "http://" lost its slashes and was told to "give the scheme, e.g.
    # http://http:"; port 99999 reached pyarrow and came back as "cannot reach".
    ("http://[::1", "bad host (Invalid IPv6 URL; an IPv6 address goes in brackets"),
    ("http://[zz]:9000", "bad host ('zz' does not appear to be an IPv4 or IPv6 address"),
    ("http://::1:9000", "an IPv6 address goes in brackets (http://[::1]:9000)"),
    ("http://127.0.0.1:abc", "the port 'abc' is not a number"),
    ("http://127.0.0.1:99999", "the port 99999 is out of range (1-65535)"),
    ("http://127.0.0.1:0", "the port 0 is out of range (1-65535)"),
    ("http://127.0.0.1:", "the port is empty after ':'"),
    ("http://", "AWS_ENDPOINT_URL 'http://': no host in it (scheme://host:port)"),
    ("http://:9000", "no host in it"), ("http://ex!mple:9000", "the host 'ex!mple' is not"),
    ("http://127.0.0.1:9000", None), ("https://minio.storage:9000/", None), (None, None),
    ("http://[::1]:9000", None), ("http://minio_1.storage", None),
])
def test_an_endpoint_that_is_no_scheme_host_port_is_named(endpoint, words):
    """Without a scheme the endpoint was taken as https and 'could not be reached'; a
    path was dropped without a word; spaces reached the AWS SDK, which answered in its
    own terms. Checked before any request (no S3 server needed)."""
    settings = s3.S3Settings.from_env({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})
    problem = settings.endpoint_problem()
    if words is None:
        assert problem is None
        return
    assert problem is not None and words in problem, problem
    with pytest.raises(s3.S3Unavailable, match="AWS_ENDPOINT_URL"):
        s3.check("s3://bkt/runs", settings=settings)

    with pytest.raises(s3.S3Unavailable, match="AWS_ENDPOINT_URL"):
        settings.filesystem()  # urlsplit's own ValueError before


def test_a_non_http_answer_at_the_endpoint_leaves_the_callers_line(monkeypatch):
    """``not_s3`` asks the endpoint what it is; http.client's errors (a garbled status
    line, a URL it refuses) are no OSError/ValueError and escaped as a traceback."""
    import http.client
    import urllib.request

    def garbled(*_, **__):
        raise http.client.BadStatusLine("SSH-2.0-OpenSSH_9.6")

    monkeypatch.setattr(urllib.request, "urlopen", garbled)
    assert s3.not_s3(s3.S3Settings(endpoint="http://127.0.0.1:22")) is None


@pytest.mark.parametrize("endpoint,words", [
    ("http://[::1", "AWS_ENDPOINT_URL 'http://[::1': bad host (Invalid IPv6 URL"),
    ("http://127.0.0.1:abc", "AWS_ENDPOINT_URL 'http://127.0.0.1:abc': the port 'abc' is not a number"),
    ("http://127.0.0.1:99999", "the port 99999 is out of range"),
    # an empty one meant AWS itself; a password in one was echoed
    ("", "AWS_ENDPOINT_URL is set but empty: unset it for AWS S3, or give scheme://host[:port]"),
    ("http://user:s3cr3t/PW+x@127.0.0.1:19000",
     "AWS_ENDPOINT_URL 'http://user:***@127.0.0.1:19000': credentials do not go in the endpoint URL"),
])
@pytest.mark.parametrize("command,code", [("run", 1), ("serve", 2), ("predict", 2)])
def test_every_command_names_a_malformed_endpoint_in_one_line(command, code, endpoint, words,
                                                              tmp_path, capsys, monkeypatch,
                                                              no_requests):
    """run gave a ValueError/InvalidURL traceback; serve and predict printed a bare
    "Invalid IPv6 URL". Exit codes are those of the commands' other storage errors. No
    request goes out first (``no_requests``)."""
    from raykube.cli import main

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # it would win
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "run.yaml"
    spec.write_text("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: r}\n"
                    "spec: {model: {name: mlp}, data: {dataset: digits}}\n")
    argv = {"run": ["run", str(spec), "--storage", "s3://bkt/runs"],
            "serve": ["serve", "s3://bkt/runs/r/best"],
            "predict": ["predict", "s3://bkt/runs/r/best", "--out", "p.csv"]}[command]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raykube {command}: s") and "\n" not in err, err
    assert words in err and "s3cr3t" not in err, err

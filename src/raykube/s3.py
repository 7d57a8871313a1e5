"""S3 and S3-compatible object stores (AWS, MinIO, Ceph, R2, GCS interop): one way in.

Why one module: training (Ray Train's storage), Ray Data reads, checkpoint loading in
serve/predict and our own result.json/best/ writes must all reach the same bucket the same
way. The one way is the standard AWS environment variables (what the rendered pods get
from the ``secretRef`` Secret, and what a shell exports locally)::

    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY     required unless the machine has a role
    AWS_SESSION_TOKEN                            optional
    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)    e.g. http://minio.storage:9000; unset = AWS
    AWS_REGION (or AWS_DEFAULT_REGION)           default us-east-1 (what MinIO/Ceph accept)

From them we build one pyarrow ``S3FileSystem`` (the filesystem Ray Train uses) and hand
it to every consumer explicitly, rather than letting each parse ``s3://`` on its own:
pyarrow's own URI parsing would ask AWS for the bucket's region (a network call to
amazonaws.com, which fails or hangs next to a private endpoint). With an endpoint set,
requests are path-style (``http://host:9000/bucket/key``), which MinIO and Ceph need and
which pyarrow uses unless virtual addressing is forced.

Failures are turned into one line naming the URI and the cause (``S3Unavailable``) by
``check``, which the commands call before Ray starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from raykube.spec import S3_SECRET_KEYS as SECRET_KEYS  # noqa: F401 (the Secret's shape)
from raykube.transient import MaybeTransient

DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 60.0
"""Per request (socket read), not per transfer: a slow multipart part may take a while."""


class S3Unavailable(MaybeTransient, OSError):
    """An s3:// location cannot be used: unreachable endpoint, refused credentials,
    missing bucket, no permission. ``str()`` is the one line users read; ``transient``
    is true for an endpoint that did not answer (the rest a retry would meet again)."""


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to reach the object store (from the AWS environment variables)."""

    endpoint: str | None = None
    """``scheme://host:port`` of a non-AWS endpoint, or None for AWS itself; ``""`` for a
    variable set to nothing (refused: it used to mean AWS without a word)."""
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_var: str = field(default="AWS_ENDPOINT_URL", compare=False)
    """The variable ``endpoint`` came from, for messages (``AWS_ENDPOINT_URL_S3`` wins)."""
    region_var: str = field(default="AWS_REGION", compare=False)
    """The variable ``region`` came from, for messages."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        endpoint_var, endpoint = _first_set(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                                            unset="AWS_ENDPOINT_URL")
        region_var, region = _first_set(env, "AWS_REGION", "AWS_DEFAULT_REGION", unset="AWS_REGION")
        return cls(endpoint=_without_trailing_slash(endpoint) if endpoint else endpoint,
                   region=region or DEFAULT_REGION,
                   access_key=env.get("AWS_ACCESS_KEY_ID") or None,
                   secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                   session_token=env.get("AWS_SESSION_TOKEN") or None,
                   endpoint_var=endpoint_var, region_var=region_var)

    def problem(self) -> str | None:
        """What in these settings no request can get past, or None: checked before the
        first request, so the answer is one line of ours, never the AWS SDK's."""
        return self.endpoint_problem() or self.region_problem() or self.credentials_problem()

    def region_problem(self) -> str | None:
        """Why the region is no region name, or None. The AWS SDK answered one with a
        space or an underscore with "A region must be set when sending requests to S3",
        which names neither the variable nor the value."""
        if REGION_NAME.fullmatch(self.region):
            return None
        return (f"{self.region_var} {self.region!r} is not a region name (letters, digits and "
                "'-', e.g. us-east-1; R2 wants auto)")

    def credentials_problem(self) -> str | None:
        """Which half of the key pair is missing, or None. With one half the request went
        out unsigned or half-signed and came back as 'no credentials are set'."""
        if bool(self.access_key) == bool(self.secret_key):
            return None
        have, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        if not self.access_key:
            have, missing = missing, have
        return (f"{have} is set but {missing} is not (or is empty): set both, or neither "
                "where the machine has a role")

    def endpoint_problem(self) -> str | None:
        """Why ``AWS_ENDPOINT_URL`` is no ``scheme://host[:port]``, or None. Without a
        scheme it was taken as https and said 'cannot reach'; a path was dropped without
        a word; spaces went to the AWS SDK, which answered in its own terms; a bad
        bracket or port raised from ``urlsplit``/``urlopen`` as a traceback. Never raises:
        every command calls it before its first request, to print its one line."""
        if self.endpoint is None:
            return None
        if not self.endpoint.strip():
            return (f"{self.endpoint_var} is set but empty: unset it for AWS S3, or give "
                    "scheme://host[:port]")
        shown = f"{self.endpoint_var} {masked(self.endpoint)!r}"
        if _userinfo(self.endpoint) is not None:
            return (f"{shown}: credentials do not go in the endpoint URL; give "
                    "scheme://host[:port] and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "instead")
        if "://" not in self.endpoint:
            return f"{shown}: give the scheme, e.g. http://{self.endpoint}"
        try:
            parts = urlsplit(self.endpoint)
        except ValueError as exc:  # "Invalid IPv6 URL": an unclosed or misplaced bracket
            return (f"{shown}: bad host ({exc}; an IPv6 address goes in brackets: "
                    "http://[::1]:9000)")
        if parts.scheme not in ("http", "https"):
            return f"{shown}: the scheme must be http:// or https://"
        if any(c.isspace() for c in self.endpoint):
            return f"{shown}: is not a URL (scheme://host:port)"
        if problem := _host_port_problem(parts):
            return f"{shown}: {problem}"
        return _beyond_host_port_problem(shown, self.endpoint, parts)

    @property
    def where(self) -> str:
        """The endpoint as users named it (for messages), any password in it masked."""
        return masked(self.endpoint) if self.endpoint else f"AWS S3 ({self.region})"

    def filesystem(self, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                   request_timeout: float = REQUEST_TIMEOUT_S, attempts: int = 3) -> Any:
        """A pyarrow ``S3FileSystem`` for these settings (picklable: Ray ships it to
        workers, so they need no environment of their own)."""
        import pyarrow.fs as pafs

        if problem := self.problem():  # urlsplit below would raise its own words
            raise S3Unavailable(problem)
        kw: dict[str, Any] = {
            "region": self.region,
            "connect_timeout": connect_timeout,
            "request_timeout": request_timeout,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        }
        if self.endpoint:
            parts = urlsplit(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
            kw["endpoint_override"] = parts.netloc
            kw["scheme"] = parts.scheme or "https"
        if self.access_key or self.secret_key:
            kw["access_key"] = self.access_key or ""
            kw["secret_key"] = self.secret_key or ""
            if self.session_token:
                kw["session_token"] = self.session_token
        return pafs.S3FileSystem(**kw)


def _first_set(env: Mapping[str, str], *names: str, unset: str) -> tuple[str, str | None]:
    """``(variable, value)`` of the first of ``names`` with a value, as the AWS SDKs pick
    them; else the first one set to nothing, with ``""`` (so an empty ``AWS_ENDPOINT_URL``
    can be refused instead of meaning AWS); else ``(unset, None)``."""
    for name in names:
        if (env.get(name) or "").strip():
            return name, env[name]
    for name in names:
        if name in env:
            return name, ""
    return unset, None


def _userinfo(endpoint: str) -> str | None:
    """The ``user[:password]`` before an ``@`` in an endpoint URL, or None. Everything up
    to the last ``@`` counts (a secret key may hold ``/`` or ``@``), without ``urlsplit``,
    which raises on some inputs before its caller could mask anything."""
    rest = endpoint.partition("://")[2] if "://" in endpoint else endpoint
    userinfo, at, _ = rest.rpartition("@")
    return userinfo if at else None


def masked(endpoint: str) -> str:
    """``endpoint`` with the password in it (``http://user:pw@host``) shown as ``***``:
    every message names the endpoint, and none may echo a secret."""
    userinfo = _userinfo(endpoint)
    if userinfo is None or ":" not in userinfo:
        return endpoint
    head = endpoint.partition("://")[0] + "://" if "://" in endpoint else ""
    return f"{head}{userinfo.partition(':')[0]}:***@{endpoint.rpartition('@')[2]}"


def _beyond_host_port_problem(shown: str, endpoint: str, parts: SplitResult) -> str | None:
    """What follows ``host:port`` in an endpoint URL (a path, ``?query``, ``#fragment``),
    named, or None. S3 clients use only ``scheme://host:port``: the rest was dropped
    without a word (and a query was named as ``()``)."""
    after = endpoint.partition("://")[2][len(parts.netloc):]
    if not after.strip("/"):
        return None
    why = ("S3 clients put the bucket in the path" if parts.path.strip("/")
           else "an endpoint takes no query or fragment")
    return f"{shown}: give scheme://host:port only; {why} ({after} would be ignored)"


def _without_trailing_slash(endpoint: str) -> str:
    """``http://h:9000/`` -> ``http://h:9000``, but ``http://`` stays itself: stripping
    its slashes made ``http:``, which was then told to 'give the scheme'."""
    scheme, sep, rest = endpoint.partition("://")
    return f"{scheme}{sep}{rest.rstrip('/')}" if sep else endpoint.rstrip("/")


HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""What a DNS name or IPv4 address is made of (IPv6 ones come in brackets)."""
REGION_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""A region name: one DNS label (the AWS SDK puts it in host names). Upper case is let
through: the SDK takes it, and a MinIO or Ceph region is whatever its admin named it."""


def _dns_problem(host: str) -> str | None:
    """Why ``host`` (made of ``HOST_NAME``'s characters) is no DNS name or IPv4 address,
    or None. The AWS SDK refused ``-bad-`` with "Invalid DNS Label found in URI host";
    curl took ``a..b`` or ``999.1.1.1`` to the resolver and it read as 'cannot reach'."""
    name = host[:-1] if host.endswith(".") else host  # a fully qualified name is fine
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return f"the host {host!r} is not an IPv4 address"
        return None
    if len(name) > 253 or any(not 0 < len(label) < 64 for label in labels):
        return (f"the host {host!r} is not a DNS name (labels of 1 to 63 characters "
                "between dots, 253 in all)")
    if any(label.startswith("-") or label.endswith("-") for label in labels):
        return f"the host {host!r} is not a DNS name (a label cannot start or end with '-')"
    return None


def _host_port_problem(parts: SplitResult) -> str | None:
    """What is wrong with the ``host:port`` of an endpoint URL, or None. Each of these
    reached pyarrow or urllib as-is and came back as their error (or a traceback)."""
    hostname = parts.hostname or ""
    if not hostname:
        if parts.netloc.rpartition("@")[2].count(":") > 1:
            return "an IPv6 address goes in brackets (http://[::1]:9000)"
        return "no host in it (scheme://host:port)"
    if ":" not in hostname and not HOST_NAME.fullmatch(hostname):
        return f"the host {hostname!r} is not a host name or address"
    if ":" not in hostname and (problem := _dns_problem(hostname)):
        return problem
    raw_port = parts.netloc.rpartition("]")[2].rpartition("@")[2].partition(":")[2]
    if not raw_port:
        return "the port is empty after ':'" if parts.netloc.endswith(":") else None
    if not raw_port.isdigit():
        return f"the port {raw_port!r} is not a number"
    if not 0 < int(raw_port) < 65536:
        return f"the port {raw_port} is out of range (1-65535)"
    return None


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``); a bad URI is an ``S3Unavailable``."""
    if not is_s3(uri):
        raise S3Unavailable(f"{uri}: not an s3:// URI")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or "?" in rest or "#" in rest:
        raise S3Unavailable(f"{uri}: expected s3://<bucket>/<path> (no query or fragment)")
    return bucket, key.strip("/")


def filesystem(uri: str, settings: S3Settings | None = None) -> tuple[Any, str]:
    """``(S3FileSystem, "bucket/key")`` for an s3:// URI: the pair every consumer gets."""
    bucket, key = split(uri)
    fs = (settings or S3Settings.from_env()).filesystem()
    return fs, f"{bucket}/{key}" if key else bucket


UNREACHABLE = ("network_connection", "curlcode", "couldn't connect", "could not connect",
               "connection refused", "timeout", "timed out", "resolve host")
"""What pyarrow/the AWS SDK say (lower-cased) when the endpoint did not answer."""


def unreachable(exc: BaseException) -> bool:
    """The S3 endpoint did not answer (as opposed to answering no)."""
    low = str(exc).lower()
    return any(s in low for s in UNREACHABLE)


NOT_TLS = ("wrong version number", "packet length too long")
"""What OpenSSL says (lower-cased, in curl's text) when the answer to its handshake is no
TLS record: plain HTTP on the port ``https://`` named."""
CERT_REFUSED = ("ssl peer certificate", "ssl certificate", "certificate verify failed")
"""What curl says (lower-cased) when it refused the certificate of an ``https://`` endpoint."""
TLS_ONLY = ("empty reply", "recv failure", "connection reset", "(http status 400)")
"""What curl/the AWS SDK say when plain HTTP met a port that speaks only TLS (it hangs up,
or answers 400 as Go's servers do); ``speaks_tls`` asks before anything is said."""


def _failure(uri: str, exc: BaseException, settings: S3Settings, bucket: str) -> S3Unavailable:
    """The one-line ``S3Unavailable`` for what pyarrow raised. A TLS mismatch is not
    transient (a retry meets it again), though curl files it as a network failure."""
    if tls := _tls_problem(exc, settings):
        return S3Unavailable(f"{uri}: {tls}")
    return S3Unavailable(f"{uri}: {_cause(exc, settings, bucket)}", transient=unreachable(exc))


def _tls_problem(exc: BaseException, settings: S3Settings) -> str | None:
    """http:// and https:// mixed up, or a certificate refused, or None. Each was 'cannot
    reach the S3 endpoint (is it running...)', for an endpoint that did answer."""
    if not settings.endpoint:
        return None
    parts, low = urlsplit(settings.endpoint), str(exc).lower()
    fix = f"in {settings.endpoint_var}"
    if parts.scheme == "https" and any(s in low for s in NOT_TLS):
        return (f"the S3 endpoint {settings.where} does not speak TLS (https): use "
                f"http://{parts.netloc} {fix}")
    if parts.scheme == "https" and any(s in low for s in CERT_REFUSED):
        why = re.search(r"verify result: ([^;(\n]+)", str(exc))
        return (f"the S3 endpoint {settings.where} sent a TLS certificate this machine does "
                f"not trust ({why.group(1).strip() if why else 'verification failed'})")
    if parts.scheme == "http" and any(s in low for s in TLS_ONLY) and speaks_tls(parts):
        return (f"the S3 endpoint {settings.where} speaks TLS: use https://{parts.netloc} "
                f"{fix}")
    return None


def speaks_tls(parts: SplitResult, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked): asked
    only after plain HTTP failed there, to tell an https-only port from a dead one."""
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock,
              ctx.wrap_socket(sock, server_hostname=parts.hostname)):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def _cause(exc: BaseException, settings: S3Settings, bucket: str) -> str:
    """One human line for what pyarrow/the AWS SDK reported (their text is long)."""
    text = str(exc)
    if settings.endpoint and "invalid dns label" in text.lower():  # what _dns_problem lets by
        return (f"{settings.endpoint_var} {settings.where!r}: the S3 client refuses the host "
                f"{urlsplit(settings.endpoint).hostname!r} (letters, digits and '-' between "
                "dots; no '_')")
    if unreachable(exc):
        return f"cannot reach the S3 endpoint {settings.where} (is it running, is AWS_ENDPOINT_URL right?)"
    if any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "INVALID_ACCESS_KEY_ID",
                               "SIGNATURE_DOES_NOT_MATCH", "InvalidClientTokenId")):
        return (f"{settings.where} refused the credentials (check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or the Secret they come from)")
    if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
        return not_s3(settings) or f"bucket {bucket!r} does not exist at {settings.where}"
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "403")):
        if not (settings.access_key and settings.secret_key):
            return (f"access denied by {settings.where} and no credentials are set "
                    "(export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        return (f"access denied by {settings.where} (wrong AWS_ACCESS_KEY_ID/"
                f"AWS_SECRET_ACCESS_KEY, or no permission on bucket {bucket!r})")
    if why := not_s3(settings):
        return why
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{settings.where}: {first}"


S3_BODY_STARTS = (b"<?xml", b"<Error", b"<ListAllMyBucketsResult", b"<ListBucketResult")


def not_s3(settings: S3Settings) -> str | None:
    """What answers at ``AWS_ENDPOINT_URL`` if it is no S3 server, or None.

    pyarrow reads any 404 as "no such key", so a web page at the endpoint (MinIO's
    console on 9001 instead of its API on 9000, a proxy's front page) looked like a
    missing bucket. Every S3 implementation answers an anonymous ``GET /`` in S3's terms
    (an XML body or ``x-amz-*`` headers, usually AccessDenied); anything else is not one.
    Asked only once a bucket seems missing. An endpoint that cannot be asked here (TLS
    this Python does not trust, no answer) returns None: the caller's own line stands.
    """
    if not settings.endpoint or settings.endpoint_problem():
        return None
    import http.client
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(settings.endpoint + "/", timeout=5.0) as r:  # noqa: S310 (http/https checked)
            status, headers, body = r.status, r.headers, r.read(256)
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, exc.headers, exc.read(256)
    except (OSError, ValueError, http.client.HTTPException):  # InvalidURL, BadStatusLine
        return None
    kind = headers.get("Content-Type", "no content type").split(";")[0]
    if (any(k.lower().startswith("x-amz-") for k in headers) or "xml" in kind
            or body.lstrip().startswith(S3_BODY_STARTS)):
        return None
    return (f"{settings.where} is not an S3 API (it answered HTTP {status}, {kind}); is "
            "AWS_ENDPOINT_URL the S3 port? (MinIO: the API port, 9000 by default, not the "
            "console's 9001)")


def check(uri: str, *, write: bool = False, settings: S3Settings | None = None) -> None:
    """Prove ``uri`` usable in a few seconds, or raise ``S3Unavailable`` with one line.

    Reads the bucket (so a missing bucket, refused credentials or an unreachable endpoint
    are told apart) and, with ``write``, writes and deletes a small probe object under
    ``uri`` (a read-only key would otherwise fail the first checkpoint, inside Ray).
    One attempt with short timeouts: this is the fast answer; the filesystem Ray uses
    keeps retrying transient errors.
    """
    import pyarrow.fs as pafs

    settings = settings or S3Settings.from_env()
    bucket, key = split(uri)
    if problem := settings.problem():
        raise S3Unavailable(f"{uri}: {problem}")
    fs = settings.filesystem(connect_timeout=2.0, request_timeout=5.0, attempts=1)
    try:
        # A listing first: unlike HEAD requests, its error answers carry the S3 error
        # code, which tells refused credentials from a missing permission.
        fs.get_file_info(pafs.FileSelector(f"{bucket}/{key}".rstrip("/"), allow_not_found=True))
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise S3Unavailable(f"{uri}: " + (not_s3(settings) or
                                f"bucket {bucket!r} does not exist at {settings.where}"))
        if write:
            probe = f"{bucket}/{key}/.raykube-write-test".replace("//", "/")
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
        else:
            fs.get_file_info(f"{bucket}/{key}" if key else bucket)
    except S3Unavailable:
        raise
    except (OSError, ValueError) as exc:
        raise _failure(uri, exc, settings, bucket) from None


def check_named(what: str, uri: str) -> None:
    """``check(uri)`` for an ``s3://`` location the user named as ``what`` (``data.uri``,
    ``--data``): the line starts with that name; other locations pass."""
    if not is_s3(uri):
        return
    try:
        check(uri)
    except S3Unavailable as exc:
        raise S3Unavailable(f"{what} {exc}", transient=exc.transient) from None


def require_file(uri: str, settings: S3Settings | None = None) -> None:
    """``check`` plus: the object ``uri`` exists (a checkpoint's checkpoint.pt)."""
    import pyarrow.fs as pafs

    settings = settings or S3Settings.from_env()
    check(uri.rsplit("/", 1)[0] if uri.count("/") > 2 else uri, settings=settings)
    fs = settings.filesystem(connect_timeout=2.0, request_timeout=5.0, attempts=1)
    bucket, key = split(uri)
    try:
        info = fs.get_file_info(f"{bucket}/{key}")
    except OSError as exc:
        raise _failure(uri, exc, settings, bucket) from None
    if info.type != pafs.FileType.File:
        raise S3Unavailable(f"{uri}: no such object at {settings.where}")

"""``python -m raykube_operator``: run the TrainingRun operator.

Connects with in-cluster credentials, or KUBECONFIG / ~/.kube/config outside a cluster.
Scope: ``--namespace`` (repeatable) or ``RAYKUBE_NAMESPACES=a,b``; cluster-wide by
default (``-A``). Runs standalone (no kopf peering): deploy exactly one replica.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import kopf

from raykube_operator.config import OperatorConfig, liveness_endpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raykube_operator", description=(__doc__ or "").replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs allowed); "
                       "default: RAYKUBE_NAMESPACES, else all")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default)")
    p.add_argument("--liveness", metavar="URL", default=None,
                   help="serve kopf's liveness endpoint at http://HOST:PORT/PATH, e.g. "
                   "http://0.0.0.0:8080/healthz in a pod (default: RAYKUBE_LIVENESS, "
                   "else none; 'off' disables)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def client_problem() -> str | None:
    """Why the installed Kubernetes client cannot work, or None. ``raykube_operator.kube``
    uses ``ApiClient.param_serialize`` (kubernetes >= 37): with an older client every call
    would fail, so say it once at start instead."""
    import kubernetes

    if not hasattr(kubernetes.client.ApiClient, "param_serialize"):
        return (f"the installed kubernetes client ({kubernetes.__version__}) is too old: "
                "raykube needs kubernetes>=37,<38 (pip install 'kubernetes>=37,<38')")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = client_problem()
    if problem:
        print(f"raykube operator: {problem}", file=sys.stderr)
        return 2
    try:
        cfg = OperatorConfig.from_env()  # fail fast on a bad RAYKUBE_* value
        liveness, source = cfg.liveness, "RAYKUBE_LIVENESS"
        if args.liveness is not None:  # the flag wins over RAYKUBE_LIVENESS
            liveness, source = liveness_endpoint(args.liveness, "--liveness"), "--liveness"
    except ValueError as exc:
        print(f"raykube operator: {exc}", file=sys.stderr)
        return 2
    from raykube_operator import preflight

    if liveness:  # local and instant: before the API server is asked anything
        try:
            preflight.check_liveness(liveness, source)
        except preflight.PreflightError as exc:
            print(f"raykube operator: {exc}", file=sys.stderr)
            return 2
    namespaces: tuple[str, ...] = () if args.all_namespaces else (
        tuple(args.namespace) or cfg.namespaces)
    # the handlers read their settings again from the environment (kopf's startup hook):
    # -n / -A win over RAYKUBE_NAMESPACES there too (their log said "all" under -n)
    os.environ["RAYKUBE_NAMESPACES"] = ",".join(namespaces)
    # log_prefix: kopf's own lines about an object ("Handler ... succeeded") name it,
    # [namespace/name], as `kopf run` does; without it same-named runs in two
    # namespaces could not be told apart (a probe on the real node)
    kopf.configure(debug=args.verbose, verbose=args.verbose, log_prefix=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(throttled_retry_is_a_warning)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else cfg.log_level)
    if not args.verbose:
        # kubelet's probes of the liveness endpoint: an access line every few seconds
        # was most of the operator's log in a pod (seen on the real node)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if cfg.preflight:
        try:
            preflight.run(namespaces, wait_s=cfg.api_wait)
        except preflight.PreflightError as exc:
            print(f"raykube operator: {exc}", file=sys.stderr)
            return 2

    import raykube_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        identity=operator_identity(),
    )
    return 0


_THROTTLED_RETRY = re.compile(r"Request attempt #?\S* failed; will retry: .* -> "
                              r"APITooManyRequestsError\(")


def throttled_retry_is_a_warning(record: logging.LogRecord) -> bool:
    """kopf logs each retried request at ERROR, also a 429 (the API server's priority and
    fairness throttling, or "storage is (re)initializing" just after it starts), which it
    then retries after the Retry-After the server asked for. That is flow control, not a
    fault: WARNING. The last attempt ("failed; escalating") and every other failure keep
    their level."""
    if record.levelno == logging.ERROR and _THROTTLED_RETRY.match(record.getMessage()):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def operator_identity() -> str:
    """Who this operator is (kopf's peering id; unused when standalone, but always built).

    kopf's own default asks ``getpass.getuser()``, which raises KeyError for a uid without
    an /etc/passwd entry: the Deployment runs the image as uid 65532, which has none, so
    the operator pod crashed at start (found on the real node, ``make e2e-local``).
    ``POD_ID`` is kopf's own variable for this; otherwise the host name (the pod's name)."""
    import os
    import socket

    return os.environ.get("POD_ID") or f"raykube-operator@{socket.gethostname()}/{os.getpid()}"


if __name__ == "__main__":
    sys.exit(main())

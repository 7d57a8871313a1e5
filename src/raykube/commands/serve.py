"""``raykube serve CHECKPOINT``: serve a checkpoint over HTTP on this machine until Ctrl-C.

Starts a local Ray, deploys the same Serve application a RayService runs
(``raykube.serve``) and prints a ready-to-paste ``curl`` request. Batching and limits
default to the ``serve`` section of the spec stored in the checkpoint; flags override.
"""

from __future__ import annotations

import argparse
import os
import sys

from raykube.commands._util import (
    flag_errors,
    port_number,
    sigterm_as_ctrl_c,
    wait_for_interrupt,
    with_examples,
)

FLAGS = {"replicas": "--replicas", "maxBatchSize": "--max-batch-size",
         "batchWaitTimeoutMs": "--batch-wait-ms", "maxRequestBytes": "--max-request-bytes"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    with_examples(p, """
raykube serve runs/quickstart/best              # the best checkpoint of a local run
raykube serve s3://bucket/runs/ns/name/best --host 0.0.0.0 --port 8080
curl -s localhost:8000/metadata                 # then, from another terminal
""")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint directory (holding checkpoint.pt and meta.json, e.g. "
                   "<storage>/<name>/best) or s3:// URI")
    p.add_argument("--port", type=port_number, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--replicas", type=int, help="Serve replicas (default: spec serve.replicas)")
    p.add_argument("--max-batch-size", type=int,
                   help="dynamic batching: most requests per model call")
    p.add_argument("--batch-wait-ms", type=float,
                   help="dynamic batching: longest wait for a batch to fill (ms)")
    p.add_argument("--max-request-bytes", type=int, help="largest accepted body (413 above)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all, or "
                   "what the replicas need when that is more)")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per request (off by default: it costs CPU per request)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own output here instead of in a log file")


def local_ray_cpus(num_cpus: int | None, serve_spec, machine_cpus: int | None) -> int:  # noqa: ANN001
    """Logical CPUs for the local Ray: enough for every replica, so that Serve never
    waits forever for a replica that cannot be placed (as ``raykube run`` sizes its Ray).

    An explicit ``--num-cpus`` too small for the replicas is refused with what they need.
    """
    need = serve_spec.replicas * serve_spec.cpus_per_replica
    if num_cpus is not None:
        if num_cpus < need:
            raise ValueError(f"--num-cpus {num_cpus} cannot hold {serve_spec.replicas} "
                             f"replica(s) x {serve_spec.cpus_per_replica:g} CPU; give at "
                             f"least --num-cpus {-(-need // 1):.0f} or fewer --replicas")
        return num_cpus
    return int(max(machine_cpus or 1, -(-need // 1)))


def serve_spec_for(args: argparse.Namespace, checkpoint_spec: dict):
    """The checkpoint's own serve section, with command-line overrides applied."""
    from raykube.spec import ServeSpec

    doc = dict(checkpoint_spec.get("serve") or {})
    for flag, key in (("replicas", "replicas"), ("max_batch_size", "maxBatchSize"),
                      ("batch_wait_ms", "batchWaitTimeoutMs"),
                      ("max_request_bytes", "maxRequestBytes")):
        value = getattr(args, flag, None)
        if value is not None:
            doc[key] = value
    doc.pop("enabled", None)
    doc.pop("minAccuracy", None)
    return ServeSpec.model_validate(doc)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from raykube.spec import location_problem

    if "://" not in args.checkpoint and not location_problem(args.checkpoint):
        # absolute: the replicas' processes and the /healthz answer name the same
        # directory whatever their working directory ('runs/quickstart/best' before)
        args.checkpoint = os.path.abspath(os.path.expanduser(args.checkpoint))
    from pydantic import ValidationError
    from rich.console import Console

    from raykube.checkpoint import load_model

    try:
        from raykube.serve import ensure_port_free, resolve_checkpoint

        # Load it once here: a truncated or mismatched checkpoint is a one-line error
        # now, not a Serve deployment failing in a loop once Ray is up.
        _, meta = load_model(resolve_checkpoint(args.checkpoint))
        serve_spec = serve_spec_for(args, meta.spec)
        num_cpus = local_ray_cpus(args.num_cpus, serve_spec, os.cpu_count())
        from raykube.local import available_memory, serving_shortfall

        if shortfall := serving_shortfall(meta.spec, serve_spec.replicas, available_memory()):
            raise ValueError(shortfall)
        ensure_port_free(args.host, args.port)
    except ValidationError as exc:
        for line in flag_errors(exc, FLAGS):
            print(f"raykube serve: {line}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # missing/corrupt checkpoint, port in use
        print(f"raykube serve: {exc}", file=sys.stderr)
        return 2

    from raykube import terminal

    if not terminal.verbose(args.verbose):
        terminal.divert(terminal.default_log("serve"))
    console = Console(file=terminal.out(), soft_wrap=True)  # URLs and the curl line stay pasteable

    from raykube.local import apply_ray_env
    from raykube.ray_local import init_local_ray, shutdown_local_ray
    from raykube.serve import curl_example, start_local, stop_local

    apply_ray_env()  # Serve's HAProxy ingress, short drain (README "Performance")
    # `kill`, a container stop: as Ctrl-C, from here on (it stays through ray.init)
    sigterm_as_ctrl_c()
    # This command's own Ray, even when another one runs here (raykube.ray_local).
    init_local_ray(num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
    try:
        try:
            base = start_local(args.checkpoint, serve_spec, port=args.port, host=args.host,
                               access_log=args.access_log)
        except (RuntimeError, TimeoutError) as exc:  # Serve's deploy/proxy failures
            print(f"raykube serve: could not start serving: {exc}", file=terminal.err())
            return 1
        model = (meta.spec.get("model") or {}).get("name")
        acc = meta.metrics.get("valAccuracy")
        console.print(f"[bold green]serving[/] {model} (epoch {meta.epoch}"
                      + (f", valAccuracy {acc:.4f}" if acc is not None else "")
                      + f") from {args.checkpoint} at [cyan]{base}[/]")
        console.print(f"  POST {base}/predict   GET {base}/metadata   GET {base}/healthz")
        console.print("try:")
        print(curl_example(base, meta.input_shape), file=terminal.out(), flush=True)
        console.print("Ctrl-C to stop")
        wait_for_interrupt()
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        try:
            stop_local()
        finally:
            shutdown_local_ray()
    return 0

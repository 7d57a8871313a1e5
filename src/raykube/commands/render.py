"""``raykube render FILE...``: print the Kubernetes objects TrainingRuns become.

For GitOps users without the operator: commit the output (or pipe it to
``kubectl apply -f -``). Same pure functions as the operator (``raykube.render``), minus
ownerReferences (there is no TrainingRun object to own them).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files holding TrainingRuns")
    p.add_argument("--image", help="container image of the Ray pods (overrides spec.image "
                   "and the CPU/CUDA defaults)")
    p.add_argument("-n", "--namespace", help="namespace of the rendered objects (overrides "
                   "metadata.namespace)")
    p.add_argument("--checkpoint", metavar="URI", help="checkpoint the RayService serves "
                   "(default: <storage>/<namespace>/<name>/best, the copy of the best "
                   "checkpoint each finished training run writes)")
    serve = p.add_mutually_exclusive_group()
    serve.add_argument("--serve", dest="serve", action="store_true", default=None,
                       help="also render the RayService (default: when serve.enabled)")
    serve.add_argument("--no-serve", dest="serve", action="store_false",
                       help="training objects only")
    p.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raykube.render import (
        RenderConfig,
        default_checkpoint_uri,
        dump_yaml,
        render_rayservice,
        render_training,
    )
    from raykube.spec import (
        InvalidTrainingRun,
        check_for_cluster,
        load_file,
        location_problem,
        parse_training_run,
    )

    if args.checkpoint and (problem := location_problem(args.checkpoint)):
        # the RayService's replicas would fail on it in their pods, not here
        print(f"raykube render: --checkpoint {problem}", file=sys.stderr)
        return 2
    cfg = RenderConfig.from_env()
    objs = []
    seen: dict[tuple[str, str], str] = {}
    try:
        for path in args.files:
            for tr in load_file(path):
                # Two runs of one name would render objects that overwrite each other
                # on apply (and share a run directory): refuse, naming both.
                key = (args.namespace or tr.metadata.namespace or "default", tr.name)
                if key in seen:
                    print(f"raykube render: {path}: TrainingRun {key[1]!r} (namespace "
                          f"{key[0]}) is already defined in {seen[key]}; names must be "
                          "unique", file=sys.stderr)
                    return 1
                seen[key] = path
                if args.image or args.namespace:
                    doc = tr.model_dump(mode="json", by_alias=True, exclude_none=True)
                    if args.image:
                        doc["spec"]["image"] = args.image
                    if args.namespace:
                        doc["metadata"]["namespace"] = args.namespace
                    tr = parse_training_run(doc, source=path)
                objs.extend(render_training(check_for_cluster(tr, source=path), cfg))
                if args.serve or (args.serve is None and tr.spec.serve.enabled):
                    ckpt = args.checkpoint or default_checkpoint_uri(tr, cfg)
                    objs.append(render_rayservice(tr, cfg, ckpt))
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{e.source or exc.source}: {e.path}: {e.message}", file=sys.stderr)
        return 1
    text = dump_yaml(objs)
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:  # a missing directory, no permission, a directory
            print(f"raykube render: cannot write {args.out}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        print(f"wrote {len(objs)} objects to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

"""``raykube render FILE...``: print the Kubernetes objects TrainingRuns become.

For GitOps users without the operator: commit the output (or pipe it to
``kubectl apply -f -``). Same pure functions as the operator (``raykube.render``), minus
ownerReferences (there is no TrainingRun object to own them) and with the label
``raykube.io/rendered-by: raykube-render`` instead of the operator's ``managed-by``: a
GitOps tool (or kubectl) manages these objects, and the operator leaves them alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import posixpath
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raykube.render import RenderConfig
    from raykube.spec import TrainingRun

_FROM_OPTION = {"metadata.namespace": " (from --namespace)", "spec.image": " (from --image)"}


def _option_problem(args: argparse.Namespace,
                    location_problem: Callable[[str], str | None]) -> str | None:
    """What is wrong with the options themselves, before any file is read; None if nothing.

    An empty value (``-n "$NS"`` with NS unset) used to mean "not given": the objects
    went to the file's namespace (or ``default``) and the default image without a word."""
    for flag, value in (("--namespace", args.namespace), ("--image", args.image),
                        ("--checkpoint", args.checkpoint),
                        ("--checkpoint-secret", args.checkpoint_secret), ("--out", args.out)):
        if value is not None and not value.strip():
            return f"{flag} is empty: give a value, or leave the option out"
    ckpt = args.checkpoint
    if args.checkpoint_secret is not None:
        from raykube.k8s_rules import object_name_problem

        if ckpt is None or not ckpt.startswith("s3://"):
            return ("--checkpoint-secret only applies with an s3:// --checkpoint (a checkpoint "
                    "in the run's own storage is read as the run's pods read it)")
        if problem := object_name_problem(args.checkpoint_secret):
            return f"--checkpoint-secret {args.checkpoint_secret!r}: {problem}"
    if ckpt is None:
        return None
    if problem := location_problem(ckpt):  # the replicas would fail on it in their pods
        return f"--checkpoint {problem}"
    return None


def _off_the_volume(run: TrainingRun, cfg: RenderConfig, path: str) -> str | None:
    """Why an absolute ``--checkpoint`` path is probably not what the serving pods will
    find, or None: a path outside the run's volume (``/etc/x``, a laptop's folder) is
    only there if the image holds it (a baked-in model, which is why this is a note and
    not a refusal); a run on s3:// storage mounts no volume at all."""
    from raykube.render import volume_mount_path

    if run.spec.checkpoint.storage.uri is not None:
        return (f"--checkpoint {path!r} is a path, and {run.name}'s pods mount no volume "
                "(its storage is s3://): they find it only if the image holds it")
    mount = volume_mount_path(run, cfg).rstrip("/")
    where = posixpath.normpath(path)  # /mnt/raykube/../../etc is not on it
    if where != mount and not where.startswith(mount + "/"):
        return (f"--checkpoint {path!r} is not on {run.name}'s volume (mounted at {mount}): "
                "the serving pods find it only if the image holds it")
    return None


def _checkpoint_secret_problem(run: TrainingRun, args: argparse.Namespace) -> str | None:
    """Why the RayService of ``run`` could not read an s3:// ``--checkpoint`` with the S3
    settings it would get; None when it can. Its pods get the Secret of the run's
    ``checkpoint.storage.secretRef`` (s3:// storage) or ``data.secretRef``, or
    ``--checkpoint-secret``; without any, a run on a volume's serving pods had no
    credentials and no endpoint at all: each replica failed at start, in its pod."""
    from raykube.render import secret_field

    ckpt, given = args.checkpoint, args.checkpoint_secret
    own = secret_field(run)
    if given is not None and own is not None and given != own[1]:
        return (f"--checkpoint-secret {given!r}: the pods of {run.name} already take their "
                f"S3 settings from {own[0]} {own[1]!r}, which the checkpoint is read "
                "with: leave --checkpoint-secret out")
    if (ckpt and ckpt.startswith("s3://") and run.spec.checkpoint.storage.uri is None
            and own is None and given is None):
        return (f"--checkpoint {ckpt!r}: the serving pods of {run.name} get no S3 "
                "credentials or endpoint (its checkpoint.storage is a volume, not s3://): "
                "name the Secret holding them with --checkpoint-secret NAME (keys "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL, "
                "AWS_REGION, AWS_SESSION_TOKEN)")
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files holding TrainingRuns, "
                   "directories of them (their .yaml, .yml and .json files), or - for stdin")
    p.add_argument("--image", help="container image of the Ray pods (overrides spec.image "
                   "and the CPU/CUDA defaults)")
    p.add_argument("-n", "--namespace", help="namespace of the rendered objects (overrides "
                   "metadata.namespace)")
    p.add_argument("--checkpoint", metavar="URI", help="checkpoint the RayService serves: an "
                   "absolute path on the run's volume or an s3:// URI, for one served run "
                   "(default: <storage>/<namespace>/<name>/best, the copy of the best "
                   "checkpoint each finished training run writes; its replicas wait for the "
                   "run to finish)")
    p.add_argument("--checkpoint-secret", metavar="NAME", help="Secret in the run's namespace "
                   "with the S3 settings for an s3:// --checkpoint of a run whose storage is "
                   "a volume (the keys of checkpoint.storage.secretRef: AWS_ACCESS_KEY_ID, "
                   "AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, "
                   "AWS_REGION); a run on s3:// storage reads it with its own secretRef")
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
        storage_root,
    )
    from raykube.spec import (
        InvalidTrainingRun,
        check_for_cluster,
        duplicate_run,
        expand_paths,
        load_file,
        location_problem,
        parse_training_run,
        relative_path,
    )

    if problem := _option_problem(args, location_problem):
        print(f"raykube render: {problem}", file=sys.stderr)
        return 2
    try:
        cfg = RenderConfig.from_env()
    except ValueError as exc:  # a bad RAYKUBE_* setting: one line, as the operator says
        print(f"raykube render: {exc}", file=sys.stderr)
        return 2
    objs = []
    secret_problem: str | None = None
    seen: dict[tuple[str, str], str] = {}
    served: list[str] = []
    skipped: list[str] = []
    try:
        for path in expand_paths(args.files):
            for tr in load_file(path, skipped):
                # Two runs of one name would render objects that overwrite each other
                # on apply (and share a run directory): refuse, naming both.
                key = (args.namespace or tr.metadata.namespace or "default", tr.name)
                if key in seen:
                    print(f"raykube render: {path}: {duplicate_run(*key, seen[key])}",
                          file=sys.stderr)
                    return 1
                seen[key] = path
                if args.image or args.namespace:
                    doc = tr.model_dump(mode="json", by_alias=True, exclude_none=True)
                    if args.image:
                        doc["spec"]["image"] = args.image
                    if args.namespace:
                        doc["metadata"]["namespace"] = args.namespace
                    try:
                        tr = parse_training_run(doc, source=path)
                    except InvalidTrainingRun as exc:  # the option's value, not the file's
                        raise InvalidTrainingRun(
                            [dataclasses.replace(e, message=e.message + _FROM_OPTION.get(e.path, ""))
                             for e in exc.errors], exc.source) from None
                objs.extend(render_training(check_for_cluster(tr, source=path), cfg))
                if args.serve or (args.serve is None and tr.spec.serve.enabled):
                    if args.checkpoint and relative_path(args.checkpoint):
                        print(f"raykube render: --checkpoint {args.checkpoint!r} is a relative "
                              "path, which the serving pods cannot resolve: give an absolute "
                              "path on the run's volume or an s3:// URI (its run directory is "
                              f"{storage_root(tr, cfg)}/{tr.name})", file=sys.stderr)
                        return 2
                    if (args.checkpoint and not args.checkpoint.startswith("s3://")
                            and (note := _off_the_volume(tr, cfg, args.checkpoint))):
                        print(f"raykube render: note: {note}", file=sys.stderr)
                    served.append(tr.name)
                    # said after the loop, unless --checkpoint is refused for another reason
                    if problem := _checkpoint_secret_problem(tr, args):
                        secret_problem = secret_problem or problem
                        continue
                    ckpt = args.checkpoint or default_checkpoint_uri(tr, cfg)
                    # its own best/ may not exist yet: the replicas wait for the run
                    objs.append(render_rayservice(tr, cfg, ckpt,
                                                  checkpoint_secret=args.checkpoint_secret,
                                                  wait_for_training=not args.checkpoint))
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{e.source or exc.source}: {e.path}: {e.message}", file=sys.stderr)
        return 1
    if args.checkpoint and len(served) != 1:
        # One checkpoint is one model: every RayService would serve it, whatever it was
        # trained for; and with no RayService the option would silently do nothing.
        why = ("no RayService is rendered (--no-serve, or serve.enabled is false): add "
               "--serve, or leave --checkpoint out" if not served else
               f"{len(served)} TrainingRuns are served ({', '.join(served)}) and each would "
               "serve that one checkpoint: render the run it belongs to on its own, or the "
               "others without --checkpoint (each then serves its own <storage>/<namespace>/"
               "<name>/best)")
        print(f"raykube render: --checkpoint {args.checkpoint!r}: {why}", file=sys.stderr)
        return 2
    if secret_problem:
        print(f"raykube render: {secret_problem}", file=sys.stderr)
        return 2
    if skipped:  # e.g. the Secret a run's secretRef names, kept beside it for kubectl
        print(f"raykube render: not rendered (not TrainingRuns): {', '.join(skipped)}; "
              "apply them as they are", file=sys.stderr)
    text = dump_yaml(objs)
    if args.out:
        for path in expand_paths(args.files):  # `-o jobs/run.yaml` would replace the spec by its render
            if path != "-" and os.path.exists(args.out) and os.path.samefile(path, args.out):
                print(f"raykube render: --out {args.out} is an input file; write the KubeRay "
                      "objects elsewhere", file=sys.stderr)
                return 2
        try:
            Path(args.out).write_text(text)
        except OSError as exc:  # a missing directory, no permission, a directory
            print(f"raykube render: cannot write {args.out}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        print(f"wrote {len(objs)} objects to {args.out}", file=sys.stderr)
    else:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError as exc:  # a full disk behind a redirect, a closed pipe
            print(f"raykube render: cannot write the output: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
    return 0

"""``raykube run FILE``: train (tune, serve) a TrainingRun on this machine's embedded Ray."""

from __future__ import annotations

import argparse
import sys

from raykube.commands._util import (
    local_path,
    port_number,
    resolve_data_uri,
    with_examples,
)

FLAGS = {"scaling.workers": "--workers", "train.epochs": "--epochs"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    with_examples(p, """
raykube run jobs/quickstart.yaml                 # train, then answer one request
raykube run jobs/quickstart.yaml --epochs 20     # continue the same run to 20 epochs
raykube run jobs/quickstart.yaml --serve         # keep serving until Ctrl-C
raykube run my-run.yaml --storage /data/runs --workers 4

Re-running a finished run trains nothing; an interrupted one (Ctrl-C, a crash)
continues from its last checkpoint in <storage>/<name>/. Ray's own output goes to
<storage>/<name>/raykube.log (-v or RAYKUBE_VERBOSE=1 shows it on the terminal).
""")
    p.add_argument("file", metavar="FILE", help="YAML file holding one TrainingRun")
    p.add_argument("--storage", default=None, type=local_path,
                   help="storage root; the run directory is <storage>/<name>/ (default: "
                   "<checkpoint.storage.uri>/<namespace> when the spec names an s3:// URI, "
                   "as on a cluster, else ./runs)")
    p.add_argument("--workers", type=int, help="override spec.scaling.workers")
    p.add_argument("--epochs", type=int, help="override spec.train.epochs")
    p.add_argument("--serve", action="store_true",
                   help="keep the model served after the demo request (until Ctrl-C); "
                   "also when the spec's serve.enabled is false")
    p.add_argument("--port", type=port_number, default=8000,
                   help="HTTP port of the local server (default 8000)")
    p.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard on 127.0.0.1 and print its address (always on "
                   "for a spec with tune:, whose trials need its state API; off otherwise: "
                   "~1 s sooner to the first step)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own output here instead of in the run's raykube.log")


def local_storage(tr, flag: str | None) -> str:  # noqa: ANN001 (TrainingRun; lazy import)
    """The storage root of a local run: ``--storage`` when given; else the spec's own
    ``checkpoint.storage.uri`` laid out as on a cluster (``<uri>/<namespace>``, so
    ``raykube run`` and the operator share checkpoints and ``best/``); else ./runs (a
    spec's PVC exists only in a cluster)."""
    if flag:
        return flag
    if tr.spec.checkpoint.storage.uri:
        from raykube.render import storage_root

        return storage_root(tr)
    return "./runs"


def _fail(message: str) -> int:
    from raykube import terminal

    print(f"raykube run: {message}", file=terminal.err())
    return 1


def _oversubscribed(tr, cpus: int | None) -> str | None:  # noqa: ANN001
    """A warning when the run asks for more CPUs than the machine has (it still runs,
    on an oversubscribed local Ray, but each worker gets a fraction of a core)."""
    s = tr.spec
    need = s.scaling.workers * s.scaling.cpus_per_worker * (
        s.tune.max_concurrent_trials if s.tune is not None else 1)
    if cpus and need > cpus:
        return (f"note: {s.scaling.workers} worker(s) x {s.scaling.cpus_per_worker:g} CPU"
                + (f" x {s.tune.max_concurrent_trials} concurrent trials" if s.tune else "")
                + f" on a {cpus}-CPU machine: the workers share cores, so this is slower "
                f"than fewer workers would be (--workers {max(1, int(cpus // s.scaling.cpus_per_worker))})")
    return None


def run(args: argparse.Namespace) -> int:
    import os

    from rich.console import Console

    from raykube import terminal
    from raykube.spec import InvalidTrainingRun, load_one, parse_training_run, set_path

    try:
        tr = resolve_data_uri(load_one(args.file), args.file)
        overrides = {k: v for k, v in (("scaling.workers", args.workers),
                                       ("train.epochs", args.epochs)) if v is not None}
        if overrides:
            # Re-parse the whole TrainingRun: the cross-field checks (e.g. a Tune
            # scheduler's gracePeriod <= train.epochs) must see the overridden values.
            # (in the spec's own words: "--epochs 0" said pydantic's "Input should be
            # greater than or equal to 1")
            spec = tr.spec.to_dict()
            for path, value in overrides.items():
                spec = set_path(spec, path, value)
            tr = parse_training_run({**tr.to_dict(), "spec": spec},
                                    source=f"{args.file} (with {' '.join(map(FLAGS.get, overrides))})")
    except InvalidTrainingRun as exc:
        for e in exc.errors:
            print(f"{e.source or exc.source or args.file}: {e.path}: {e.message}", file=sys.stderr)
        return 1

    from raykube.local import available_memory, memory_shortfall

    if shortfall := memory_shortfall(tr, available_memory()):
        return _fail(shortfall)

    from raykube import run_lock
    from raykube.data import DatasetUnavailable
    from raykube.train import RunDirConflict, StorageError, check_resumable, check_storage

    storage = local_storage(tr, args.storage)
    # Everything a user can get wrong is checked before Ray starts and training runs:
    # the storage, what it already holds, and the port the model will be served on.
    try:
        run_dir = check_storage(storage, tr.name)
        lock = run_lock.hold(run_dir)  # noqa: F841 (held until this process exits)
        check_resumable(run_dir, tr.spec)
        if tr.spec.data.uri:
            from raykube import s3

            s3.check_named("data.uri", tr.spec.data.uri)
        if tr.spec.serve.enabled:
            from raykube.serve import ensure_port_free

            ensure_port_free("127.0.0.1", args.port)
        # The data too: a corrupt pre-seeded download, an undecodable image or too few
        # classes is one line now (cached: training does not load it twice).
        from raykube import data as rk_data

        rk_data.prepare(tr.spec, rk_data.cache_dir_for(tr.spec, storage), storage)
        if tr.spec.tune is not None:
            from raykube.tune import StorageConflict, check_search_storage

            try:
                check_search_storage(run_dir, tr.spec)
            except StorageConflict as exc:
                return _fail(str(exc))
    except (OSError, RunDirConflict, DatasetUnavailable) as exc:
        return _fail(str(exc))

    if not terminal.verbose(args.verbose):
        terminal.divert(f"{run_dir}/raykube.log" if "://" not in run_dir
                        else terminal.default_log("run"))
    console = Console(file=terminal.out(), soft_wrap=True)  # paths and curl stay pasteable
    warning = _oversubscribed(tr, os.cpu_count())
    if warning:
        console.print(warning, style="yellow", highlight=False)

    from raykube.checkpoint import CheckpointError
    from raykube.local import (
        curl_command,
        demo_request,
        describe_answer,
        gpu_shortfall,
        init_ray,
        local_cpus,
        train_or_tune,
        validation_example,
    )
    from raykube.spec import gate_shortfall
    from raykube.train import actor_died_line, is_training_failure, training_failure

    if tr.spec.tune is not None:
        from raykube.tune import StorageConflict, TrialTable, TuneInterrupted

        observers: list = [TrialTable(console)]
        expected: tuple = (StorageConflict,)
        # Tune takes the first Ctrl-C itself (it saves the search state and returns)
        stopped: tuple = (TuneInterrupted,)
    else:
        from raykube.display import RichDisplay

        observers, expected, stopped = [RichDisplay(console)], (), ()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from raykube.commands._util import sigterm_as_ctrl_c

    sigterm_as_ctrl_c()  # before Ray starts: it stays through ray.init (raykube.ray_local)
    # Idle workers for Ray Data's decode tasks: only for a folder Ray Data decodes (a
    # small local one was decoded above, by prepare()).
    dashboard = init_ray(num_cpus=local_cpus(tr), dashboard=args.dashboard or tr.spec.tune is not None,
                         prestart_workers=tr.spec.data.dataset == "image-folder"
                         and not rk_data.decodes_in_process(tr.spec))
    import ray

    if shortfall := gpu_shortfall(tr, float(ray.cluster_resources().get("GPU", 0))):
        return _fail(shortfall)
    if args.dashboard:
        console.print(f"Ray dashboard: {dashboard}" if dashboard else
                      "[yellow]note[/]: Ray's dashboard did not start (see the run's raykube.log)",
                      highlight=False)
    try:
        outcome = train_or_tune(tr, storage, observers=observers)
    except (DatasetUnavailable, StorageError, RunDirConflict, CheckpointError, *expected) as exc:
        _stop(observers)
        return _fail(str(exc))
    except (KeyboardInterrupt, *stopped):
        try:
            _stop(observers)
            _stop_ray()  # no Train worker may save another epoch after we say what is saved
        except KeyboardInterrupt:  # Ctrl-C again while Ray stops: what is saved is still said
            pass  # (it printed a bare "interrupted"; Ray's exit hooks end the rest)
        return _interrupted(run_dir, tr)
    except ray.exceptions.ActorDiedError as exc:  # e.g. Train's controller killed (kill -9, OOM)
        import traceback

        traceback.print_exc()  # into the run's log (stderr is diverted there)
        _stop(observers)
        where = terminal.log_path()
        return _fail(f"training stopped: {actor_died_line(exc)}; "
                     + _saved_epochs_line(run_dir, tr.spec.train.epochs, what=None)
                     + (f" (details in {where})" if where else ""))
    except Exception as exc:  # Ray Train's TrainingFailedError: the workers' errors, not its header
        if not is_training_failure(exc):
            raise
        import traceback

        traceback.print_exc()  # into the run's log (stderr is diverted there)
        _stop(observers)
        why = training_failure(exc)
        hint = ("; this machine's memory: fewer workers (--workers) or a smaller model"
                if "OutOfMemoryError" in why else "")
        where = terminal.log_path()
        return _fail(f"training failed: {why}{hint}"
                     + (f" (details in {where})" if where else ""))
    best = f"{run_dir}/best"

    serve = tr.spec.serve
    if not serve.enabled and not args.serve:
        # --serve serves it anyway, as `render --serve` renders its RayService (it
        # ended here without a word)
        return 0
    if short := gate_shortfall(serve.min_accuracy, outcome.best_metrics):
        console.print(f"[yellow]not served[/]: {short}")
        return 0
    from raykube.serve import start_local, stop_local

    try:
        url = start_local(best, serve, port=args.port, quiet=True)
    except (OSError, RuntimeError, TimeoutError) as exc:  # e.g. the port got taken meanwhile
        return _fail(f"trained, but could not serve {best}: {exc} "
                     f"(try: raykube serve {best} --port ...)")
    try:
        instance, truth = validation_example(_served_run(tr, outcome), storage)
        answer = demo_request(url, instance)
        console.print(f"served at [bold]{url}[/]\n  question: one validation example, "
                      f"true label [bold]{truth}[/]\n  answer:   {describe_answer(answer)}")
        if args.serve:
            from raykube.commands._util import wait_for_interrupt

            console.print("serving until Ctrl-C. Try:")
            print(curl_command(url, instance), file=terminal.out(), flush=True)
            wait_for_interrupt()
    except KeyboardInterrupt:
        pass
    finally:
        stop_local()
    return 0


def _served_run(tr, outcome):  # noqa: ANN001, ANN202 (TrainingRun, local.Outcome)
    """The TrainingRun whose model is served: after a search, the best trial's spec (a
    searched ``data.shape``, ``data.dataset`` or ``data.imageSize`` changes what the model
    takes, and the base spec's example was refused with HTTP 422 after the search)."""
    if tr.spec.tune is None:
        return tr
    from raykube.tune import TuneOutcome, trial_spec

    if not isinstance(outcome.raw, TuneOutcome):
        return tr
    return tr.model_copy(update={"spec": trial_spec(tr.spec, outcome.raw.best_config)})


def _stop(observers: list) -> None:
    """End live displays before printing an error under them."""
    for o in observers:
        for name in ("stop",):
            hook = getattr(o, name, None)
            if hook is not None:
                hook()
        progress = getattr(o, "progress", None)
        if progress is not None:
            progress.stop()
            o.progress = None


def _stop_ray() -> None:
    """Shut this command's Ray down now, workers included: a Ctrl-C reaches the driver
    first, and a Train worker finishing its epoch meanwhile would otherwise save one more
    checkpoint after the interrupted message counted them (the message would be behind
    the storage, and a re-run's "continuing from" would not match it)."""
    import contextlib

    from raykube.ray_local import shutdown_local_ray

    with contextlib.suppress(Exception):  # best effort; the storage is read either way
        shutdown_local_ray()


def _interrupted(run_dir: str, tr) -> int:  # noqa: ANN001
    """Ctrl-C: say what is safely on storage, from the storage itself (the live display
    may be behind it), and what running again does."""
    from raykube import terminal

    if tr.spec.tune is not None:
        from raykube.tune import interrupted_search_line  # imported already: the search ran

        msg = interrupted_search_line(run_dir, tr.spec)
    else:
        msg = _saved_epochs_line(run_dir, tr.spec.train.epochs)
    print(msg, file=terminal.err())
    return 130


def _saved_epochs_line(run_dir: str, epochs: int, what: str | None = "interrupted") -> str:
    """What a re-run continues from, told from the files alone (``latest_saved``: no
    torch, which the Ctrl-C may have cut off mid-import). Storage that cannot be read
    now (an object store gone) still gets a line: the exit stays that of a Ctrl-C.
    ``what``: the line's lead ("interrupted: "), None for none (it follows another)."""
    lead = f"{what}: " if what else ""
    try:
        from raykube.resume import latest_saved

        ckpt, meta = latest_saved(run_dir)
        epoch = int(meta["epoch"]) if ckpt and meta else None
    except Exception:  # e.g. the object store went away too; the checkpoints stay
        import logging

        logging.getLogger(__name__).warning("could not count the checkpoints of %s", run_dir,
                                            exc_info=True)
        return (f"{lead}the checkpoints in {run_dir} could not be counted now; running "
                "the same command again continues from the latest")
    if epoch is None:
        return (f"{what} before the first checkpoint of {run_dir}" if what
                else f"no checkpoint in {run_dir} yet")
    return (f"{lead}{run_dir} has {epoch} of {epochs} epochs; "
            f"running the same command again continues from epoch {epoch + 1}")

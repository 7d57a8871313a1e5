"""Start Ray Train's worker processes while the driver is still preparing the run.

Why: on a small machine most of the time from ``raykube run`` to the first training step
is Python processes starting one after another. Ray Train's controller starts only once
the driver has imported Ray Train and built the trainer; the controller then starts its
SynchronizationActor and the Train workers. Each of those actors needs a
worker process, and Ray starts one only when the actor is created, because every one of
them carries a runtime env (the variables Train propagates) that no idle worker has.

Ray's raylet can start workers ahead of time for a given job and runtime env
(``NodeManagerService.PrestartWorkers``, kept alive for a while). Asked for as ``fit``
begins (all of them: the raylet starts two at a time on two cores, so a background
thread asks for the next two once the first have registered), they come up while the
driver prepares the data and the controller loads, and the Train actors are placed in
them without waiting for a process start. The
runtime env must be byte-identical to the one Ray computes for those actors, or the
workers go unused (nothing breaks: they exit when their keep-alive ends).
``train_runtime_env_string`` derives it the way Ray 2.60 does;
``tests/integration/test_prestart.py`` shows from a real Ray's logs that a run then has
one worker process per Train actor, none left unused.

Only for a Ray of one node (``raykube run``, the bench): on a multi-node cluster the
workers' nodes are not known before Train places them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from raykube.flags import env_flag

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 60
"""How long an unused prestarted worker stays (Ray reclaims idle workers after that)."""
FOLLOW_UP_S = 30.0
"""How long the follow-up requests wait for earlier batches to come up."""
ENABLE_ENV = "RAYKUBE_PRESTART_TRAIN_WORKERS"
"""``0`` turns prestarting off."""
PLAIN_ENV_KEYS = frozenset({"env_vars", "worker_process_setup_hook", "config"})
"""Job runtime envs prestarting handles: nothing to download or install. A job with a
``working_dir``, ``py_modules``, ``pip``, ... (its URIs travel beside the serialized env)
lets Ray start Train's workers itself."""


def train_runtime_env_string(job_runtime_env: dict[str, Any]) -> str:
    """The serialized runtime env of Ray Train's controller, SynchronizationActor and
    workers in a job whose runtime env is ``job_runtime_env``.

    The driver creates the controller with ``env_vars``: the Train variables set in its
    environment plus ``RAY_WARN_BLOCKING_GET_INSIDE_ASYNC`` (default); Ray's core worker
    merges that into the job's runtime env (the child's variables win) and writes compact
    JSON with sorted keys. The controller's children inherit it: the SynchronizationActor
    unchanged, the workers merged with the same variables again."""
    from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR

    train = _train_constants()
    child = train.get_env_vars_to_propagate()
    child.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                     train.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    merged = dict(job_runtime_env)
    merged["env_vars"] = {**(job_runtime_env.get("env_vars") or {}), **child}
    return json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _train_constants() -> Any:
    """Ray Train's ``ray.train.v2._internal.constants``, without importing ``ray.train``.

    Importing it the usual way imports its package first, ``ray.train``, which pulls in
    Ray Data, pyarrow and pandas: ~0.7 CPU-s (1.5 s on a busy 2-core machine) that the
    prestart request would wait for, while the processes it asks for could be starting.
    The module itself only reads environment variables, with helpers from ``ray`` that
    ``import ray`` has loaded; so its file is loaded on its own, under a private name
    (the driver imports the real one with ``ray.train`` right after). If that fails (a
    Ray whose module needs more), the usual import."""
    import importlib.util

    import ray

    path = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "constants.py")
    try:
        spec = importlib.util.spec_from_file_location("_raykube_ray_train_constants", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.get_env_vars_to_propagate  # noqa: B018 - the two names used, or fall back
        module.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE  # noqa: B018
        return module
    except Exception:  # noqa: BLE001
        log.debug("loading %s on its own failed; importing ray.train", path, exc_info=True)
    from ray.train.v2._internal import constants

    return constants


def startup_concurrency(node_cpus: float) -> int:
    """How many worker processes the raylet starts at once (Ray's ``services.py``): a
    prestart request for more starts only this many and drops the rest."""
    return max(1, min(os.cpu_count() or 1, int(node_cpus)))


def prestart_train_workers(num: int, *, keep_alive_s: int = KEEP_ALIVE_S) -> int:
    """Ask this one-node Ray to start ``num`` worker processes with the runtime env of
    Ray Train's actors: the controller, its SynchronizationActor and the workers
    (``workers + 2``). Call after ``ray.init``, as the run begins.

    The raylet starts at most ``startup_concurrency`` processes at a time and drops the
    rest of a request while those are still starting, so the first batch is asked for
    here, and a daemon thread asks for the next as soon as the previous one has
    registered (the raylet's ``GetWorkerPIDs``, polled every 50 ms, for at most
    ``FOLLOW_UP_S``). Returns how many the first request asked for; any failure is
    logged at debug level and ignored (Ray then starts the workers as it normally does).
    """
    if num <= 0 or not env_flag(ENABLE_ENV, True):
        return 0
    channel = None
    try:
        import ray
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
        from ray.runtime_env import RuntimeEnvConfig

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) != 1:
            return 0
        node = nodes[0]
        batch = startup_concurrency(node.get("Resources", {}).get("CPU", 1))
        ctx = ray.get_runtime_context()
        job_env = json.loads(ctx.get_runtime_env_string() or "{}")
        if set(job_env) - PLAIN_ENV_KEYS:  # a working_dir, pip, ...: left to Ray
            return 0
        req = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON, job_id=bytes.fromhex(ctx.get_job_id()),
            keep_alive_duration_secs=keep_alive_s)
        req.runtime_env_info.serialized_runtime_env = train_runtime_env_string(job_env)
        req.runtime_env_info.runtime_env_config.CopyFrom(
            RuntimeEnvConfig.default_config().build_proto_runtime_env_config())
        channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}",
                                    asynchronous=False)
        raylet = node_manager_pb2_grpc.NodeManagerServiceStub(channel)

        def registered() -> set[int]:
            return set(raylet.GetWorkerPIDs(node_manager_pb2.GetWorkerPIDsRequest(),
                                            timeout=10).pids)

        before = registered()
        first = min(num, batch)
        req.num_workers = first
        raylet.PrestartWorkers(req, timeout=10)
    except Exception:  # a private Ray API: if it moved, start workers as Ray does
        log.debug("could not prestart Train's worker processes", exc_info=True)
        if channel is not None:
            channel.close()
        return 0
    if first >= num:
        channel.close()
        return first

    def follow_up() -> None:
        asked, deadline = first, time.monotonic() + FOLLOW_UP_S
        try:
            while asked < num and time.monotonic() < deadline:
                if len(registered() - before) >= asked:  # the last batch is up
                    req.num_workers = min(num - asked, batch)
                    raylet.PrestartWorkers(req, timeout=10)
                    asked += req.num_workers
                else:
                    time.sleep(0.05)
        except Exception:  # Ray shut down meanwhile, or the API moved
            log.debug("could not prestart more of Train's worker processes", exc_info=True)
        finally:
            channel.close()

    threading.Thread(target=follow_up, name="raykube-prestart", daemon=True).start()
    return first

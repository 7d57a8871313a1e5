"""Start this command's own local Ray, isolated from any other on the machine.

Two raykube commands at once (``serve`` in one terminal, ``run`` in another, as the
README suggests) each start a Ray. ``address="local"`` makes ``ray.init`` start a new
one instead of joining or refusing, but Ray's own code inside that instance (Ray Train's
placement-group cleaner calls the state API with no address) still looks the cluster up
by scanning the machine, and with two instances running it fails with "Found multiple
active Ray instances" (a 30-line traceback every run). So the GCS port is chosen here,
before start, and every process of the job gets ``RAY_ADDRESS`` pointing at it.

It also starts leaner than ``ray.init`` does on its own (``_lean_start``): ``ray.init``
took 3.4-3.7 s here, of which ~1 s waiting for Ray's API-server process (which, without
the dashboard and with usage stats off, serves nothing) and up to 1 s more because it
looks for its raylet in the GCS once a second.

A SIGTERM handler the command set before (``commands._util.sigterm_as_ctrl_c``) stays
in place through ``ray.init`` (``_keeping_sigterm_handler``): ``ray.init`` sets two of its
own, a bare ``sys.exit(15)`` and the head node's (kill Ray's processes, exit 1), so a
``kill`` while Ray started ended ``raykube serve`` or ``run`` with exit 15 and no word.

Ray's processes start in process groups of their own (``_own_process_group``), so a
SIGTERM to the command's group (``timeout``, ``kill -- -PGID``) stops the command, which
stops Ray in order, instead of killing the GCS and raylet under it.

And it ends with nothing left behind (``shutdown_local_ray``): Ray 2.60's worker processes
can deadlock in their own exit (seen here: a Train controller of a finished ``raykube
run``, its core worker's destructor waiting on a mutex the same thread held, in
``boost::asio::detail::scheduler::shutdown``). Such a process has already left its raylet,
so Ray's shutdown does not kill it, and it stayed forever (211 MB resident, one thread
waking). The raylet's processes are listed before Ray shuts down, and any still there a
moment after are killed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from raykube.flags import env_flag
from raykube.ports import free_port

log = logging.getLogger(__name__)

LEAN_ENV = "RAYKUBE_LEAN_RAY"  # off ("0", "false"): start Ray exactly as ray.init does
NODE_POLL_S = 0.02
NODE_WAIT_S = 30.0  # Ray's own limit (raylet_start_wait_time_s)
REAP_GRACE_S = 2.0  # how long Ray's processes get to exit on their own after shutdown


def _wait_for_node(get_node: Any) -> Any:
    """``ray._private.services.get_node`` that first polls the GCS every 20 ms for the
    node, then asks the original (which then answers at once).

    Ray's original (``GlobalStateAccessor::GetNode``, C++) re-polls once a second; the
    raylet registers ~1 s after it starts its agents, so ``ray.init`` waited up to a
    second longer than needed. Any failure here falls back to Ray's own wait."""

    def wait_then_get(gcs_address: str, node_id: str) -> Any:
        try:
            from ray._raylet import GcsClient

            client = GcsClient(address=gcs_address)
            deadline = time.monotonic() + NODE_WAIT_S
            while time.monotonic() < deadline:
                if any(n.hex() == node_id for n in client.get_all_node_info(timeout=5)):
                    break
                time.sleep(NODE_POLL_S)
        except Exception as exc:  # Ray's internals moved: its own wait still works
            log.debug("raykube: polling the GCS for the node failed (%s); Ray waits", exc)
        return get_node(gcs_address, node_id)

    return wait_then_get


@contextlib.contextmanager
def _lean_start(include_dashboard: bool | None) -> Iterator[None]:
    """While ``ray.init`` starts a local Ray: leave out what a Ray without the dashboard
    does not use, and find the raylet sooner. ``RAYKUBE_LEAN_RAY=0`` turns it off.

    - Ray's API-server process, when the dashboard is off and usage stats are off (its
      only module then is the usage-stats reporter): ``ray.init`` starts the raylet only
      once that Python process has published its address (~1 s here), and it wakes
      beside the workers all run long. Nothing else of a local Ray uses it: the job,
      state and Serve REST APIs it would serve are the dashboard's.
    - Ray's autoscaler monitor, when the dashboard is off: an autoscaler for a
      fixed-size Ray of one machine (one Python process more on the way to a run's first
      step, ~1 % of a core beside the workers). ``ray status`` reads its report, so
      with it gone ``ray status`` has none; ``--dashboard`` starts Ray in full.
    - the 1 s polling for the raylet's registration (``_wait_for_node``), always.

    Each replacement is undone when ``ray.init`` returns. ``tests/integration/
    test_ray_local.py`` checks from Ray's own process table that they took effect, so a
    Ray upgrade that moves them fails a test instead of quietly making start-up slow."""
    if not env_flag(LEAN_ENV, True):
        yield
        return
    from ray._common.usage import usage_lib
    from ray._private import node, services

    saved = (node.Node.start_api_server, node.Node.start_monitor, services.get_node)

    def no_api_server(self: Any, **_: Any) -> None:
        self._webui_url = None  # what Ray records when its API server fails to start

    def no_monitor(self: Any) -> None:
        return None

    if include_dashboard is False:
        if not usage_lib.usage_stats_enabled():
            node.Node.start_api_server = no_api_server
        node.Node.start_monitor = no_monitor
    services.get_node = _wait_for_node(saved[2])
    try:
        yield
    finally:
        node.Node.start_api_server, node.Node.start_monitor, services.get_node = saved


@contextlib.contextmanager
def _own_process_group() -> Iterator[list[Any]]:
    """While ``ray.init`` starts Ray's processes (GCS, raylet, log monitor): each in a
    process group of its own, not the command's.

    ``timeout``, ``kill -- -PGID`` and a shell's job control signal the whole group.
    Ray blocks SIGINT in its processes (so Ctrl-C reaches only the command, which stops
    Ray in order), but not SIGTERM: a group SIGTERM killed the GCS and raylet under the
    command, so ``raykube run`` waited 60 s for a GCS that was gone and exited 1 without
    saying what was saved, and ``raykube serve`` left Serve's HAProxy (a grandchild,
    never stopped) holding the port. In a group of their own they get only what the
    command does to them; Ray's fate sharing (the kernel kills them when the command
    dies) still holds, and the raylet's workers and agents are in the raylet's group.

    Yields the list of the processes started (Popen objects), for ``_kill_started``."""
    from ray._private import services

    saved = services.ConsolePopen
    started: list[Any] = []

    class OwnGroupPopen(saved):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            ray_preexec = kwargs.get("preexec_fn")

            def preexec() -> None:
                os.setpgid(0, 0)
                if ray_preexec is not None:
                    ray_preexec()

            kwargs["preexec_fn"] = preexec
            super().__init__(*args, **kwargs)
            started.append(self)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield started
    finally:
        services.ConsolePopen = saved


def _kill_started(started: list[Any]) -> list[int]:
    """Kill (SIGKILL) what an interrupted ``ray.init`` had started: each process and
    every descendant (the raylet's dashboard and runtime-env agents, its workers), and
    reap them. A Ctrl-C while Ray started left those agents running for a minute, parented
    to init (~210 MB a pair; one pair per interrupted start), and the GCS and raylet as
    zombies: ``shutdown_local_ray`` only runs for a Ray that finished starting."""
    killed = []
    for proc in started:
        family = {**_descendants(proc.pid), proc.pid: _start_time(proc.pid)}
        for pid, t in family.items():
            if t is not None and _start_time(pid) == t:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
    for proc in started:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
    return killed


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """While ``ray.init`` runs: keep the Python SIGTERM handler the caller set (a
    command's "SIGTERM is Ctrl-C"), instead of the two Ray sets in the driver.

    Ray's are a driver's ``sys.exit(15)`` (set first thing in ``ray.init``) and, when it
    starts the node itself, one that kills the node's processes and exits 1. A command
    that handles the interrupt already stops its Ray in a ``finally`` (and
    ``shutdown_local_ray`` runs at exit): Ray's handlers only made it end without a word.
    Without a Python handler of the caller's (none, or the default), Ray's are kept."""
    mine = signal.getsignal(signal.SIGTERM)
    if not callable(mine) or threading.current_thread() is not threading.main_thread():
        yield
        return
    from ray._private import utils

    saved = utils.set_sigterm_handler
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = saved
        signal.signal(signal.SIGTERM, mine)


def init_local_ray(num_cpus: int | None = None, **kwargs: Any) -> Any:
    """``ray.init`` of a new local instance whose processes all know its address;
    ``ray.init``'s context."""
    import ray
    from ray._private.services import get_node_ip_address

    port = free_port("")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    address = f"{get_node_ip_address()}:{port}"
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "RAY_ADDRESS": address}
    try:
        with _keeping_sigterm_handler(), _own_process_group() as started, \
                _lean_start(kwargs.get("include_dashboard")):
            try:
                ctx = ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env,
                               **kwargs)
            except BaseException:  # Ctrl-C / SIGTERM mid-start, or Ray failing to start
                if not ray.is_initialized():
                    _kill_started(started)
                raise
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
    # Before Ray's own exit hook (registered when ray was imported: hooks run last first).
    atexit.register(shutdown_local_ray)
    return ctx


# ----------------------------------------------------------------- ending it
def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a later
    process that reuses its pid; None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` (Linux ``/proc``), with its start time."""
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in out and (start := _start_time(kid)) is not None:
                    out[kid] = start
                    todo.append(kid)
    return out


def _raylet_processes() -> dict[int, int]:
    """The processes this driver's local raylet started (workers, agents), if any."""
    try:
        import ray

        node = ray._private.worker._global_node
        raylets = node.all_processes.get("raylet", []) if node is not None else []
        return _descendants(raylets[0].process.pid) if raylets else {}
    except Exception:  # Ray's internals moved: shut down as Ray does
        log.debug("raykube: could not list the raylet's processes", exc_info=True)
        return {}


def shutdown_local_ray(grace_s: float = REAP_GRACE_S) -> list[int]:
    """``ray.shutdown()``, then kill (SIGKILL) every process the raylet had started that
    is still running ``grace_s`` later; the pids killed. Idempotent (registered at exit
    by ``init_local_ray``; commands may call it sooner)."""
    import ray

    if not ray.is_initialized():
        return []
    procs = _raylet_processes()
    ray.shutdown()
    deadline = time.monotonic() + grace_s
    while procs and time.monotonic() < deadline:
        procs = {p: t for p, t in procs.items() if _start_time(p) == t}
        if procs:
            time.sleep(0.05)
    killed = []
    for pid, started in procs.items():
        if _start_time(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    if killed:
        log.warning("raykube: %d Ray process(es) still running %.0f s after Ray shut down "
                    "were killed (pids %s)", len(killed), grace_s,
                    ", ".join(map(str, killed)))
    return killed

"""``raykube.ray_local``'s lean start (issue 14): a local Ray without the dashboard starts
no API-server process and no autoscaler monitor, finds its raylet by polling the GCS
(not Ray's once-a-second wait), and works; with the dashboard, or with
``RAYKUBE_LEAN_RAY=0``, Ray starts in full (the controls). And its end: no Ray process
outlives the command.

Real Ray, each case in a fresh interpreter (``ray.init`` is once per process), with a
Ray temp dir of its own. What is read is Ray's own record of what it started
(``Node.all_processes``) and a task's answer; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from raykube.ray_local import _start_time

pytestmark = pytest.mark.integration

PROBE = r"""
import json, sys
import ray
from ray._private import node, services
import raykube.ray_local as rl

before = (node.Node.start_api_server, node.Node.start_monitor, services.get_node)
asked = []
real_wait = rl._wait_for_node
def spy(get_node):
    wrapped = real_wait(get_node)
    def wait(gcs_address, node_id):
        info = wrapped(gcs_address, node_id)
        asked.append(info["node_id"] == node_id)
        return info
    return wait
rl._wait_for_node = spy
dashboard = json.loads(sys.argv[1])
rl.init_local_ray(num_cpus=1, include_dashboard=dashboard, configure_logging=False)
started = sorted(ray._private.worker._global_node.all_processes)
answer = ray.get(ray.remote(lambda: 6 * 7).remote())
restored = before == (node.Node.start_api_server, node.Node.start_monitor, services.get_node)
ray.shutdown()
print(json.dumps({"started": started, "answer": answer, "asked": asked, "restored": restored}))
"""


def _run_script(script: str, arg: str, **env: str) -> dict:
    """``script`` in a fresh interpreter with its own Ray temp dir; its last line (JSON)."""
    ray_tmp = tempfile.mkdtemp(prefix="rkl", dir="/tmp")  # short: Ray's socket paths
    try:
        full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYKUBE_LEAN_RAY")}
        full_env.update({"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", **env})
        r = subprocess.run([sys.executable, "-c", script, arg], env=full_env,
                           capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _start(dashboard: bool | None, **env: str) -> dict:
    return _run_script(PROBE, json.dumps(dashboard), **env)


def test_a_ray_without_dashboard_starts_lean_and_works():
    out = _start(False)
    assert out["answer"] == 42
    assert "dashboard" not in out["started"] and "monitor" not in out["started"], out
    assert {"gcs_server", "raylet", "log_monitor"} <= set(out["started"]), out
    # ray.init found its node through raykube's poll, and Ray's functions are back.
    assert out["asked"] == [True], out
    assert out["restored"], out


def test_the_controls_start_ray_in_full():
    # Ray's default (the dashboard when it can) and the switch: nothing left out.
    for out in (_start(None), _start(False, RAYKUBE_LEAN_RAY="0")):
        assert out["answer"] == 42
        assert {"dashboard", "monitor", "gcs_server", "raylet"} <= set(out["started"]), out
        assert out["restored"], out


# A worker that has left its raylet and then hangs in its own exit. Stands in for Ray
# 2.60's exit deadlock (a Train controller's core worker destructor waiting on a mutex
# its own thread held), which no real part produces on demand: here a Python exit hook
# that sleeps, after ``exit_actor`` has disconnected the worker from its raylet.
STUCK = r"""
import json, os, sys, time
import ray
from raykube.ray_local import init_local_ray

init_local_ray(num_cpus=1, include_dashboard=False, configure_logging=False)

@ray.remote
class Stuck:
    def pid_then_hang_at_exit(self):
        import atexit
        atexit.register(time.sleep, 3600)
        return os.getpid()

    def leave(self):
        ray.actor.exit_actor()

actor = Stuck.remote()
pid = ray.get(actor.pid_then_hang_at_exit.remote())
try:
    ray.get(actor.leave.remote())  # answered once Ray has seen the worker leave
except ray.exceptions.RayActorError:
    pass
print(json.dumps({"pid": pid}), flush=True)
if sys.argv[1] == "plain":
    ray.shutdown()  # Ray's shutdown alone: raykube's exit hook then has nothing to do
"""


def _alive(pid: int) -> bool:
    return _start_time(pid) is not None  # None: gone, or a zombie


def test_no_ray_process_outlives_the_command():
    # The control: with Ray's shutdown alone, the stuck worker outlives its Ray.
    orphan = _run_script(STUCK, "plain")["pid"]
    try:
        time.sleep(3)
        assert _alive(orphan), "the stand-in did not hang: this test would prove nothing"
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)

    # raykube's exit (shutdown_local_ray, registered by init_local_ray): gone when the
    # command has returned.
    pid = _run_script(STUCK, "raykube")["pid"]
    try:
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# SIGTERM while ray.init starts the node: sent from inside ray.init (Ray's node lookup,
# reached once the GCS and raylet run), where a `kill` lands during a command's start.
TERM_DURING_START = r"""
import json, os, signal, sys
from ray._private import services
from raykube.commands._util import sigterm_as_ctrl_c
import raykube.ray_local as rl

real_get_node = services.get_node
def term_then_get(gcs_address, node_id):
    os.kill(os.getpid(), signal.SIGTERM)
    return real_get_node(gcs_address, node_id)
services.get_node = term_then_get
if sys.argv[1] == "ctrl-c":
    sigterm_as_ctrl_c()
try:
    rl.init_local_ray(num_cpus=1, include_dashboard=False, configure_logging=False)
    outcome = "started"
except KeyboardInterrupt:
    outcome = "KeyboardInterrupt"
except SystemExit as exc:
    outcome = f"SystemExit {exc.code}"
handler = signal.getsignal(signal.SIGTERM)
print(json.dumps({"outcome": outcome, "handler": getattr(handler, "__qualname__", str(handler))}))
"""


def _ray_processes_of(ray_tmp: str) -> list[int]:
    """Live (not zombie) processes whose command line names this Ray's temp dir."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ray_tmp.encode() in cmdline and _alive(int(entry)):
            pids.append(int(entry))
    return pids


def test_sigterm_while_ray_starts_is_the_commands_ctrl_c():
    """A command that made SIGTERM its Ctrl-C (``raykube serve``, ``run``, ``predict``)
    keeps that through ``ray.init``: Ray's own handlers (a bare ``sys.exit(15)``, the head
    node's exit 1) ended the command without a word when a ``kill`` came while Ray
    started. The control: without a handler of the caller's, Ray's are kept."""
    outcomes = {}
    for mode in ("ctrl-c", "ray's"):
        ray_tmp = tempfile.mkdtemp(prefix="rkt", dir="/tmp")
        try:
            outcomes[mode] = _run_script(TERM_DURING_START, mode, RAY_TMPDIR=ray_tmp)
            deadline = time.monotonic() + 30
            while (left := _ray_processes_of(ray_tmp)) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert left == [], (mode, left)  # an interrupted start leaves no Ray behind
        finally:
            for pid in _ray_processes_of(ray_tmp):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert outcomes["ctrl-c"] == {"outcome": "KeyboardInterrupt",
                                  "handler": "sigterm_as_ctrl_c.<locals>._as_sigint"}, outcomes
    assert outcomes["ray's"]["outcome"].startswith("SystemExit"), outcomes


GROUPS = r"""
import json, os
import ray
import raykube.ray_local as rl

rl.init_local_ray(num_cpus=1, include_dashboard=False, configure_logging=False)
mine = os.getpgid(0)
groups = {name: [os.getpgid(p.process.pid) for p in infos]
          for name, infos in ray._private.worker._global_node.all_processes.items()}
answer = ray.get(ray.remote(lambda: os.getpgid(0)).remote())  # a worker: the raylet's group
ray.shutdown()
print(json.dumps({"mine": mine, "groups": groups, "worker": answer}))
"""


def test_rays_processes_are_not_in_the_commands_process_group():
    """``timeout`` or ``kill -- -PGID`` signal the command's whole process group: Ray's
    GCS and raylet died of it under a running `raykube run` (60 s of waiting for the
    GCS, exit 1, nothing said), and under `raykube serve` (Serve's HAProxy left holding
    the port). They are in groups of their own, and so are the workers."""
    out = _run_script(GROUPS, "")
    assert {"gcs_server", "raylet"} <= set(out["groups"]), out
    for name, groups in out["groups"].items():
        assert out["mine"] not in groups, (name, out)
    assert out["worker"] != out["mine"], out


# A Ctrl-C that lands while ray.init starts Ray: raised from inside the start, once the
# raylet has registered (its dashboard and runtime-env agents are up by then).
INTERRUPTED = r"""
import json, os, sys, time
import raykube.ray_local as rl

def family(pid):
    return {p: open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:200]
            for p in rl._descendants(pid)}

seen = {}
real_wait = rl._wait_for_node
def interrupting(get_node):
    wrapped = real_wait(get_node)
    def wait(gcs_address, node_id):
        wrapped(gcs_address, node_id)
        seen.update(family(os.getpid()))
        raise KeyboardInterrupt
    return wait
rl._wait_for_node = interrupting
try:
    rl.init_local_ray(num_cpus=1, include_dashboard=False, configure_logging=False)
except KeyboardInterrupt:
    pass
time.sleep(0.5)
print(json.dumps({"seen": seen, "alive": [p for p in seen if rl._start_time(int(p))]}))
"""


def test_a_ctrl_c_while_ray_starts_leaves_no_ray_process():
    """Before, the raylet's agents outlived the command for a minute (parented to init,
    ~210 MB a pair), and the GCS and raylet stayed as zombies."""
    out = _run_script(INTERRUPTED, "")
    cmds = " | ".join(out["seen"].values())
    assert "raylet" in cmds and "gcs_server" in cmds and "DashboardAgent" in cmds, cmds
    assert out["alive"] == [], {p: out["seen"][p] for p in out["alive"]}

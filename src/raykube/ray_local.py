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
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from raykube.flags import env_flag
from raykube.ports import free_port

log = logging.getLogger(__name__)

LEAN_ENV = "RAYKUBE_LEAN_RAY"  # off ("0", "false"): start Ray exactly as ray.init does
NODE_POLL_S = 0.02
NODE_WAIT_S = 30.0  # Ray's own limit (raylet_start_wait_time_s)


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
        with _lean_start(kwargs.get("include_dashboard")):
            return ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env,
                            **kwargs)
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)

"""Start this command's own local Ray, isolated from any other on the machine.

Two raykube commands at once (``serve`` in one terminal, ``run`` in another, as the
README suggests) each start a Ray. ``address="local"`` makes ``ray.init`` start a new
one instead of joining or refusing, but Ray's own code inside that instance (Ray Train's
placement-group cleaner calls the state API with no address) still looks the cluster up
by scanning the machine, and with two instances running it fails with "Found multiple
active Ray instances" (a 30-line traceback every run). So the GCS port is chosen here,
before start, and every process of the job gets ``RAY_ADDRESS`` pointing at it.
"""

from __future__ import annotations

import os
from typing import Any

from raykube.ports import free_port


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
        return ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, **kwargs)
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)

"""Where Tune's trial actors run on a Ray cluster of more than one node.

A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a
second raylet, in a child process so that the session's shared Ray instance is left
alone) stands in for a RayCluster's head pod and a worker pod. Measured on a real node:
trial actors asking for a sliver of CPU landed on worker pods (Ray's placement-group
scheduler picks the node with the most free CPU), Ray Train pinned each trial's
controller beside it, and Ray's memory monitor killed 2 of 4 trials in 1Gi worker pods.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import json, sys
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from raykube.tune import TRIAL_RESOURCES

    resources = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)  # a worker pod: more free CPU than the head
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    head = [n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]

    def trial(config):
        tune.report({"on_head": ray.get_runtime_context().get_node_id() in head})

    grid = tune.Tuner(
        tune.with_resources(trial, resources),
        param_space={"x": tune.grid_search([1, 2, 3, 4])},
        tune_config=tune.TuneConfig(max_concurrent_trials=4),
        run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0),
    ).fit()
    print("RESULT", json.dumps([r.metrics["on_head"] for r in grid]))
    ray.shutdown()
    cluster.shutdown()
""")


def _on_head(resources: dict, tmp_path) -> list[bool]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(resources), str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].split(" ", 1)[1])


def test_trial_actors_run_on_the_head_node(tmp_path):
    from raykube.tune import TRIAL_RESOURCES

    assert _on_head(TRIAL_RESOURCES, tmp_path / "pinned") == [True] * 4
    # the control: without the head's resource, Ray puts them on the other node (all
    # 4 of 4 there in each run here)
    unpinned = {k: v for k, v in TRIAL_RESOURCES.items() if k.startswith("cpu")}
    assert False in _on_head(unpinned, tmp_path / "free")


def test_the_head_resource_is_rays():
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    from raykube.tune import HEAD_NODE_RESOURCE

    assert HEAD_NODE_RESOURCE == HEAD_NODE_RESOURCE_NAME

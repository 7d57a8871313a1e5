"""Issue 11 #1: an image-folder run finishes on a Ray cluster with exactly the CPUs the
rendered RayJob's pods advertise (head ``num-cpus: 0``, each worker pod its
``cpusPerWorker``), nothing spare.

Ray Data's read and decode tasks ask for CPUs too; on such a cluster they only ever find
one if the image folder is decoded before the Train workers take every worker CPU. The
test session's own Ray has spare CPUs and cannot show this, so the cluster here is Ray's
multi-node test cluster (``ray.cluster_utils.Cluster``: one real raylet per rendered pod,
each with that pod's ``num-cpus``), in a subprocess of its own, and the driver is the
RayJob's entrypoint, ``raykube train --spec``, joined to it with ``RAY_ADDRESS``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from raykube.render import RenderConfig, render_training
from raykube.spec import load_one

pytestmark = pytest.mark.integration

SPEC = """apiVersion: raykube.io/v1alpha1
kind: TrainingRun
metadata: {{name: folder-exact}}
spec:
  model: {{name: cifar-cnn}}
  data: {{dataset: image-folder, uri: "{root}", imageSize: 8, validationFraction: 0.25}}
  train: {{epochs: 2, batchSize: 16, optimizer: {{name: adam, lr: 0.01}}}}
  scaling: {{workers: 2, cpusPerWorker: 1}}
  checkpoint: {{keep: 1}}
"""

CLUSTER = textwrap.dedent("""
    import json, os, subprocess, sys
    from ray.cluster_utils import Cluster

    cpus = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": cpus[0], "include_dashboard": False})
    for n in cpus[1:]:
        cluster.add_node(num_cpus=n)
    cluster.wait_for_nodes()
    try:
        env = dict(os.environ, RAY_ADDRESS=cluster.address)
        rc = subprocess.run([sys.executable, "-m", "raykube", "train", *sys.argv[2:]],
                            env=env, timeout=float(os.environ["DRIVER_TIMEOUT"])).returncode
    except subprocess.TimeoutExpired:
        print("DRIVER TIMED OUT: Ray Data could not be scheduled?", flush=True)
        rc = 124
    finally:
        cluster.shutdown()
    sys.exit(rc)
""")


def advertised_cpus(objs: list[dict]) -> list[int]:
    """num-cpus of every pod of the rendered RayJob's cluster, head first."""
    job = next(o for o in objs if o["kind"] == "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    cpus = [int(spec["headGroupSpec"]["rayStartParams"]["num-cpus"])]
    for group in spec["workerGroupSpecs"]:
        cpus += [int(group["rayStartParams"]["num-cpus"])] * group["replicas"]
    return cpus


def test_image_folder_trains_on_exactly_the_rendered_cpus(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls, rgb in {"blue": (20, 40, 230), "red": (230, 30, 20)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(24):
            px = np.clip(np.array(rgb) + rng.integers(-20, 20, (10, 12, 3)), 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC.format(root=root))
    cpus = advertised_cpus(render_training(load_one(spec), RenderConfig()))
    assert cpus == [0, 1, 1], cpus  # what the pods advertise: no spare CPU anywhere

    storage = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    # Ray Data decodes the folder (as it does a large or s3:// one; this small one would
    # be decoded in the driver): its tasks need CPUs the Train workers do not hold.
    env.update(DRIVER_TIMEOUT="300", RAY_USAGE_STATS_ENABLED="0",
               RAYKUBE_DECODE_IN_PROCESS_MAX_FILES="0")
    p = subprocess.run([sys.executable, "-c", CLUSTER, json.dumps(cpus), "--spec", str(spec),
                        "--storage", str(storage)], capture_output=True, text=True, env=env,
                       timeout=420)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-4000:])
    result = json.loads((storage / "folder-exact" / "result.json").read_text())
    assert result["epochs"] == 2, result
    assert (storage / "folder-exact" / "best").exists()


ONE_PER_POD = """apiVersion: raykube.io/v1alpha1
kind: TrainingRun
metadata: {name: one-per-pod}
spec:
  model: {name: mlp, options: {hidden: [32]}}
  data: {dataset: digits}
  train: {epochs: 3, batchSize: 32}
  scaling: {workers: 2, cpusPerWorker: 0.5}
  checkpoint: {keep: 1}
"""

SLOTS = textwrap.dedent("""
    import json, os, subprocess, sys, time
    import ray
    from ray._private.state import available_resources_per_node
    from ray.cluster_utils import Cluster

    nodes = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": nodes[0]["cpus"], "resources": nodes[0]["resources"],
        "include_dashboard": False})
    for n in nodes[1:]:
        cluster.add_node(num_cpus=n["cpus"], resources=n["resources"])
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    env = dict(os.environ, RAY_ADDRESS=cluster.address, **json.loads(sys.argv[2]))
    driver = subprocess.Popen([sys.executable, "-m", "raykube", "train", *sys.argv[3:]], env=env)
    samples = []
    while driver.poll() is None:  # what each node has left while the workers train
        samples.append(list(available_resources_per_node().values()))
        time.sleep(0.2)
    print("SAMPLES " + json.dumps(samples), flush=True)
    ray.shutdown()
    cluster.shutdown()
    sys.exit(driver.returncode)
""")


def test_each_worker_pod_gets_the_train_workers_it_is_sized_for(tmp_path):
    """A pod of cpusPerWorker 0.5 must say num-cpus 1 (`ray start` takes whole CPUs),
    so Ray Train's PACK placement put both workers on the first worker pod, sized for one
    (seen on the real node of `make e2e-local`: two workers in one 1Gi pod, killed by
    Ray's memory monitor, the other pod idle). Each pod now advertises one
    raykube_worker_slot per worker it is sized for, and each worker asks for one: on a
    Ray cluster of exactly the rendered pods (one real raylet each, with the pod's
    num-cpus and resources as bash passes them to `ray start`), while training, each
    worker pod holds one worker and none ever holds two."""
    spec = tmp_path / "run.yaml"
    spec.write_text(ONE_PER_POD)
    job = next(o for o in render_training(load_one(spec), RenderConfig())
               if o["kind"] == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]

    def node(params: dict) -> dict:
        res = json.loads(shlex.split(params["resources"])[0]) if "resources" in params else {}
        return {"cpus": int(params["num-cpus"]), "resources": res}

    (group,) = cluster["workerGroupSpecs"]
    nodes = [node(cluster["headGroupSpec"]["rayStartParams"])] + \
        [node(group["rayStartParams"])] * group["replicas"]
    assert nodes == [{"cpus": 0, "resources": {}}] + \
        [{"cpus": 1, "resources": {"raykube_worker_slot": 1}}] * 2, nodes
    head_env = {e["name"]: e["value"] for e in cluster["headGroupSpec"]["template"]["spec"]
                ["containers"][0]["env"] if e["name"] == "RAYKUBE_WORKER_RESOURCE"}
    assert head_env == {"RAYKUBE_WORKER_RESOURCE": "raykube_worker_slot"}

    storage = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.run([sys.executable, "-c", SLOTS, json.dumps(nodes), json.dumps(head_env),
                        "--spec", str(spec), "--storage", str(storage)],
                       capture_output=True, text=True, env=env, timeout=420)
    assert p.returncode == 0, (p.stdout[-4000:], p.stderr[-4000:])
    samples = json.loads(next(line for line in p.stdout.splitlines()
                              if line.startswith("SAMPLES "))[len("SAMPLES "):])
    # Ray leaves out a resource that is all taken; the head is the node marked as such
    pods = [[n for n in s if "node:__internal_head__" not in n] for s in samples]
    training = [s for s in pods if all("raykube_worker_slot" not in n for n in s)]
    assert training, f"never saw both slots taken: {pods[-5:]}"
    # one worker per pod: half of each pod's CPU in use, never a pod with none left
    for s in training:
        assert sorted(n.get("CPU", 0.0) for n in s) == [0.5, 0.5], s
    assert json.loads((storage / "one-per-pod" / "result.json").read_text())["epochs"] == 3

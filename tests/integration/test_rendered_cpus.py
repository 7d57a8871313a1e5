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

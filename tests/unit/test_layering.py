"""Layering: the spec/render core and the operator never import torch or ray.

The operator image carries neither (it would be gigabytes), and `raykube validate` /
`raykube render` must work with the core install. Each check imports the modules in a
fresh interpreter and looks at what ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "ray", "numpy", "sklearn", "matplotlib")

LIGHT_MODULES = [
    "raykube.spec",
    "raykube.render",
    "raykube.crd",
    "raykube.events",
    "raykube.cli",
    "raykube.commands.validate",
    "raykube.commands.render",
    "raykube.commands.crd",
]
OPERATOR_MODULES = ["raykube_operator", "raykube_operator.handlers", "raykube_operator.status"]
OPERATOR_ALLOWED_RAYKUBE = {"raykube", "raykube.spec", "raykube.k8s_rules", "raykube.render", "raykube.crd",
                            "raykube.events", "raykube.flags",
                            # memory floors (math only): validation and the head's default
                            "raykube.footprint",
                            # how a file is read (yaml only), beside spec's own loading
                            "raykube.kube_yaml"}


def _imported_after(module: str) -> list[str]:
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_import_no_heavy_dependency(module):
    loaded = _imported_after(module)
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
    assert not heavy, f"{module} imports {heavy}"


@pytest.mark.parametrize("module", OPERATOR_MODULES)
def test_operator_imports_only_the_core(module):
    loaded = _imported_after(module)
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
    assert not heavy, f"{module} imports {heavy}"
    ours = {m for m in loaded if m == "raykube" or m.startswith("raykube.")}
    assert ours <= OPERATOR_ALLOWED_RAYKUBE, f"operator pulls in {sorted(ours - OPERATOR_ALLOWED_RAYKUBE)}"


def test_shipped_code_imports_no_dev_only_package():
    """The Ray image installs raykube[train] (the operator image raykube[operator]); a
    package only the `dev` extra brings (httpx, kmock, ...) imported by code those images
    run fails there and nowhere else: `raykube run`'s serve demo did (httpx). Only
    raykube.testing and raykube.bench (dev tools) may import them."""
    import ast
    import re
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(reqs):
        return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("-", "_") for r in reqs}

    shipped = names(project["dependencies"] + extras["train"] + extras["operator"])
    dev_only = names(extras["dev"]) - shipped - {"raykube"}
    assert "httpx" in dev_only and "kmock" in dev_only, dev_only

    bad = []
    for root in (repo / "src" / "raykube", repo / "operator" / "raykube_operator"):
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).parts
            if rel[0] in ("testing", "bench"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                        else [])
                bad += [f"{path.relative_to(repo)}: {m}" for m in mods
                        if m.split(".")[0].lower() in dev_only]
    assert not bad, bad


def test_trainer_is_built_without_torch():
    """The driver builds the run's trainer without importing torch: Ray Train's
    PyTorch backend is configured through ``raykube.torch_backend`` (``ray.train.torch``
    imports torch at its top; ~1.6 CPU-s on the path to the first step). Workers import
    torch when they set up the process group and train."""
    code = """
import json, sys, tempfile
from raykube.spec import parse_spec
from raykube.train import build_trainer
spec = parse_spec({"model": {"name": "cifar-cnn"},
                   "data": {"dataset": "synthetic", "shape": [3, 32, 32], "numSamples": 64},
                   "scaling": {"workers": 2}}).spec
d = tempfile.mkdtemp()
t = build_trainer(spec, storage_root=d, storage_path=d, name="layering")
print(json.dumps({"backend": type(t.backend_config).__module__ + "." + type(t.backend_config).__name__,
                  "context": t.backend_config.train_func_context.__module__,
                  "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["backend"] == "raykube.torch_backend.TorchBackendConfig", got
    assert got["context"] == "raykube.torch_backend", got
    assert got["torch"] == [], got["torch"][:10]


def test_prestart_derives_trains_runtime_env_without_importing_ray_train():
    """``raykube.prestart`` asks for Train's worker processes before the driver imports
    Ray Train (~0.7-1.5 s, with Ray Data and pandas): it reads Ray Train's propagated
    variables from ``ray.train.v2._internal.constants`` loaded on its own. The result must
    be what Ray's own module gives once ``ray.train`` is imported (else the prestarted
    processes go unused; ``tests/integration/test_prestart.py`` shows that end to end)."""
    code = """
import json, os, sys
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
from raykube.prestart import train_runtime_env_string
job = {"env_vars": {"A": "1"}, "worker_process_setup_hook": "m.f"}
ours = train_runtime_env_string(job)
before = sorted(m for m in sys.modules if m == "ray.train" or m.startswith(("ray.train.", "ray.data", "pandas")))
from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR as W
from ray.train.v2._internal.constants import (DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE as D,
                                              get_env_vars_to_propagate)
child = get_env_vars_to_propagate()
child.setdefault(W, D)
rays = json.dumps({**job, "env_vars": {**job["env_vars"], **child}}, sort_keys=True,
                  separators=(",", ":"), ensure_ascii=False)
print(json.dumps({"ours": ours, "rays": rays, "before": before}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == [], got["before"][:10]
    assert got["ours"] == got["rays"], got
    assert '"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S":"0.2"' in got["ours"], got["ours"]

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
OPERATOR_ALLOWED_RAYKUBE = {"raykube", "raykube.spec", "raykube.render", "raykube.crd",
                            "raykube.events"}


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

"""Ctrl-C while a resumed ``raykube run`` imports torch, end to end.

torch's first use in ``raykube run`` is ``plan_resume`` loading the newest checkpoint,
seconds after the start: a Ctrl-C then (5-6 s in, on a 2-core machine) cut torch's
import off half way, and the Ctrl-C handler, loading the checkpoints again to count
them, met that half torch: ``AttributeError: partially initialized module 'torch' has
no attribute 'cuda'`` (exit 1), a ``SystemError``, a segfault (exit 139), or "interrupted
before the first checkpoint" with 3 checkpoints on disk. Here the Ctrl-C
(``KeyboardInterrupt``, as Python raises it for SIGINT) is raised inside the import of
one of torch's own modules while ``load_payload`` runs: the same point every time,
rather than a timed signal. Unit cases: tests/unit/test_interrupt_summary.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raykube.spec import parse_spec

pytestmark = pytest.mark.integration

SPEC = """apiVersion: raykube.io/v1alpha1
kind: TrainingRun
metadata: {name: r}
spec:
  model: {name: mlp, options: {hidden: [16]}}
  data: {dataset: digits}
  train: {epochs: 4}
  scaling: {workers: 1}
"""

# ``raykube run ARGS...`` with a Ctrl-C inside the first import of the module argv[1]
# that happens while a checkpoint is being loaded (the file argv[2] says it happened).
CTRL_C_IN_IMPORT = """
import importlib.abc, sys

MODULE, FIRED = sys.argv[1], sys.argv[2]

class CtrlC(importlib.abc.MetaPathFinder):
    fired = False

    def find_spec(self, name, path, target=None):
        if name != MODULE or self.fired:
            return None
        frame = sys._getframe()
        while frame is not None and frame.f_code.co_name != "load_payload":
            frame = frame.f_back
        if frame is not None:
            self.fired = True
            open(FIRED, "w").close()
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
from raykube.cli import entry
sys.argv = ["raykube", "run", *sys.argv[3:]]
sys.exit(entry())
"""


def _env() -> dict[str, str]:
    """A fresh terminal's environment (not this session's Ray: its address, ports)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYKUBE_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.mark.parametrize("module", ["torch._C", "torch.nn"])
def test_ctrl_c_while_the_resumed_run_imports_torch(module, tmp_path):
    from raykube.checkpoint import save_checkpoint
    from raykube.models import build_model

    spec_file = tmp_path / "r.yaml"
    spec_file.write_text(SPEC)
    spec = parse_spec({"model": {"name": "mlp", "options": {"hidden": [16]}},
                       "data": {"dataset": "digits"}, "train": {"epochs": 4},
                       "scaling": {"workers": 1}}, name="r").spec
    run_dir = tmp_path / "runs" / "r"
    for epoch in (1, 2, 3):
        save_checkpoint(run_dir / f"checkpoint_epoch_{epoch:04d}",
                        model=build_model(spec.model, (1, 8, 8), 10), optimizer=None,
                        epoch=epoch, spec=spec.to_dict(), class_names=[str(i) for i in range(10)],
                        input_shape=(1, 8, 8), metrics={"valAccuracy": 0.5})
    fired = tmp_path / "fired"
    p = subprocess.run([sys.executable, "-c", CTRL_C_IN_IMPORT, module, str(fired),
                        str(spec_file), "--storage", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert fired.exists(), ("torch was imported before plan_resume: the Ctrl-C did not land "
                            "where this test means it to", p.stdout, p.stderr)
    assert p.returncode == 130, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    assert p.stderr.strip().splitlines()[-1] == (
        f"interrupted: {run_dir} has 3 of 4 epochs; running the same command again "
        "continues from epoch 4"), p.stderr

"""``raykube bench``: raykube's paths measured against plain baselines in the same run.

Each suite (``train``, ``ingest``, ``serve``, ``operator``) runs raykube's path and the
baselines it claims to be close to (plain PyTorch, DDP, DataLoader, FastAPI, ...) on the
same machine in one invocation, and writes ``bench.json``, ``table.md`` and ``chart.png``.
Machines are noisy: results are medians, and comparisons are ratios of figures measured
in the same run, never lone absolute numbers.
"""

from __future__ import annotations

SUITES: tuple[str, ...] = ("train", "ingest", "serve", "operator")

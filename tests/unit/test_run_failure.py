"""``<run dir>/failed.json`` (``raykube.run_failure``): what a RayJob's driver says when
its attempt fails, on a local volume. Reading the RayJob as the driver's own rendered
Role allows: ``tests/integration/test_operator_reporter.py``; a served replica failing
on it through Serve: ``tests/integration/test_serve_config.py``."""

from __future__ import annotations

import json
import logging

import pytest

from raykube import run_failure
from raykube.run_failure import RunFailure, attempt_outcome


def _rayjob(limit, failed):
    return {"spec": {"backoffLimit": limit}, "status": ({"failed": failed} if failed is not None
                                                       else {})}


@pytest.mark.parametrize("permanent, rayjob, final, outcome", [
    (True, None, True, "a new attempt would fail the same way"),
    (True, _rayjob(2, 0), True, "a new attempt would fail the same way"),
    (False, None, False, "whether KubeRay retries it is not known here"),
    (False, _rayjob(2, None), False, "KubeRay retries it: retry 1 of 2"),
    (False, _rayjob(2, 1), False, "KubeRay retries it: retry 2 of 2"),
    (False, _rayjob(2, 2), True, "no RayJob retry is left, spec.failure.maxRetries: 2"),
    (False, _rayjob(0, None), True, "no RayJob retry is left, spec.failure.maxRetries: 0"),
    # the operator lowered backoffLimit under a failed count (retries cancelled)
    (False, _rayjob(1, 2), True, "no RayJob retry is left, spec.failure.maxRetries: 1"),
    (False, {"spec": {}}, True, "no RayJob retry is left, spec.failure.maxRetries: 0"),
])
def test_an_attempt_is_final_when_kuberay_does_not_retry_it(permanent, rayjob, final, outcome):
    assert attempt_outcome(permanent, rayjob) == (final, outcome)


def test_the_record_round_trips_and_a_new_attempt_clears_it(tmp_path):
    run_dir = str(tmp_path / "default" / "q")
    assert run_failure.read(run_dir) is None and run_failure.clear(run_dir) is False
    failure = RunFailure(message="training failed: boom", at="2026-12-05T07:00:00Z",
                         final=True, outcome="no RayJob retry is left, spec.failure.maxRetries: 2")
    run_failure.record(run_dir, failure)  # the run directory need not exist yet
    assert run_failure.read(run_dir) == failure
    assert json.loads((tmp_path / "default" / "q" / "failed.json").read_text())["final"] is True
    assert failure.line(run_dir) == (
        f"the training run in {run_dir} failed for good at 2026-12-05T07:00:00Z (no RayJob "
        "retry is left, spec.failure.maxRetries: 2): training failed: boom; there is no model "
        "to serve. Fix the run and start it again (delete its RayJob and apply it), then "
        "apply this RayService again")
    assert run_failure.clear(run_dir) is True
    assert run_failure.read(run_dir) is None and run_failure.clear(run_dir) is False


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"message": "x"}',
                                     b'{"message": "x", "at": "t", "final": "yes", "outcome": "o"}'])
def test_a_file_that_is_not_a_record_is_ignored_not_believed(tmp_path, payload, caplog):
    (tmp_path / "failed.json").write_bytes(payload)
    with caplog.at_level(logging.WARNING, logger="raykube.run_failure"):
        got = run_failure.read(str(tmp_path))
    # "final" must be exactly true: anything else never fails a replica
    assert got is None or got.final is False
    if got is None:
        assert "not a failure record" in caplog.text


@pytest.mark.parametrize("value, expected", [
    (None, 300.0), ("", 300.0), ("0", 0.0), ("12.5", 12.5),
    ("-1", 300.0), ("soon", 300.0), ("inf", 300.0), ("nan", 300.0)])
def test_the_grace_period_is_five_minutes_unless_set(value, expected):
    env = {} if value is None else {run_failure.GRACE_ENV: value}
    assert run_failure.believe_after_s(env) == expected


@pytest.mark.parametrize("final, at, first_seen, believed", [
    (False, "2026-12-05T10:00:00Z", 0.0, False),  # KubeRay retries it: never
    (True, "2026-12-05T10:00:00Z", 1e12, True),  # it happened while the replica waited
    (True, "2026-12-05T09:59:59Z", 1e12, False),  # before: perhaps an earlier attempt's ...
    (True, "2026-12-05T09:59:59Z", 9_000.0, False),  # ... first seen less than 300 s ago
    (True, "2026-12-05T09:59:59Z", 8_700.0, True),  # ... first seen 300 s ago
    (True, "2026-12-05T09:59:59Z", 0.0, True),  # ... believed by another replica
    (True, "yesterday", 1e12, False),  # a time that is not one: only the grace period
])
def test_a_final_failure_is_believed_when_fresh_or_after_the_grace_period(
        final, at, first_seen, believed):
    from datetime import datetime, timezone

    from raykube.run_failure import is_believed

    since = datetime(2026, 12, 5, 10, 0, 0, 400000, tzinfo=timezone.utc).timestamp()
    failure = RunFailure(message="m", at=at, final=final, outcome="o")
    assert is_believed(failure, waiting_since=since, first_seen=first_seen + since - 9_000.0,
                       now=since, grace_s=300.0) is believed


def test_outside_ray_a_replica_has_only_its_own_sightings():
    failure = RunFailure(message="m", at="2026-12-05T10:00:00Z", final=True, outcome="o")
    assert run_failure.first_seen("/runs/x", failure, 123.0) == 123.0
    run_failure.tell_believed("/runs/x", failure)  # nothing to tell: no error

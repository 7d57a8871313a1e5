"""`raykube run` / `raykube train` refuse bad input before any Ray work starts."""

from __future__ import annotations

from raykube.cli import main
from raykube.local import describe_answer
from raykube.spec import gate_shortfall, parse_spec


def test_run_rejects_an_invalid_file_naming_the_field(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: raykube.io/v1alpha1\nkind: TrainingRun\nmetadata: {name: x}\n"
                 "spec:\n  model: {name: mlp}\n  data: {dataset: digits}\n  scaling: {workers: 0}\n")
    assert main(["run", str(f)]) == 1
    assert "spec.scaling.workers" in capsys.readouterr().err


def test_run_rejects_a_bad_override(jobs_dir, capsys):
    assert main(["run", str(jobs_dir / "quickstart.yaml"), "--workers", "0"]) == 1
    assert "workers" in capsys.readouterr().err


def test_train_rejects_a_missing_spec_file(tmp_path, capsys):
    assert main(["train", "--spec", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_gate_and_answer_formatting():
    run = parse_spec({"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                      "serve": {"enabled": True, "minAccuracy": 0.9}})
    gate = run.spec.serve.min_accuracy
    assert gate_shortfall(gate, {"valAccuracy": 0.95, "valExamples": 359.0}) is None
    assert gate_shortfall(gate, {"valAccuracy": 0.5}) == "valAccuracy 0.5000 < serve.minAccuracy 0.9"
    assert "no valAccuracy" in gate_shortfall(gate, {})
    # a perfect score on one example is no evidence (the probe's validationFraction 1e-9)
    assert gate_shortfall(gate, {"valAccuracy": 1.0, "valExamples": 1.0}) == (
        "valAccuracy 1.0000 on 1 validation example: too few for serve.minAccuracy 0.9 "
        "(at least 10)")
    assert gate_shortfall(gate, {"valAccuracy": 1.0, "valExamples": 10.0}) is None
    ans = {"predictions": [{"class": 3, "label": "3", "probabilities": [0.1, 0.9]}]}
    assert describe_answer(ans) == "[bold]3[/] (p=0.900)"
    assert describe_answer({"weird": 1}) == '{"weird": 1}'


def test_checkpoint_uri_keeps_the_storage_scheme():
    from raykube.train import checkpoint_uri, run_dir_for

    assert checkpoint_uri("s3://bucket/p/ns", "bucket/p/ns/r/checkpoint_epoch_0001") == \
        "s3://bucket/p/ns/r/checkpoint_epoch_0001"
    assert checkpoint_uri("/mnt/x", "/mnt/x/r/c") == "/mnt/x/r/c"
    assert checkpoint_uri("s3://bkt", None) is None
    assert run_dir_for("s3://bkt/p/", "r") == "s3://bkt/p/r"


def test_demo_request_posts_json_with_the_standard_library():
    """`raykube run`'s serve demo runs in the Ray image (raykube[train]: no httpx)."""
    import http.server
    import json
    import threading

    import pytest

    from raykube.local import demo_request

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            seen["path"] = self.path
            seen["type"] = self.headers["Content-Type"]
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = 200 if seen["body"]["instances"][0] != "bad" else 422
            out = json.dumps({"predictions": [{"label": "3"}]}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/"
        assert demo_request(base, [0.0, 1.5]) == {"predictions": [{"label": "3"}]}
        assert seen == {"path": "/predict", "type": "application/json",
                        "body": {"instances": [[0.0, 1.5]]}}
        with pytest.raises(Exception, match="422"):
            demo_request(base, "bad")
    finally:
        server.shutdown()


def test_gpu_shortfall_names_what_asks_for_gpus():
    from raykube.local import gpu_shortfall
    from raykube.spec import parse_spec

    base = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    cpu = parse_spec({**base, "scaling": {"workers": 2}})
    assert gpu_shortfall(cpu, 0) is None
    gpu = parse_spec({**base, "scaling": {"workers": 2, "gpusPerWorker": 0.5},
                      "serve": {"enabled": True, "replicas": 2, "gpusPerReplica": 1}})
    assert gpu_shortfall(gpu, 2) is None  # training needs 1, serving 2
    msg = gpu_shortfall(gpu, 1)
    assert msg is not None and "needs 2 GPU(s)" in msg and "serve: 2 replica(s)" in msg
    assert "scaling:" not in msg and "ask for fewer" in msg
    msg = gpu_shortfall(gpu, 0)
    assert msg is not None and "scaling: 2 worker(s) x gpusPerWorker 0.5" in msg
    assert "to 0 to train on CPUs" in msg


def test_a_sigterm_before_ray_starts_is_a_ctrl_c(monkeypatch, capsys):
    """A ``kill`` while ``raykube run`` still checked its storage or prepared its data
    (before it set up "SIGTERM is Ctrl-C", just ahead of Ray) ended it with exit 143 and
    no word; now it is ``interrupted``, exit 130, for run, serve and predict alike."""
    import os
    import signal
    import time

    import raykube.commands.run as run_command

    def killed_while_preparing(args):  # noqa: ANN001, ARG001
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler turns it into a KeyboardInterrupt long before this
        return 0

    monkeypatch.setattr(run_command, "run", killed_while_preparing)
    before = signal.getsignal(signal.SIGTERM)
    try:
        started = time.monotonic()
        assert main(["run", "any.yaml"]) == 130
        assert time.monotonic() - started < 4
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.strip().endswith("interrupted")

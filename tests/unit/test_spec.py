"""The TrainingRun contract: valid examples load, invalid ones name the offending field."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raykube.spec import (
    InvalidTrainingRun,
    TrainingRunSpec,
    apply_overrides,
    load_file,
    load_one,
    load_yaml_documents,
    location_problem,
    parse_spec,
    parse_training_run,
    validate_files,
)

REPO = Path(__file__).resolve().parents[2]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))

BASE = {
    "apiVersion": "raykube.io/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "digits-mlp", "namespace": "ml"},
    "spec": {
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "data": {"dataset": "digits"},
        "train": {"epochs": 3, "batchSize": 32, "optimizer": {"name": "adam", "lr": 0.01}},
        "scaling": {"workers": 2},
        "tune": {
            "trials": 4,
            "metric": "valAccuracy",
            "searchSpace": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}},
        },
        "serve": {"enabled": True, "minAccuracy": 0.5},
    },
}


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split("/")
    cur = doc
    for p in parents:
        cur = cur.setdefault(p, {})
    if value is _DELETE:
        del cur[last]
    else:
        cur[last] = value
    return doc


_DELETE = object()

# (id, path to change ("/"-separated keys), new value, the field path the error must name)
INVALID = [
    ("api-version", "apiVersion", "raykube.io/v1", "apiVersion"),
    ("kind", "kind", "RayJob", "kind"),
    ("no-name", "metadata/name", _DELETE, "metadata.name"),
    ("metadata-null", "metadata", None, "metadata.name"),
    ("name-uppercase", "metadata/name", "Digits", "metadata.name"),
    ("name-too-long", "metadata/name", "a" * 41, "metadata.name"),
    # <storage>/datasets is the dataset cache; <x>-serve is run x's RayService
    ("name-datasets", "metadata/name", "datasets", "metadata.name"),
    ("name-serve-suffix", "metadata/name", "digits-serve", "metadata.name"),
    ("hidden-65-layers", "spec/model/options", {"hidden": [8] * 65}, "spec.model.options.hidden"),
    ("deadline-over-int32", "spec/activeDeadlineSeconds", 2**31, "spec.activeDeadlineSeconds"),
    ("ttl-over-int32", "spec/ttlSecondsAfterFinished", 2**31, "spec.ttlSecondsAfterFinished"),
    # 2 workers x 513 trials at once: 1,026 Train workers (1,024,000 once reached KubeRay)
    ("tune-workers-at-once", "spec/tune",
     {"trials": 600, "maxConcurrentTrials": 513,
      "searchSpace": {"train.optimizer.lr": {"choice": [0.1]}}},
     "spec.tune.maxConcurrentTrials"),
    ("no-model", "spec/model", _DELETE, "spec.model"),
    ("unknown-model", "spec/model/name", "vgg16", "spec.model.name"),
    ("option-wrong-model", "spec/model/options", {"channels": [8]}, "spec.model.options.channels"),
    ("hidden-zero", "spec/model/options", {"hidden": [0]}, "spec.model.options.hidden[0]"),
    ("dropout-one", "spec/model/options", {"dropout": 1.0}, "spec.model.options.dropout"),
    ("unknown-dataset", "spec/data/dataset", "mnist", "spec.data.dataset"),
    ("image-folder-no-uri", "spec/data/dataset", "image-folder", "spec.data.uri"),
    ("uri-wrong-dataset", "spec/data/uri", "/data/x", "spec.data.uri"),
    ("validation-fraction", "spec/data/validationFraction", 1.5, "spec.data.validationFraction"),
    ("shape-not-synthetic", "spec/data/shape", [3, 8, 8], "spec.data.shape"),
    ("epochs-zero", "spec/train/epochs", 0, "spec.train.epochs"),
    ("epochs-string", "spec/train/epochs", "3", "spec.train.epochs"),
    ("snake-case", "spec/train/batch_size", 32, "spec.train.batch_size"),
    ("batch-below-workers", "spec/train/batchSize", 1, "spec.train.batchSize"),
    ("lr-negative", "spec/train/optimizer/lr", -0.1, "spec.train.optimizer.lr"),
    ("optimizer-unknown", "spec/train/optimizer/name", "lion", "spec.train.optimizer.name"),
    ("workers-zero", "spec/scaling/workers", 0, "spec.scaling.workers"),
    ("gpus-fraction-above-one", "spec/scaling/gpusPerWorker", 1.5, "spec.scaling.gpusPerWorker"),
    ("memory-quantity", "spec/scaling/memoryPerWorker", "4 gigs", "spec.scaling.memoryPerWorker"),
    ("toleration-effect", "spec/scaling/tolerations", [{"key": "gpu", "effect": "Never"}],
     "spec.scaling.tolerations[0].effect"),
    ("toleration-exists-value", "spec/scaling/tolerations",
     [{"key": "gpu", "operator": "Exists", "value": "a100"}], "spec.scaling.tolerations[0].value"),
    ("toleration-seconds-noschedule", "spec/scaling/tolerations",
     [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}],
     "spec.scaling.tolerations[0].effect"),
    ("node-selector-key", "spec/scaling/nodeSelector", {"node pool": "gpu"},
     "spec.scaling.nodeSelector[node pool]"),
    ("head-toleration-exists-value", "spec/scaling/head",
     {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a100"}]},
     "spec.scaling.head.tolerations[0].value"),
    ("head-node-selector-value", "spec/scaling/head", {"nodeSelector": {"pool": "a b"}},
     "spec.scaling.head.nodeSelector[pool]"),
    ("memory-one-byte", "spec/scaling/memoryPerWorker", "1", "spec.scaling.memoryPerWorker"),
    ("head-memory-256Mi", "spec/scaling/head", {"memory": "256Mi"}, "spec.scaling.head.memory"),
    ("replica-memory-500M", "spec/serve", {"memoryPerReplica": "500M"},
     "spec.serve.memoryPerReplica"),
    ("image-space", "spec/image", "raykube/raykube: 0.1.0", "spec.image"),
    ("image-uppercase", "spec/image", "Raykube/Raykube:0.1.0", "spec.image"),
    # the reference grammar bounds the repository name (the kubelet: InvalidImageName)
    ("image-name-256", "spec/image", "registry.example.com/" + "x" * 235 + ":tag", "spec.image"),
    ("lr-nan", "spec/train/optimizer/lr", float("nan"), "spec.train.optimizer.lr"),
    ("min-accuracy-inf", "spec/serve/minAccuracy", float("-inf"), "spec.serve.minAccuracy"),
    ("unknown-top-field", "spec/replicas", 3, "spec.replicas"),
    ("tune-metric", "spec/tune/metric", "accuracy", "spec.tune.metric"),
    ("tune-mode", "spec/tune/mode", "maximize", "spec.tune.mode"),
    # the highest loss first: the worst trial would win and be served
    ("tune-mode-against-metric", "spec/tune", {"metric": "valLoss", "mode": "max",
     "searchSpace": {"train.optimizer.lr": {"choice": [0.1]}}}, "spec.tune.mode"),
    ("tune-mode-default-metric", "spec/tune/mode", "min", "spec.tune.mode"),
    # fifo runs every trial to the end: an ASHA setting beside it was dropped unsaid
    ("tune-fifo-grace", "spec/tune/scheduler", {"name": "fifo", "gracePeriod": 2},
     "spec.tune.scheduler.gracePeriod"),
    ("tune-fifo-reduction", "spec/tune/scheduler", {"name": "fifo", "reductionFactor": 3},
     "spec.tune.scheduler.reductionFactor"),
    ("tune-unknown-path", "spec/tune/searchSpace", {"train.learningRate": {"uniform": [0.1, 0.2]}},
     "spec.tune.searchSpace[train.learningRate]"),
    ("tune-empty-choice", "spec/tune/searchSpace", {"train.batchSize": {"choice": []}},
     "spec.tune.searchSpace[train.batchSize].choice"),
    ("tune-low-high", "spec/tune/searchSpace", {"train.optimizer.lr": {"uniform": [0.5, 0.1]}},
     "spec.tune.searchSpace[train.optimizer.lr].uniform"),
    ("tune-loguniform-zero", "spec/tune/searchSpace", {"train.optimizer.lr": {"loguniform": [0, 1]}},
     "spec.tune.searchSpace[train.optimizer.lr].loguniform"),
    ("tune-two-kinds", "spec/tune/searchSpace",
     {"train.optimizer.lr": {"uniform": [0.1, 0.2], "loguniform": [0.1, 0.2]}},
     "spec.tune.searchSpace[train.optimizer.lr]"),
    ("tune-bad-choice-value", "spec/tune/searchSpace", {"train.batchSize": {"choice": [16, "big"]}},
     "spec.tune.searchSpace[train.batchSize]"),
    ("tune-empty-space", "spec/tune/searchSpace", {}, "spec.tune.searchSpace"),
    ("tune-grace-period", "spec/tune/scheduler", {"gracePeriod": 10}, "spec.tune.scheduler.gracePeriod"),
    ("storage-both", "spec/checkpoint", {"storage": {"uri": "s3://bkt/p", "pvc": {}}},
     "spec.checkpoint.storage"),
    ("storage-scheme", "spec/checkpoint", {"storage": {"uri": "gs://b/p"}}, "spec.checkpoint.storage.uri"),
    ("secret-without-uri", "spec/checkpoint", {"storage": {"secretRef": {"name": "s3"}}},
     "spec.checkpoint.storage.secretRef"),
    ("score-metric", "spec/checkpoint", {"scoreMetric": "f1"}, "spec.checkpoint.scoreMetric"),
    ("keep-zero", "spec/checkpoint", {"keep": 0}, "spec.checkpoint.keep"),
    ("min-accuracy", "spec/serve/minAccuracy", 95, "spec.serve.minAccuracy"),
    ("serve-replicas", "spec/serve/replicas", 0, "spec.serve.replicas"),
    ("max-retries", "spec/failure", {"maxRetries": -1}, "spec.failure.maxRetries"),
    ("rerun-number", "spec/rerun", 2, "spec.rerun"),  # a token: quote it
    ("rerun-empty", "spec/rerun", "", "spec.rerun"),
    ("cnn-on-vectors", "spec/model/name", "cifar-cnn", None),  # filled below: synthetic [64]
    # splits that leave a worker no training example (it trained nothing and succeeded)
    ("digits-all-validation", "spec/data", {"dataset": "digits", "validationFraction": 0.9999},
     "spec.data.validationFraction"),
    ("digits-one-sample", "spec/data", {"dataset": "digits", "numSamples": 1}, "spec.data.numSamples"),
    ("synthetic-one-sample", "spec/data", {"dataset": "synthetic", "numSamples": 1},
     "spec.data.numSamples"),
    ("cifar-one-sample", "spec/data", {"dataset": "cifar10", "numSamples": 1}, "spec.data.numSamples"),
]


def _case(case):
    cid, path, value, field = case
    doc = _set(BASE, path, value)
    if cid == "cnn-on-vectors":
        doc["spec"]["model"] = {"name": "cifar-cnn"}
        doc["spec"]["data"] = {"dataset": "synthetic", "shape": [64]}
        field = "spec.model.name"
    return doc, field


def test_corpus_is_big_enough():
    assert len(INVALID) >= 25


def test_base_document_is_valid():
    run = parse_training_run(copy.deepcopy(BASE))
    assert run.name == "digits-mlp"
    assert run.namespace == "ml"
    assert run.spec.tune is not None and run.spec.tune.resolved_mode == "max"


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_names_the_field(case):
    doc, field = _case(case)
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    paths = [e.path for e in info.value.errors]
    assert field in paths, f"expected an error at {field}, got {info.value}"
    assert all(e.message for e in info.value.errors)


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.name for p in JOB_FILES])
def test_every_job_file_is_valid(path):
    runs = load_file(path)
    assert runs and all(r.kind == "TrainingRun" for r in runs)


def test_snake_case_gets_a_hint():
    doc = _set(BASE, "spec/train/batch_size", 32)
    with pytest.raises(InvalidTrainingRun, match="did you mean 'batchSize'"):
        parse_training_run(doc)


@pytest.mark.parametrize("path, hint", [
    ("spec/train/lr", "(it belongs at spec.train.optimizer.lr)"),
    ("spec/train/learning_rate", "(it belongs at spec.train.optimizer.lr)"),
    ("spec/train/optimizer/learningRate", "(did you mean 'lr'?)"),
    ("spec/train/workers", "(it belongs at spec.scaling.workers)"),
    ("spec/scaling/num_workers", "(did you mean 'workers'?)"),
    ("spec/train/min_accuracy", "(it belongs at spec.serve.minAccuracy)"),
    ("spec/train/weight_decay", "(it belongs at spec.train.optimizer.weightDecay)"),
    ("spec/train/claimName", "(it belongs at spec.checkpoint.storage.pvc.claimName)"),
])
def test_a_field_written_at_the_wrong_level_is_pointed_at_its_place(path, hint):
    """The commonest unknown field a new user writes is a real one one level off (``lr``
    under ``train``) or another library's name for it (``learning_rate``, Ray's
    ``num_workers``): the error names where it goes."""
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(_set(BASE, path, 1))
    (err,) = info.value.errors
    assert err.path == path.replace("/", ".") and err.message == f"unknown field {hint}"


@pytest.mark.parametrize("path", ["spec/train/foo", "spec/train/learning_ratio"])
def test_an_unknown_field_with_no_likely_meaning_gets_no_guess(path):
    """No hint is better than a wrong one: ``learning_rate`` was once told 'did you mean
    learningRate?', a field that exists nowhere."""
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(_set(BASE, path, 1))
    assert [e.message for e in info.value.errors] == ["unknown field"]


def test_all_errors_reported_at_once():
    doc = _set(_set(BASE, "spec/scaling/workers", 0), "spec/train/epochs", -1)
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    assert {"spec.scaling.workers", "spec.train.epochs"} <= {e.path for e in info.value.errors}


def test_yaml_exponent_floats_are_numbers():
    (doc,) = load_yaml_documents("lr: 1e-3\nbig: 2E+4\nname: 1e\n")
    assert doc == {"lr": 0.001, "big": 20000.0, "name": "1e"}


def test_a_number_or_boolean_where_a_string_belongs_says_to_quote_it():
    """YAML reads `rerun: 2` as a number and `image: yes` as a boolean; pydantic's own
    "Input should be a valid string" did not say why a value that looks right is wrong."""
    text = (yaml.safe_dump(_set(_set(BASE, "spec/rerun", "PLACEHOLDER"), "spec/image", "IMG"))
            .replace("PLACEHOLDER", "2").replace("IMG", "yes"))
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(load_yaml_documents(text)[0])
    got = {e.path: e.message for e in info.value.errors}
    assert got == {
        "spec.rerun": "must be a string, got 2, a number to YAML: quote it",
        "spec.image": "must be a string, got true, a boolean to YAML (so are y/n, yes/no, on/off): "
                      "quote it"}


def test_a_value_where_a_section_belongs_names_its_fields():
    """`storage: s3://bucket/runs`, `model: mlp`: pydantic said "Input should be a valid
    dictionary or instance of StorageSpec", a Python class name; now the section's
    fields, what it got, and the likely fix."""
    doc = _set(_set(_set(BASE, "spec/checkpoint", {"storage": "s3://bucket/runs"}),
                    "spec/model", "mlp"), "spec/scaling", 2)
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    got = {e.path: e.message for e in info.value.errors}
    assert got == {
        "spec.checkpoint.storage": "must be a mapping of its fields (pvc, uri, secretRef), "
                                   "got 's3://bucket/runs', a string: did you mean "
                                   "{uri: s3://bucket/runs}?",
        "spec.model": "must be a mapping of its fields (name, options), got 'mlp', a "
                      "string: did you mean {name: mlp}?",
        "spec.scaling": "must be a mapping of its fields (workers, cpusPerWorker, "
                        "gpusPerWorker, memoryPerWorker, nodeSelector, tolerations, ...), "
                        "got 2, a number"}


def test_defaults_are_sensible():
    run = parse_training_run(_set(BASE, "spec/tune", _DELETE))
    s = run.spec
    assert s.scaling.workers == 2 and s.scaling.gpus_per_worker == 0
    assert s.checkpoint.storage.pvc is None and s.checkpoint.storage.uri is None
    assert s.checkpoint.score_metric == "valAccuracy" and s.checkpoint.score_mode == "max"
    assert s.failure.max_retries >= 1


def test_apply_overrides_revalidates():
    spec = parse_training_run(copy.deepcopy(BASE)).spec
    out = apply_overrides(spec, {"train.optimizer.lr": 0.2, "model.options.hidden": [8, 8]})
    assert out.train.optimizer.lr == 0.2 and out.model.options.hidden == [8, 8]
    assert spec.train.optimizer.lr == 0.01  # original untouched
    with pytest.raises(Exception):  # noqa: B017 - pydantic's error type is an implementation detail
        apply_overrides(spec, {"train.batchSize": "x"})


def test_round_trip_through_dict():
    spec = parse_training_run(copy.deepcopy(BASE)).spec
    again = TrainingRunSpec.model_validate(spec.to_dict())
    assert again == spec


def test_a_fifo_search_survives_the_round_trip_the_operator_makes():
    """The operator hands the driver the spec with its defaults written out (the spec
    ConfigMap): a fifo search must read back valid, so ASHA's settings stay unset."""
    doc = _set(BASE, "spec/tune/scheduler", {"name": "fifo"})
    spec = parse_training_run(doc).spec
    assert "gracePeriod" not in spec.to_dict()["tune"]["scheduler"]
    assert TrainingRunSpec.model_validate(spec.to_dict()) == spec
    asha = parse_training_run(copy.deepcopy(BASE)).spec.tune.scheduler
    assert (asha.resolved_grace_period, asha.resolved_reduction_factor) == (1, 2.0)


def test_load_file_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("spec: [unclosed\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    results = validate_files([bad_yaml, empty, tmp_path / "missing.yaml"])
    assert all(results[str(p)] for p in (bad_yaml, empty, tmp_path / "missing.yaml"))
    assert "not valid YAML" in results[str(bad_yaml)][0].message


def test_multi_document_file(tmp_path):
    two = tmp_path / "two.yaml"
    second = _set(BASE, "metadata/name", "second")
    two.write_text(yaml.safe_dump(BASE) + "---\n" + yaml.safe_dump(second))
    assert [r.name for r in load_file(two)] == ["digits-mlp", "second"]
    with pytest.raises(InvalidTrainingRun, match="expected one"):
        load_one(two)


def test_a_file_holding_a_run_with_its_secret_is_read_as_kubectl_reads_it(tmp_path):
    """kubectl applies a run with the Secret its secretRef names from one file; the CLI
    reads the run and names what it passed over. A mistyped kind or group is still a
    TrainingRun, refused naming the field."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "minio"},
              "stringData": {"AWS_ACCESS_KEY_ID": "a"}}
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(secret) + "---\n" + yaml.safe_dump(BASE))
    skipped: list[str] = []
    assert [r.name for r in load_file(mixed, skipped)] == ["digits-mlp"]
    assert skipped == ["Secret/minio"]
    assert load_one(mixed).name == "digits-mlp"
    # `kubectl get tr -o yaml` of several runs is a v1 List
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                      "items": [BASE, _set(BASE, "metadata/name", "b")]}))
    assert [r.name for r in load_file(listed)] == ["digits-mlp", "b"]
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump(secret))
    with pytest.raises(InvalidTrainingRun, match=r"holds no TrainingRun \(only Secret/minio\)"):
        load_file(only)
    for path, value in (("kind", "TraningRun"), ("apiVersion", "raykube.io/v1")):
        typo = tmp_path / f"{path}.yaml"
        typo.write_text(yaml.safe_dump(secret) + "---\n" + yaml.safe_dump(_set(BASE, path, value)))
        with pytest.raises(InvalidTrainingRun) as exc:
            load_file(typo)
        assert [e.path for e in exc.value.errors] == [path]
    out = subprocess.run([sys.executable, "-m", "raykube", "validate", str(mixed)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "valid (not TrainingRuns, not checked: Secret/minio)" in out.stdout


@pytest.mark.parametrize("path, value, message", [
    ("spec/train/batchSize", -1, "must be a whole number between 1 and 1048576, got -1"),
    ("spec/train/optimizer/lr", -1, "must be a number more than 0.0 and at most 10.0, got -1"),
    ("spec/activeDeadlineSeconds", 2**31, "must be a whole number between 1 and 2147483647, "
     "got 2147483648"),
    # 2**63 validated, then failed every worker: "Overflow when unpacking long long"
    ("spec/train/seed", 2**63, "must be a whole number between 0 and 4294967295, "
     "got 9223372036854775808"),
])
def test_a_value_out_of_range_is_named_with_its_range(path, value, message):
    """Not pydantic's 'Input should be greater than 0': the range and the value given."""
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(_set(BASE, path, value))
    assert [(e.path, e.message) for e in exc.value.errors] == [
        (path.replace("/", "."), message)]


def test_yaml_reads_as_kubectl_reads_it(tmp_path):
    """The cluster's reading of the same file (go-yaml v2 under kubectl, the API server's
    pruning of null fields): `enabled: y` is true, a date is the string written, `serve:
    null` is the default. Each was the other way round here: refused, or valid here and
    refused by kubectl (`annotations: {x: y}`)."""
    text = yaml.safe_dump(BASE).replace("enabled: true", "enabled: n")
    text = text.replace("spec:\n", "spec:\n  rerun: 2026-12-05\n  checkpoint: null\n", 1)
    run = parse_training_run(load_yaml_documents(text)[0])
    assert run.spec.serve.enabled is False and run.spec.rerun == "2026-12-05"
    assert run.spec.checkpoint.keep == parse_training_run(BASE).spec.checkpoint.keep
    with pytest.raises(InvalidTrainingRun) as exc:  # kubectl: "cannot unmarshal bool"
        parse_training_run(load_yaml_documents(
            yaml.safe_dump(BASE).replace("name: digits-mlp", "name: digits-mlp\n  "
                                         "annotations: {x: y}"))[0])
    assert [e.path for e in exc.value.errors] == ["metadata.annotations.x"]
    with pytest.raises(InvalidTrainingRun) as exc:  # required: still an error, said as empty
        parse_training_run(_set(BASE, "spec/model", None))
    assert [(e.path, e.message) for e in exc.value.errors] == [
        ("spec.model", "is empty (null): give it a value")]
    # `kubectl apply -f DIR`: the directory's manifests; the CLI did "Is a directory"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "b.json").write_text(json.dumps(_set(BASE, "metadata/name", "b")))
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert validate_files([tmp_path]) == {str(tmp_path / "a.yaml"): [], str(tmp_path / "b.json"): []}


def test_validate_notes_what_only_a_cluster_refuses(tmp_path):
    """A relative data.uri is valid for `raykube run` (relative to the file) and refused by
    the operator and `raykube render`: validate said only 'valid'."""
    f = tmp_path / "rel.yaml"
    f.write_text(yaml.safe_dump(_set(BASE, "spec/data", {"dataset": "image-folder",
                                                          "uri": "./imgs"})))
    out = subprocess.run([sys.executable, "-m", "raykube", "validate", str(f)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == f"{f}: valid\n", out
    assert out.stderr.startswith(f"{f}: note: spec.data.uri: './imgs' is a relative path"), out
    assert out.stderr.rstrip().endswith("refused on a cluster (the operator, raykube render)")


def test_cli_validate_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_set(BASE, "spec/scaling/workers", 0)))
    cmd = [sys.executable, "-m", "raykube", "validate"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run([*cmd, str(good), str(bad)], capture_output=True, text=True)
    assert ko.returncode == 1
    assert f"{bad}: spec.scaling.workers:" in ko.stderr
    assert "1 of 2 file(s) invalid" in ko.stderr


@pytest.mark.parametrize("image", [
    "raykube/raykube:0.1.0-cpu", "docker.io/rayproject/ray:2.60.0-py311",
    "localhost:5000/raykube", "registry.example.com:443/team/raykube@sha256:" + "a" * 64,
    "[::1]:5000/raykube:dev", "my_registry.local/ray__x/train-job:v1.2_rc.3",
    "registry.example.com:5000/" + "x" * 229 + ":" + "t" * 128,  # a 255-character name
])
def test_image_references_kubernetes_pulls_are_valid(image):
    parse_training_run(_set(BASE, "spec/image", image))


def test_non_finite_numbers_are_named_not_compared():
    """YAML's .nan passes every bound (each comparison is false): it is refused by name."""
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(_set(BASE, "spec/train/optimizer/lr", float("nan")))
    assert "finite" in str(info.value) and "less than" not in str(info.value)


@pytest.mark.parametrize("qty, ok", [("512Mi", True), ("0.5Gi", True), ("537M", True),
                                     ("511Mi", False), ("536M", False), ("600000k", True),
                                     # past int64 bytes: KubeRay wrote 9223372036854775807
                                     ("7Ei", True), ("8Ei", False),
                                     ("99999999999999999999Ei", False),
                                     # apimachinery's grammar: all valid quantities
                                     ("1e9", True), ("+2Gi", True), (".5Gi", True),
                                     ("2E9", True), ("4e+9", True), ("1e8", False),
                                     ("-2Gi", False), ("1.Gi", False), ("2e", False),
                                     ("2 Gi", False)])
def test_ray_pod_memory_floor_is_exact(qty, ok):
    errors = []
    try:
        # with serving off, no model floor comes on top of this one
        off = _set(BASE, "spec/serve/enabled", False)
        parse_training_run(_set(off, "spec/serve/memoryPerReplica", qty))
    except InvalidTrainingRun as exc:
        errors = [e.path for e in exc.errors]
    assert (errors == []) == ok, errors


@pytest.mark.parametrize("path,value,words", [
    # os.makedirs("s3://b/cache") made the local folder ./s3:/b/cache in the pod
    ("spec/data/cacheDir", "s3://bkt/cache", "a folder, not a s3:// URI"),
    ("spec/data/cacheDir", "gs://bkt/cache", "a folder, not a gs:// URI"),
    # Ray refuses a GPU share under 0.0001 when the actor starts
    ("spec/scaling/gpusPerWorker", 0.00005, "must be 0 or at least 0.0001"),
    ("spec/serve/gpusPerReplica", 1e-9, "must be 0 or at least 0.0001"),
    ("spec/data/numSamples", 10**19, "between 1 and 9007199254740991"),
    ("spec/serve/maxRequestBytes", 2**63, "between 1024 and 9007199254740991"),
])
def test_what_only_a_pod_would_refuse_is_refused(path, value, words):
    """From a differential probe: validate, the API server and the operator took each of
    these (or validate took what the API server refused)."""
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(_set(BASE, path, value))
    field = "spec." + ".".join(path.split("/")[1:])
    assert [e.path for e in info.value.errors] == [field], info.value.errors
    assert words in str(info.value)


@pytest.mark.parametrize("location", ["/data/images", "images", "./a:b/c", "~/x", "s3://bkt",
                                      "s3://bkt/", "s3://my.bucket-1/a/b", "s3://bkt/x"])
def test_paths_and_s3_uris_are_locations(location):
    assert location_problem(location) is None


@pytest.mark.parametrize("location,words", [
    ("gs://bkt/images", "gs:// storage is not supported"),
    ("https://example.com/images", "https:// storage is not supported"),
    ("S3://bkt/images", "lower case"), ("s3:/bkt/images", "two slashes"),
    ("s3://", "names no bucket"), ("s3:///images", "names no bucket"),
    ("s3://Bkt/images", "not an S3 bucket name"), ("s3://bkt_1/x", "not an S3 bucket name"),
    ("s3://bkt/x#y", "no query or fragment"), ("file:///data/images", "(/data/images)"),
    ("s3://ab/x", "3 to 63"), ("s3://bkt//x", "empty part"),
    ("s3://bkt/../../x", "'..' part"), ("s3://bkt/runs/./x", "'..' part"),
    # validate said valid, then the AWS SDK refused them in its own words
    ("s3://192.168.1.1/x", "formatted as an IP address"),
    ("s3://xn--bucket/x", "must not start with 'xn--'"),
    ("s3://bkt-s3alias/x", "must not end with '-s3alias'"),
    ("s3://bkt/" + "p" * 1100, "its prefix is 1100 bytes; at most 800"),
])
@pytest.mark.parametrize("field", ["spec.data.uri", "spec.checkpoint.storage.uri"])
def test_a_location_raykube_cannot_read_is_refused_naming_the_field(location, words, field):
    spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    if field == "spec.data.uri":
        spec["data"] = {"dataset": "image-folder", "uri": location}
    else:
        spec["checkpoint"] = {"storage": {"uri": location}}
    with pytest.raises(InvalidTrainingRun) as info:
        parse_spec(spec)
    [error] = [e for e in info.value.errors if e.path == field]
    # the CRD's pattern (^s3://[^/]+) answers some storage URIs first, in our words (not
    # pydantic's "string should match pattern '^s3://[^/]+'")
    assert words in error.message or error.message.startswith(
        "must be an s3:// URI (s3://<bucket>/<prefix>), got "), error
    assert "pattern" not in error.message
    assert words in location_problem(location)


@pytest.mark.parametrize("where,value,what", [
    ("metadata.name", "Bad_Name", "label"), ("metadata.namespace", "Team.A", "namespace"),
    ("spec.checkpoint.storage.pvc.claimName", "My_Claim", "subdomain"),
    ("spec.checkpoint.storage.secretRef.name", "Bad Name", "subdomain")])
def test_a_name_kubernetes_would_refuse_says_what_it_must_be(where, value, what):
    """A claim's or Secret's name is a DNS subdomain (dots allowed), as Kubernetes has
    it: a Secret name it refuses left KubeRay unable to create any pod, and the run
    waiting for its Ray cluster without end."""
    doc = {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "ok"},
           "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}}
    node = doc
    *parents, leaf = where.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    if "secretRef" in where:
        doc["spec"]["checkpoint"]["storage"]["uri"] = "s3://bucket/runs"
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    [error] = info.value.errors
    assert error.path == where
    if what == "label":
        assert error.message == ("must be a DNS label: lower-case letters, digits and '-', "
                                 "starting with a letter and ending with a letter or digit "
                                 f"(got {value!r})")
    elif what == "namespace":  # RFC 1123: a digit may come first (1team)
        assert error.message == ("must be a DNS label: lower-case letters, digits and '-', "
                                 "starting and ending with a letter or digit "
                                 f"(got {value!r})")
    else:
        assert error.message == ("must be a DNS subdomain: lower-case letters, digits, '-' "
                                 "and '.', starting and ending with a letter or digit "
                                 f"(got {value!r})")
    if where.endswith("claimName"):  # a valid claim name with dots is one
        node[leaf] = "claim.with.dots"
        assert parse_training_run(doc).spec.checkpoint.storage.pvc.claim_name == "claim.with.dots"


@pytest.mark.parametrize("path,words", [
    ("/etc/raykube", "reserved (the run's spec is mounted there)"),
    ("/etc/raykube/data", "reserved"), ("/proc/x", "kernel's"), ("/", "other than /"),
    ("/mnt/raykube/", "trailing '/'"), ("/mnt//x", "empty parts"),
    ("/mnt/../tmp", "'..'"), ("/mnt/a:b", "':'"), ("/tmp", "hide the image's /tmp"),
    ("/usr", "hide"), ("/mnt/raykube", None), ("/var/lib/raykube", None), ("/data", None),
    # the image's home holds its Python (a new user's mountPath: valid, and no pod started)
    ("/home/ray", "hide the image's Python (/home/ray/anaconda3)"),
    ("/home/ray/anaconda3", "hide the image's Python"),
    ("/home/ray/anaconda3/lib", "hide the image's Python"), ("/home/ray/runs", None)])
def test_a_storage_mount_path_the_pods_cannot_use_is_refused(path, words):
    """The spec ConfigMap's own mount (the API server refused the RayJob for the
    duplicate, retried every 30 s, with the run's status empty) and paths that would
    hide what the image and Ray need."""
    doc = {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "ok"},
           "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                    "checkpoint": {"storage": {"pvc": {"mountPath": path}}}}}
    if words is None:
        assert parse_training_run(doc).spec.checkpoint.storage.pvc.mount_path == path
        return
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    [error] = info.value.errors
    assert error.path == "spec.checkpoint.storage.pvc.mountPath" and words in error.message, error


def test_pod_cpus_below_a_tenth_are_refused():
    """0.0001 rendered as ``cpu: '0'`` (Kubernetes' millicores), 0.001 as a 1m limit no
    Ray pod runs in."""
    for where in ("scaling.cpusPerWorker", "scaling.head.cpus", "serve.cpusPerReplica"):
        section, *rest = where.split(".")
        for value, ok in ((0.0001, False), (0.05, False), (0.1, True)):
            spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
            node = spec.setdefault(section, {})
            for key in rest[:-1]:
                node = node.setdefault(key, {})
            node[rest[-1]] = value
            if ok:
                parse_spec(spec)
                continue
            with pytest.raises(InvalidTrainingRun) as info:
                parse_spec(spec)
            assert [e.path for e in info.value.errors] == [f"spec.{where}"], info.value.errors


@pytest.mark.parametrize("data,workers,want", [
    ({"dataset": "digits", "validationFraction": 0.9989}, 2, None),  # 1797 - 1795 = 2 left
    ({"dataset": "digits", "validationFraction": 0.9989}, 3,
     "leaves 2 training examples for 3 workers; each worker needs at least one (lower "
     "validationFraction)"),
    ({"dataset": "synthetic", "numSamples": 3}, 2, None),  # 1 validates, 2 train
    ({"dataset": "synthetic", "numSamples": 2}, 2,
     "leaves 1 training example for 2 workers; each worker needs at least one (raise numSamples)"),
    ({"dataset": "fashion-mnist", "numSamples": 4}, 4, None),
])
def test_a_split_must_leave_every_worker_a_training_example(data, workers, want):
    doc = _set(_set(BASE, "spec/data", data), "spec/scaling", {"workers": workers})
    doc["spec"]["train"]["batchSize"] = 32
    doc["spec"].pop("tune")
    doc["spec"].pop("serve")  # no accuracy gate: one validation example is enough
    if want is None:
        parse_training_run(doc)
        return
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    assert [e.message for e in info.value.errors] == [want]


@pytest.mark.parametrize("fraction,serve,want", [
    (1e-9, {"enabled": True, "minAccuracy": 0.9},
     "leaves 1 validation example, too few for spec.serve.minAccuracy 0.9 to judge a "
     "checkpoint (at least 10: raise validationFraction, or set serve.minAccuracy: 0)"),
    (0.005, {"enabled": True, "minAccuracy": 0.9},  # round(8.985) = 9
     "leaves 9 validation examples, too few for spec.serve.minAccuracy 0.9 to judge a "
     "checkpoint (at least 10: raise validationFraction, or set serve.minAccuracy: 0)"),
    (0.0056, {"enabled": True, "minAccuracy": 0.9}, None),  # round(10.06) = 10
    (1e-9, {"enabled": True, "minAccuracy": 0.0}, None),  # serving without a gate
    (1e-9, {"enabled": False, "minAccuracy": 0.9}, None),  # a gate nothing goes through
])
def test_an_accuracy_gate_needs_ten_validation_examples(fraction, serve, want):
    """digits with ``validationFraction: 1e-9`` kept 1 validation example, and its 1.0000
    passed ``serve.minAccuracy: 0.9`` (a new user's probe)."""
    doc = _set(_set(BASE, "spec/data", {"dataset": "digits", "validationFraction": fraction}),
               "spec/serve", serve)
    doc["spec"].pop("tune")
    if want is None:
        parse_training_run(doc)
        return
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("spec.data.validationFraction", want)]


@pytest.mark.parametrize("field, section", [("memoryPerWorker", "scaling"),
                                            ("memoryPerReplica", "serve")])
def test_the_memory_floor_a_message_names_is_accepted(field, section):
    """``needs at least 842 MiB per worker``, and 842Mi was refused too (the floor, 842.x
    MiB, was rounded to the nearest): the figure a message gives is now one that passes."""
    import re

    spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"},
            "serve": {"enabled": True}}
    spec.setdefault(section, {})[field] = "600Mi"
    with pytest.raises(InvalidTrainingRun) as info:
        parse_spec(spec)
    [error] = [e for e in info.value.errors if e.path == f"spec.{section}.{field}"]
    need = re.search(r"at least (\d+) MiB", error.message)
    assert need, error.message
    spec[section][field] = f"{need[1]}Mi"
    parse_spec(spec)  # the floor as shown is enough
    spec[section][field] = f"{int(need[1]) - 1}Mi"
    with pytest.raises(InvalidTrainingRun):
        parse_spec(spec)


def test_labels_and_annotation_keys_the_api_server_refuses_are_refused():
    """``labels: {"a b": c}`` was "valid" for ``raykube validate`` and refused by
    ``kubectl apply``; kubectl's own annotation is a valid key."""
    doc = {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "lab", "labels": {"a b": "c", "team": "x y", "ok": ""},
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                        "{}", "bad key": "v"}},
           "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}}
    with pytest.raises(InvalidTrainingRun) as info:
        parse_training_run(doc)
    assert [(e.path, e.message.split(":")[0]) for e in info.value.errors] == [
        ("metadata.labels[a b]", "key 'a b'"), ("metadata.labels[team]", "value 'x y'"),
        ("metadata.annotations[bad key]", "key 'bad key'")]
    doc["metadata"]["labels"] = {"app.kubernetes.io/part-of": "ml", "ok": ""}
    doc["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert parse_training_run(doc).metadata.labels == {"app.kubernetes.io/part-of": "ml", "ok": ""}


@pytest.mark.parametrize("value,meant", [
    ("2GB", "2Gi or 2G?"), ("512mb", "512Mi or 512M?"), ("2 Gi", "2Gi?"), ("2gi", "2Gi?"),
    ("100MiB", "100Mi?"), ("lots", None)])
def test_a_memory_that_is_no_quantity_says_what_a_quantity_is(value, meant):
    """``memoryPerWorker: 2GB`` was refused with the pattern's regular expression; it says
    what a quantity is, what was given, and for the usual slips what was meant."""
    for where in ("scaling.memoryPerWorker", "scaling.head.memory", "serve.memoryPerReplica"):
        section, *rest = where.split(".")
        spec = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
        node = spec.setdefault(section, {})
        for key in rest[:-1]:
            node = node.setdefault(key, {})
        node[rest[-1]] = value
        with pytest.raises(InvalidTrainingRun) as info:
            parse_spec(spec)
        (error,) = info.value.errors
        assert error.path == f"spec.{where}"
        assert error.message.startswith("must be a Kubernetes quantity: a number and a unit, "
                                        "Ki, Mi, Gi, Ti (powers of 1024)"), error.message
        assert error.message.endswith(f"(got {value!r}: {meant})" if meant else
                                      f"(got {value!r})"), error.message
        assert "^[0-9]" not in error.message

"""Memory floors from the spec (``raykube.footprint``): each figure is checked against
what torch really builds and allocates, and a model or a worker count that cannot fit is
refused naming the field, before anything starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from raykube import footprint as fpm
from raykube.local import available_memory, memory_shortfall, serving_shortfall
from raykube.models import build_model
from raykube.spec import InvalidTrainingRun, ModelSpec, OptimizerSpec, parse_training_run


def model(name: str, **options) -> ModelSpec:
    return ModelSpec.model_validate({"name": name, "options": options})


CASES = [
    ("mlp", {}, (1, 8, 8), 10),
    ("mlp", {"hidden": [7, 3, 5]}, (64,), 2),
    ("mlp", {"hidden": [1000], "dropout": 0.5}, (3, 32, 32), 100),
    ("cifar-cnn", {}, (3, 32, 32), 10),
    ("cifar-cnn", {}, (1, 8, 8), 10),
    ("cifar-cnn", {}, (1, 28, 28), 10),
    ("cifar-cnn", {"channels": [4, 8, 16], "hidden": [50]}, (3, 64, 64), 7),
    ("cifar-cnn", {"channels": [3, 5, 7]}, (1, 9, 13), 2),
    ("cifar-cnn", {"channels": [32]}, (3, 17, 16), 5),
    ("resnet18", {}, (3, 32, 32), 10),
    ("resnet18", {}, (1, 28, 28), 2),
]


@pytest.mark.parametrize("name,options,shape,classes", CASES)
def test_parameter_count_is_what_torch_builds(name, options, shape, classes):
    m = build_model(model(name, **options), shape, classes)
    assert fpm.parameter_count(model(name, **options), shape, classes) == sum(
        p.numel() for p in m.parameters())


def test_a_feature_map_that_vanishes_has_no_count():
    with pytest.raises(RuntimeError):  # the model itself refuses it
        build_model(model("cifar-cnn", channels=[4, 4, 4]), (3, 16, 16), 10)
    assert fpm.parameter_count(model("cifar-cnn", channels=[4, 4, 4]), (3, 16, 16), 10) is None


@pytest.mark.parametrize("opt,expected", [({"name": "adam"}, 2), ({"name": "adamw"}, 2),
                                          ({"name": "sgd", "momentum": 0.9}, 1),
                                          ({"name": "sgd", "momentum": 0.0}, 0)])
def test_optimizer_buffers_are_what_torch_keeps_per_parameter(opt, expected):
    from raykube.train import _make_optimizer

    spec = parse_training_run({"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
                               "metadata": {"name": "x"},
                               "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"},
                                        "train": {"optimizer": opt}}}).spec
    w = torch.nn.Parameter(torch.zeros(3, 5))
    optimizer = _make_optimizer(spec, [w])
    w.grad = torch.ones_like(w)
    optimizer.step()
    full = [t for t in optimizer.state[w].values()
            if isinstance(t, torch.Tensor) and t.shape == w.shape]
    assert len(full) == fpm.optimizer_buffers(OptimizerSpec.model_validate(opt)) == expected


def test_defaults_agree_with_the_data_module():
    from raykube import data

    assert fpm.DEFAULT_IMAGE_SIZE == data.DEFAULT_IMAGE_SIZE


def test_the_torch_floor_is_below_what_importing_torch_takes():
    rss = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import torch
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                print(int(line.split()[1]) * 1024)
        """)], capture_output=True, text=True, check=True, timeout=120).stdout
    assert int(rss) > fpm.TORCH_PROCESS_BYTES


def doc(**spec) -> dict:
    base = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}
    return {"apiVersion": "raykube.io/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "big"}, "spec": {**base, **spec}}


def test_a_model_too_large_for_its_workers_is_refused_naming_the_field():
    big = {"name": "mlp", "options": {"hidden": [5_000_000]}}  # 375M parameters
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(model=big, train={"optimizer": {"name": "adam"}}))
    (err,) = exc.value.errors
    assert err.path == "spec.scaling.memoryPerWorker"
    assert "4Gi cannot hold the model" in err.message
    assert "375,000,010 parameters" in err.message and "adam's 2 moment buffers" in err.message
    # given the memory, the same model is valid
    parse_training_run(doc(model=big, train={"optimizer": {"name": "adam"}},
                           scaling={"memoryPerWorker": "8Gi"}))


def test_serving_needs_only_the_weights():
    big = {"name": "mlp", "options": {"hidden": [2_000_000]}}  # 600 MB of float32 weights
    ok = doc(model=big, scaling={"memoryPerWorker": "8Gi"})
    parse_training_run(ok)
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run({**ok, "spec": {**ok["spec"], "serve": {
            "enabled": True, "memoryPerReplica": "1Gi"}}})
    assert [e.path for e in exc.value.errors] == ["spec.serve.memoryPerReplica"]
    parse_training_run({**ok, "spec": {**ok["spec"], "serve": {
        "enabled": True, "memoryPerReplica": "1536Mi"}}})


def test_a_serving_pod_holds_rays_processes_too():
    """Measured on a real node with the quickstart's MLP: a 768Mi serving pod went over
    Ray's memory-monitor threshold and failed requests; 1Gi pods served every one."""
    ok = doc(serve={"enabled": True, "memoryPerReplica": "1Gi"})
    parse_training_run(ok)
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(serve={"enabled": True, "memoryPerReplica": "768Mi"}))
    err, = exc.value.errors
    assert err.path == "spec.serve.memoryPerReplica" and "Ray's processes" in err.message


def test_a_training_pod_holds_rays_processes_too():
    """Measured on a real node with the quickstart's MLP: Train workers in 512Mi and in
    768Mi pods were killed by Ray's memory monitor on every attempt and the run failed;
    1Gi pods trained to the end. Both sizes passed the floor of the worker alone."""
    quickstart = {"name": "mlp", "options": {"hidden": [128, 64]}}
    parse_training_run(doc(model=quickstart, scaling={"memoryPerWorker": "1Gi"}))
    for small in ("512Mi", "768Mi"):
        with pytest.raises(InvalidTrainingRun) as exc:
            parse_training_run(doc(model=quickstart, scaling={"memoryPerWorker": small}))
        err, = exc.value.errors
        assert err.path == "spec.scaling.memoryPerWorker", err
        assert "Ray's processes in the pod" in err.message and "843 MiB" in err.message


@pytest.mark.parametrize("field, section", [("memoryPerWorker", "scaling"),
                                            ("memoryPerReplica", "serve")])
def test_a_pod_below_both_floors_is_told_the_models_only(field, section):
    """10Mi is under Ray's own 512Mi floor and under the model's: the field got both
    minimums, 'at least 512Mi' then 'at least 842 MiB', which read as a contradiction.
    It is told the model's (the larger, Ray's share included)."""
    quickstart = {"name": "mlp", "options": {"hidden": [128, 64]}}
    with pytest.raises(InvalidTrainingRun) as exc:
        extra = {"enabled": True} if section == "serve" else {}
        parse_training_run(doc(model=quickstart, **{section: {field: "10Mi", **extra}}))
    err, = exc.value.errors
    assert err.path == f"spec.{section}.{field}" and "cannot hold the model" in err.message
    assert "512Mi" not in err.message


def test_the_head_holds_rays_processes_the_driver_and_trains_controller():
    """Measured on a real node: a 1Gi head had Ray Train's controller and the job
    supervisor killed by Ray's memory monitor on each of the RayJob's 3 attempts; 2Gi
    heads (1.1-1.2 GiB in use) trained to the end, through a worker pod's loss too."""
    from raykube.render import RenderConfig, render_rayjob

    run = parse_training_run(doc())  # the default, 2Gi
    head = render_rayjob(run, RenderConfig())["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    parse_training_run(doc(scaling={"head": {"memory": "1158Mi"}}))
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(scaling={"head": {"memory": "1Gi"}}))
    err, = exc.value.errors
    assert err.path == "spec.scaling.head.memory"
    assert err.message.startswith("1Gi is too small for the Ray head: it needs at least 1158 MiB")


TUNE = {"trials": 4, "searchSpace": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}}}


@pytest.mark.parametrize("concurrent,floor_mib,default", [(1, 1727, "2Gi"), (2, 2190, "2560Mi"),
                                                          (4, 3116, "3584Mi")])
def test_a_searchs_head_holds_each_concurrent_trials_actors(concurrent, floor_mib, default):
    """Measured on a real node with the trials' actors pinned to the head: 1,672, 2,142
    and 3,048 MiB at 1, 2 and 4 concurrent trials. An unset head.memory is rendered
    with room for them (within the memory monitor's 95 % of each figure); one set too
    small is refused naming the field; the serving cluster's head keeps the default."""
    from raykube.render import RenderConfig, render_rayjob, render_rayservice

    tune = {**TUNE, "maxConcurrentTrials": concurrent}
    run = parse_training_run(doc(tune=tune, serve={"enabled": True}))
    assert run.spec.scaling.head.memory is None  # resolved in the render, not stored
    assert -(-fpm.head_pod_bytes(run.spec) // fpm.MiB) == floor_mib
    measured = {1: 1672, 2: 2142, 4: 3048}[concurrent]
    assert fpm.head_bytes(run.spec) <= measured * fpm.MiB  # a floor
    head = render_rayjob(run, RenderConfig())["spec"]["rayClusterSpec"]["headGroupSpec"]
    limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == default
    from raykube.k8s_rules import quantity_bytes

    assert measured * fpm.MiB < fpm.MEMORY_MONITOR_FRACTION * quantity_bytes(default)
    served = render_rayservice(run, RenderConfig(), "/ckpt")["spec"]["rayClusterConfig"]
    assert served["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["memory"] == "2Gi"
    # set explicitly: the floor is exact
    parse_training_run(doc(tune=tune, scaling={"head": {"memory": f"{floor_mib}Mi"}}))
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(tune=tune, scaling={"head": {"memory": f"{floor_mib - 1}Mi"}}))
    err, = exc.value.errors
    assert err.path == "spec.scaling.head.memory"
    assert err.message.startswith(f"{floor_mib - 1}Mi is too small for the Ray head: it needs "
                                  f"at least {floor_mib} MiB")
    assert f"each of the {concurrent} concurrent trial(s) (spec.tune.maxConcurrentTrials)" \
        in err.message and err.message.endswith("leave it unset for a default that fits")


@pytest.mark.parametrize("field,section,units", [
    ("memoryPerWorker", "scaling", {"workers": 2, "gpusPerWorker": 0.5}),
    ("memoryPerReplica", "serve", {"enabled": True, "replicas": 2, "gpusPerReplica": 0.5}),
])
def test_units_sharing_a_gpu_pod_share_its_ray_processes(field, section, units):
    """Two units per 1-GPU pod: the pod is twice the per-unit memory and holds one set of
    Ray's processes, so each unit's floor carries half of it."""
    fp = fpm.footprint(parse_training_run(doc()).spec)
    unit = fp.training_bytes if section == "scaling" else fp.serving_bytes
    alone, shared = fpm.pod_share(unit, 1), fpm.pod_share(unit, 2)
    assert shared < alone
    between = f"{(shared + alone) // 2 // 1024}Ki"
    parse_training_run(doc(**{section: {**units, field: between}}))
    one_per_pod = {k: (0 if k.startswith("gpus") else v) for k, v in units.items()}
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(**{section: {**one_per_pod, field: between}}))
    err, = exc.value.errors
    assert err.path == f"spec.{section}.{field}"


def test_a_tune_choice_too_large_is_refused_at_its_path():
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(tune={"trials": 2, "searchSpace": {
            "model.options.hidden": {"choice": [[64], [50_000_000]]}}}))
    (err,) = exc.value.errors
    assert err.path == "spec.tune.searchSpace[model.options.hidden]"
    assert "memoryPerWorker" in err.message


def test_the_shipped_jobs_fit():
    from pathlib import Path

    from raykube.spec import load_one

    for path in sorted(Path(__file__).parents[2].joinpath("jobs").glob("*.yaml")):
        load_one(str(path))


def test_available_memory_reads_the_kernel(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:   2048 kB\nSwapFree: 1024 kB\n")
    assert available_memory(str(meminfo)) == 3 * 1024 * 1024
    meminfo.write_text("MemTotal: 100 kB\n")
    assert available_memory(str(meminfo)) is None
    assert available_memory(str(tmp_path / "absent")) is None
    assert 0 < available_memory() < 1 << 50  # this machine's


def test_more_workers_than_memory_is_one_line_naming_the_figures():
    run = parse_training_run(doc(train={"batchSize": 64}, scaling={"workers": 50}))
    each = fpm.footprint(run.spec).training_bytes
    assert memory_shortfall(run, 50 * each) is None
    why = memory_shortfall(run, 50 * each - 1)
    assert why is not None and "\n" not in why
    assert why.startswith("50 worker(s) need at least") and "use fewer workers" in why
    assert "not even one" in memory_shortfall(run, each - 1)
    assert memory_shortfall(run, None) is None  # not Linux: no check


def test_more_replicas_than_memory_is_one_line_naming_the_figures():
    run = parse_training_run(doc())
    spec = run.spec.to_dict()
    each = fpm.footprint(run.spec).serving_bytes
    assert serving_shortfall(spec, 50, 50 * each) is None
    why = serving_shortfall(spec, 50, 50 * each - 1)
    assert why is not None and "\n" not in why
    assert why.startswith("50 replica(s) need at least") and "use fewer --replicas" in why
    assert "not even one" in serving_shortfall(spec, 1, each - 1)
    # a checkpoint whose spec no longer parses: torch alone is the floor
    assert serving_shortfall({"model": "?"}, 2, 2 * fpm.TORCH_PROCESS_BYTES - 1)
    assert serving_shortfall(spec, 50, None) is None  # not Linux: no check


def test_run_refuses_more_workers_than_this_machine_holds_before_anything_starts(
        tmp_path, capsys):
    """The real `raykube run` on this machine's real /proc/meminfo: a model of ~2.2 GB per
    worker (150M parameters, sgd with momentum) and more workers than the memory
    available holds. Refused in one line; no storage, no lock, no Ray."""
    from raykube.cli import main

    big = doc(model={"name": "mlp", "options": {"hidden": [2_000_000]}},
              scaling={"memoryPerWorker": "64Gi"}, train={"batchSize": 1024})
    run = parse_training_run(big)
    each = fpm.footprint(run.spec).training_bytes
    # twice what fits: the command measures again, and the machine's free memory moves
    # between the two (Ray processes of an earlier test still exiting: one run here went
    # unrefused with one more worker than fit)
    workers = 2 * (available_memory() // each) + 2
    assert workers <= 1024, "a machine this large needs a larger model here"
    f = tmp_path / "big.yaml"
    import yaml

    f.write_text(yaml.safe_dump(big))
    storage = tmp_path / "runs"
    assert main(["run", str(f), "--workers", str(workers), "--storage", str(storage)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raykube run: {workers} worker(s) need at least") and "\n" not in err
    assert "use fewer workers (--workers)" in err and "150,000,010 parameters" in err
    assert not storage.exists()
    import ray

    assert not ray.is_initialized()


@pytest.mark.parametrize("field,value", [
    ("scaling.memoryPerWorker", "500m"), ("scaling.head.memory", "900m"),
    ("serve.memoryPerReplica", "1500m")])
def test_a_memory_in_thousandths_of_a_byte_says_so(field, value):
    """``500m`` is half a byte to Kubernetes and almost always a mistyped ``500Mi``: the
    refusal said only that it "cannot hold the model" (a probe on the real node)."""
    section, _, key = field.rpartition(".")
    overrides: dict = {"serve": {"enabled": True}}
    node = overrides.setdefault(section.split(".")[0], {})
    for part in section.split(".")[1:]:
        node = node.setdefault(part, {})
    node[key] = value
    with pytest.raises(InvalidTrainingRun) as exc:
        parse_training_run(doc(**overrides))
    mine = [e for e in exc.value.errors if e.path == f"spec.{field}"]
    assert mine, exc.value.errors
    number = value[:-1]
    for err in mine:
        assert err.message.startswith(f"{value} ('m' is thousandths of a byte: {number}Mi is "
                                      f"{number} mebibytes) "), err.message

"""Static checks of the real-node scripts (tests/node/): what breaks silently otherwise.

The node itself is started by `make node-up` (needs root, containerd and the control
plane); these only pin the agreements between the scripts and the control plane.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE_SH = (REPO / "tests" / "node" / "node.sh").read_text()


def _default(var: str) -> str:
    return re.search(rf"^{var}=\$\{{{var}:-([^}}]+)\}}", NODE_SH, re.M).group(1)


def test_networks_agree_with_the_control_plane_and_do_not_overlap():
    from raykube.testing import control_plane

    assert _default("SERVICE_CIDR") == control_plane.SERVICE_CIDR
    nets = {name: ipaddress.ip_network(_default(name))
            for name in ("POD_CIDR", "CLUSTER_CIDR", "SERVICE_CIDR")}
    nets["NODE_IP"] = ipaddress.ip_network(_default("NODE_IP") + "/32")
    assert nets["POD_CIDR"].subnet_of(nets["CLUSTER_CIDR"])
    assert not nets["SERVICE_CIDR"].overlaps(nets["CLUSTER_CIDR"])
    assert not nets["NODE_IP"].overlaps(nets["CLUSTER_CIDR"])
    assert not nets["NODE_IP"].overlaps(nets["SERVICE_CIDR"])
    # kwok's simulated pods use loopback; a real node must not.
    assert not nets["CLUSTER_CIDR"].overlaps(ipaddress.ip_network(control_plane.POD_CIDR))


def test_kubelet_and_runtime_settings_these_machines_need():
    assert "failCgroupV1: false" in NODE_SH  # cgroup v1 hosts; kubelet >= 1.35 refuses them
    assert "cgroupDriver: cgroupfs" in NODE_SH and "SystemdCgroup = false" in NODE_SH
    assert 'BinaryName = "$repo/tests/node/runc-oom-clamp"' in NODE_SH
    assert '"ipMasq": false' in NODE_SH  # pod traffic is never NATed outwards
    assert 'FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP' in NODE_SH
    assert 'resolvConf: ""' in NODE_SH  # no upstream DNS for pods
    clamp = (REPO / "tests" / "node" / "runc-oom-clamp").read_text()
    assert 'exec runc "$@"' in clamp


E2E_SH = (REPO / "k8s" / "local" / "e2e.sh").read_text()
LOCAL_OVERLAY = REPO / "k8s" / "overlays" / "local"


def test_pods_get_cluster_dns_only_and_reach_each_other():
    assert "clusterDNS: [$NODE_IP]" in NODE_SH
    corefile = NODE_SH.split('cat > "$dir/Corefile"', 1)[1].split("COREFILE\n}", 1)[0]
    assert "bind $NODE_IP" in corefile and "kubernetes cluster.local" in corefile
    assert "forward" not in corefile  # nothing is resolved beyond the cluster
    assert 'FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT' in NODE_SH  # br_netfilter + DROP policy
    assert "cpuCFSQuota: false" in NODE_SH


def test_e2e_local_agrees_with_the_node_and_its_overlay():
    import yaml

    assert re.search(r"^NODE_IP=\$\{NODE_IP:-([^}]+)\}", E2E_SH, re.M).group(1) == _default("NODE_IP")
    pv = yaml.safe_load((LOCAL_OVERLAY / "storage-pv.yaml").read_text())
    storage = re.search(r"^STORAGE=(\S+)", E2E_SH, re.M).group(1)
    assert pv["spec"]["hostPath"]["path"] == storage
    kust = (LOCAL_OVERLAY / "kustomization.yaml").read_text()
    # images are loaded into the node, never pulled (no registry is reachable)
    assert "RAYKUBE_IMAGE_PULL_POLICY=Never" in kust and "value: Never" in kust
    assert "raykube/raykube:dev-cpu" in kust and "newTag: dev-operator" in kust
    for ref in ("raykube/raykube:dev-operator", "raykube/raykube:dev-cpu"):
        assert ref in E2E_SH
    # the control plane is started where pods can reach it, without kwok
    assert '--node-ip "$NODE_IP"' in E2E_SH and "--no-kwok" in E2E_SH


def test_control_plane_on_a_node_address(tmp_path):
    from raykube.testing.control_plane import ControlPlane

    cp = ControlPlane(tmp_path, node_ip="10.243.0.1")
    cp.ports = {"apiserver": 6443}
    assert cp.server == "https://10.243.0.1:6443"
    assert ControlPlane(tmp_path).address == "127.0.0.1"


def test_the_two_core_quickstart_is_valid_and_fits_two_cores():
    from raykube.spec import load_one

    run = load_one(REPO / "k8s" / "local" / "quickstart.yaml")
    s = run.spec
    submitter, operator = 0.5, 0.02  # KubeRay's default submitter request; the overlay's
    training = s.scaling.head.cpus + s.scaling.workers * s.scaling.cpus_per_worker
    serving = s.scaling.head.cpus + s.serve.replicas * s.serve.cpus_per_replica
    # phase 6 trains a second time beside the live RayService
    assert operator + submitter + training + serving <= 2.0


def test_the_e2e_search_fits_two_cores_and_gets_the_head_phase_8_expects():
    """Phase 8 of `make e2e-local` applies k8s/local/tune.yaml with the head's memory
    unset and checks the RayJob's head got the default a search of 2 concurrent trials
    needs; this keeps the script's figure and the render's equal."""
    from raykube.render import RenderConfig, render_rayjob
    from raykube.spec import load_one

    run = load_one(REPO / "k8s" / "local" / "tune.yaml")
    s = run.spec
    assert s.tune is not None and s.scaling.head.memory is None and not s.serve.enabled
    submitter, operator = 0.5, 0.02
    pods = s.tune.max_concurrent_trials * s.scaling.workers * s.scaling.cpus_per_worker
    assert operator + submitter + s.scaling.head.cpus + pods <= 2.0
    head = render_rayjob(run, RenderConfig())["spec"]["rayClusterSpec"]["headGroupSpec"]
    memory = head["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert f"[[ $head_mem == {memory} ]]" in E2E_SH
    assert re.search(r'PHASES:-1 2 3 4 5 6 7 8 9 10\}', E2E_SH)


def test_the_e2e_loss_phase_trains_a_longer_unserved_copy_of_the_quickstart():
    """Phase 10 (k8s/local/losses.sh) edits the quickstart with sed: the name, the epochs
    and serving must each be hit once, and the copy must be a valid run that is not
    served (its cores stay free, and it ends Succeeded)."""
    from raykube.spec import load_yaml_documents, parse_training_run

    losses = (REPO / "k8s" / "local" / "losses.sh").read_text()
    assert "source k8s/local/losses.sh" in E2E_SH
    epochs = int(re.search(r"LOSS_EPOCHS:-(\d+)", losses)[1])
    text = (REPO / "k8s" / "local" / "quickstart.yaml").read_text()
    edits = [(r"^  name: quickstart$", "  name: losses"),
             (r"^    epochs: [0-9]*", f"    epochs: {epochs}"),
             (r"^    enabled: true", "    enabled: false")]
    for sed in ('"s/^  name: $NAME\\$/  name: $LOSS_NAME/"',
                '"s/^    epochs: [0-9]*/    epochs: $LOSS_EPOCHS/"',
                "'s/^    enabled: true/    enabled: false/'"):
        assert sed in losses, sed
    for pattern, repl in edits:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == 1, pattern
    run = parse_training_run(load_yaml_documents(text)[0])
    assert (run.name, run.spec.train.epochs, run.spec.serve.enabled) == ("losses", epochs, False)


def test_the_e2e_gitops_phase_renders_a_quickstart_of_its_own_that_waits(tmp_path, capsys):
    """Phase 9 renames the quickstart with sed and applies its render: the rename must hit
    metadata.name only, and the RayService must wait for the RayJob's training."""
    import yaml

    from raykube.cli import main

    sed = re.search(r'sed "s/\^  name: \$NAME\\\$/  name: \$GITOPS_NAME/"', E2E_SH)
    assert sed and "GITOPS_NAME=gitops-quickstart" in E2E_SH
    text = (REPO / "k8s" / "local" / "quickstart.yaml").read_text()
    renamed = re.sub(r"^  name: quickstart$", "  name: gitops-quickstart", text, flags=re.M)
    assert renamed.count("gitops-quickstart") == 1
    job = tmp_path / "gitops-quickstart.job.yaml"
    job.write_text(renamed)
    assert main(["render", str(job), "-n", "default", "--image", "raykube/raykube:dev-cpu"]) == 0
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(capsys.readouterr().out)}
    svc = docs[("RayService", "gitops-quickstart-serve")]
    assert "waitForTraining: true" in svc["spec"]["serveConfigV2"]
    assert ("RayJob", "gitops-quickstart") in docs
    assert 'grep -q \'waitForTraining: true\' "$GITOPS"' in E2E_SH


def test_the_e2e_gitops_phase_fails_a_copy_of_the_quickstart_for_good():
    """Phase 9's second run: sed renames the quickstart and points it at images that do
    not exist. Each edit must hit once, and the copy must be a valid served run whose
    every attempt fails the same way (a missing image folder: not a transient cause)."""
    from raykube.data import DatasetUnavailable
    from raykube.spec import load_yaml_documents, parse_training_run
    from raykube.transient import retry_would_help

    assert "FAILING_NAME=gitops-failing" in E2E_SH
    for sed in ('-e "s/^  name: $NAME\\$/  name: $FAILING_NAME/"',
                '-e "s|^    dataset: digits\\$|    dataset: image-folder\\n    uri: '
                '/nonexistent/images|"'):
        assert sed in E2E_SH, sed
    text = (REPO / "k8s" / "local" / "quickstart.yaml").read_text()
    for pattern, repl in ((r"^  name: quickstart$", "  name: gitops-failing"),
                          (r"^    dataset: digits$",
                           "    dataset: image-folder\n    uri: /nonexistent/images")):
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == 1, pattern
    run = parse_training_run(load_yaml_documents(text)[0])
    assert (run.name, run.spec.data.dataset, run.spec.data.uri, run.spec.serve.enabled) == (
        "gitops-failing", "image-folder", "/nonexistent/images", True)
    from raykube.data import _list_classes

    try:
        _list_classes(run.spec.data.uri)
    except DatasetUnavailable as exc:
        assert not retry_would_help(exc), exc
    else:
        raise AssertionError("listing /nonexistent/images did not fail")

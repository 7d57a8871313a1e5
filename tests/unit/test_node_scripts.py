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

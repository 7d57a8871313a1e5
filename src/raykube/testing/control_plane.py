"""A real Kubernetes control plane on loopback, from binaries built by ``make cluster-bins``.

envtest-style, plus what envtest leaves out: etcd, kube-apiserver (RBAC, a ServiceAccount
token issuer, production admission plugins including OwnerReferencesPermissionEnforcement,
an audit log), kube-controller-manager (garbage collector, Jobs, ServiceAccounts, PV
binding), kube-scheduler, kwok with one node whose pods are simulated, and KubeRay's real
operator. Everything listens on 127.0.0.1; state, logs, certificates and the admin
kubeconfig live in one directory (``build/cluster`` for ``make cluster-up``, a temporary
one for the test session).

    python -m raykube.testing.control_plane up [--dir build/cluster] [--no-kuberay]
    python -m raykube.testing.control_plane up --node-ip 10.243.0.1 --no-kwok --no-raykube
    python -m raykube.testing.control_plane down [--dir build/cluster]

``--node-ip`` is for a real node (tests/node/node.sh, ``make e2e-local``): the API server
listens and advertises there instead of on loopback, so the ``kubernetes`` Service gets
that endpoint and pods reach the API server through it (the address must already exist
on this machine: ``tests/node/node.sh net-up``); KubeRay, which runs on this machine and
cannot resolve cluster DNS names, reaches the Ray dashboards through the API server's
service proxy (``--use-kubernetes-proxy``). ``--no-raykube`` installs only KubeRay's
CRDs: raykube itself comes from a kustomize overlay.

Processes run in their own sessions (they outlive ``up``); ``down`` stops every process
whose pid file is in the directory and waits until each is gone.

What is simulated: pods. kwok marks them scheduled-then-Running/Ready on the fake node;
no container runs, so no Ray dashboard ever answers KubeRay (a RayJob does not finish on
its own). kwok gives pods loopback addresses (127.1.0.0/16), so nothing that tries to
reach a "pod" leaves this machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raykube.ports import free_port

REPO = Path(__file__).resolve().parents[3]
BIN = REPO / "build" / "bin"
SHARED_KUBERAY_CRDS = REPO.parent / "shared" / "kuberay" / "v1.7.0"
SERVICE_CIDR = "10.96.0.0/16"
"""Service ClusterIPs are only allocated (no kube-proxy with kwok): nothing routes there."""
POD_CIDR = "127.1.0.0/16"
"""kwok's simulated pod IPs: loopback, so a stray connection to a 'pod' stays here."""
NODE_NAME = "kwok-node-0"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CRD_NAMES = ("trainingruns.raykube.io", "rayjobs.ray.io", "rayservices.ray.io",
             "rayclusters.ray.io")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
              "kuberay-operator")

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # The control plane's own chatter is not what the tests count.
  - level: None
    users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver,
            raykube:kwok, raykube:kuberay]
  - level: None
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/openapi*", "/api*"]
  # The operator's writes with their bodies (what it created, what it patched).
  - level: Request
    users: [system:serviceaccount:raykube-system:raykube-operator]
    verbs: [create, patch, update]
  - level: Metadata
"""


AUDIT_FIELDS = ("user", "userAgent", "verb", "stage", "objectRef", "requestReceivedTimestamp",
                "requestObject", "responseStatus")


class ControlPlaneError(RuntimeError):
    pass


def _run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def _stop_pid(pid: int, grace: float = 10.0) -> bool:
    """Stop ``pid``'s process group: SIGTERM, then SIGKILL after ``grace`` seconds (at
    once when 0: a crash, open connections cut rather than closed). Returns once it is
    gone; False if it already was."""
    if not _alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class ControlPlane:
    """One control plane under ``workdir``; ``up()`` starts it, ``down()`` stops it."""

    workdir: Path
    bin_dir: Path = BIN
    kuberay: bool = True
    kwok: bool = True
    node_ip: str | None = None
    """Listen and advertise here instead of 127.0.0.1 (a real node's address; see above)."""
    install_raykube: bool = True
    """Install raykube's namespace, CRD, RBAC and storage (False: KubeRay's CRDs only)."""
    with_kuberay_crds: bool = True
    """Install KubeRay's CRDs (False: a cluster without KubeRay; needs ``kuberay=False``)."""
    kuberay_namespaces: tuple[str, ...] = ()
    """Where KubeRay acts (empty: everywhere). The tests keep namespaces where KubeRay does
    not, to stand in for it there by patching status without racing the real controller."""
    ports: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    _commands: dict[str, tuple[list[str], dict[str, str] | None]] = field(
        default_factory=dict, repr=False)
    """How each component was started by this object (``crash_apiserver`` restarts some)."""

    # ------------------------------------------------------------------ paths
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports['apiserver']}"

    @property
    def address(self) -> str:
        return self.node_ip or "127.0.0.1"

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise ControlPlaneError(f"{path} is missing: run `make cluster-bins` first")
        return str(path)

    @property
    def kubectl(self) -> str:
        return self._bin("kubectl")

    # ------------------------------------------------------------- lifecycle
    def up(self, timeout: float = 60.0, *, fresh: bool = False) -> ControlPlane:
        """Start every component. ``fresh``: etcd's data of an earlier start is removed
        first (a test session: the namespaces the previous one deleted at its end may
        still be terminating in it, and refuse new objects); without it, what was
        applied survives a restart, as on a real cluster."""
        t0 = time.monotonic()
        self.down(quiet=True)  # a stale set of processes from a crashed session
        if fresh:
            shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        for sub in ("pki", "logs", "pids", "etcd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kuberay_probe")}
        self._pki()
        self._start_etcd()
        self._start_apiserver()
        self._wait_ready(t0 + timeout)
        self._start("kube-controller-manager", [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={self._component_kubeconfig('kube-controller-manager')}",
            "--leader-elect=false", "--secure-port=0", "--controllers=*",
            # each controller as its own ServiceAccount, with the bootstrap RBAC roles (kubeadm)
            "--use-service-account-credentials=true",
            f"--root-ca-file={self.workdir / 'pki/ca.crt'}",
            f"--service-account-private-key-file={self.workdir / 'pki/sa.key'}",
            "--concurrent-gc-syncs=20", "--v=1",
        ])
        self._start("kube-scheduler", [
            self._bin("kube-scheduler"),
            f"--kubeconfig={self._component_kubeconfig('kube-scheduler')}",
            "--leader-elect=false", "--secure-port=0", "--v=1",
        ])
        self._install_base()
        if self.kwok:
            self._start("kwok", [
                self._bin("kwok"), f"--kubeconfig={self._component_kubeconfig('kwok')}",
                f"--config={self.bin_dir / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1",
            ])
            self.apply_objects([_kwok_node()])
        if self.kuberay:
            self._start("kuberay-operator", [
                self._bin("kuberay-operator"), "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{self.ports['kuberay_probe']}",
                "--enable-leader-election=false", "--log-stdout-encoder=console",
                f"--watch-namespace={','.join(self.kuberay_namespaces)}",
                # out of the cluster it cannot resolve <head-svc>.<ns>.svc.cluster.local:
                # the dashboards are reached through the API server's service proxy
                *(["--use-kubernetes-proxy"] if self.node_ip else []),
            ], env={"KUBECONFIG": str(self._component_kubeconfig("kuberay-operator"))})
        if self.kwok:
            self.wait_for(lambda: self._node_ready(), t0 + timeout, "the kwok node to be Ready")
        (self.workdir / "state.json").write_text(json.dumps(
            {"ports": self.ports, "kuberay_namespaces": list(self.kuberay_namespaces),
             "node_ip": self.node_ip}, indent=2))
        return self

    def attach(self) -> ControlPlane:
        """Use a control plane already running in ``workdir`` (``make cluster-up``)."""
        state = json.loads((self.workdir / "state.json").read_text())
        self.ports = state["ports"]
        self.kuberay_namespaces = tuple(state.get("kuberay_namespaces") or ())
        self.node_ip = state.get("node_ip")
        self._pki()
        if not all(self.running().values()):
            raise ControlPlaneError(f"the control plane in {self.workdir} is not running")
        return self

    def down(self, quiet: bool = False) -> list[str]:
        """Stop every process with a pid file here (SIGTERM, then SIGKILL); returns their names."""
        stopped = []
        pid_dir = self.workdir / "pids"
        pids: dict[str, int] = {}
        for f in sorted(pid_dir.glob("*.pid")) if pid_dir.exists() else []:
            with contextlib.suppress(ValueError):
                pids[f.stem] = int(f.read_text())
            f.unlink(missing_ok=True)
        # reverse start order: clients before the API server, etcd last
        for name in sorted(pids, key=lambda n: -COMPONENTS.index(n) if n in COMPONENTS else -99):
            if _stop_pid(pids[name]):
                stopped.append(name)
        if stopped and not quiet:
            print("stopped: " + ", ".join(stopped))
        return stopped

    def crash_apiserver(self, down_s: float, timeout: float = 60.0) -> None:
        """Kill the API server (SIGKILL: open watches are cut, not closed), keep it down
        ``down_s`` seconds, then start it again on the same port, certificates and etcd,
        as after a crash or a control-plane upgrade; return once it is ready, with the
        controllers this object started restarted (not raykube's operator: the tests run
        that themselves)."""
        _stop_pid(int((self.workdir / "pids" / "kube-apiserver.pid").read_text()), grace=0)
        time.sleep(down_s)
        self._start_apiserver()
        self._wait_ready(time.monotonic() + timeout)
        # The session's other clients (KubeRay above all) back off for up to ~30 s
        # before they watch again (client-go's reflector), and the next test module
        # would wait on them: restart them, as a whole control plane coming back would.
        # Only what this object started (not a `make cluster-up` it attached to).
        for name in ("kube-controller-manager", "kube-scheduler", "kwok", "kuberay-operator"):
            if name not in self._commands:
                continue
            _stop_pid(int((self.workdir / "pids" / f"{name}.pid").read_text()))
            self._start(name, *self._commands[name])

    def running(self) -> dict[str, bool]:
        out = {}
        for f in sorted((self.workdir / "pids").glob("*.pid")):
            out[f.stem] = _alive(int(f.read_text()))
        return out

    # ---------------------------------------------------------------- pieces
    def _pki(self) -> None:
        pki = self.workdir / "pki"
        ips = ["127.0.0.1", "10.96.0.1", *([self.node_ip] if self.node_ip else [])]
        sans = ("DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
                "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,"
                + ",".join(f"IP:{ip}" for ip in ips))
        if (pki / "ext.cnf").exists() and (pki / "ext.cnf").read_text() != f"subjectAltName={sans}\n":
            for f in pki.iterdir():  # certificates made for another address: start over
                f.unlink()
        if not (pki / "ca.crt").exists():
            _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                  "-keyout", pki / "ca.key", "-out", pki / "ca.crt", "-subj", "/CN=raykube-local-ca"])
            _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "apiserver.key",
                  "-out", pki / "apiserver.csr", "-subj", "/CN=kube-apiserver"])
            (pki / "ext.cnf").write_text(f"subjectAltName={sans}\n")
            _run(["openssl", "x509", "-req", "-in", pki / "apiserver.csr", "-CA", pki / "ca.crt",
                  "-CAkey", pki / "ca.key", "-CAcreateserial", "-days", "3650",
                  "-extfile", pki / "ext.cnf", "-out", pki / "apiserver.crt"])
            _run(["openssl", "genrsa", "-out", pki / "sa.key", "2048"])
            _run(["openssl", "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"])
        tokens_file = pki / "tokens.csv"
        if tokens_file.exists():
            for line in tokens_file.read_text().splitlines():
                token, user, *_ = line.split(",")
                self.tokens[user] = token
        else:
            users = {  # user -> groups
                "admin": "system:masters",
                "system:kube-controller-manager": "",
                "system:kube-scheduler": "",
                "raykube:kwok": "system:masters",
                "raykube:kuberay": "system:masters",
            }
            lines = []
            for i, (user, groups) in enumerate(users.items()):
                token = secrets.token_hex(24)
                self.tokens[user] = token
                lines.append(f'{token},{user},{i}' + (f',"{groups}"' if groups else ""))
            tokens_file.write_text("\n".join(lines) + "\n")
            tokens_file.chmod(0o600)
        self.write_kubeconfig(self.kubeconfig, self.tokens["admin"], user="admin")

    def write_kubeconfig(self, path: Path, token: str, user: str = "user",
                         namespace: str = "default") -> Path:
        """A kubeconfig for this API server that authenticates with ``token``."""
        ca = base64.b64encode((self.workdir / "pki/ca.crt").read_bytes()).decode()
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "raykube-local",
            "clusters": [{"name": "raykube-local", "cluster": {
                "server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "raykube-local", "context": {
                "cluster": "raykube-local", "user": user, "namespace": namespace}}],
        }
        path.write_text(json.dumps(doc, indent=2))
        path.chmod(0o600)
        return path

    def _component_kubeconfig(self, component: str) -> Path:
        user = {"kwok": "raykube:kwok", "kuberay-operator": "raykube:kuberay"}.get(
            component, f"system:{component}")
        return self.write_kubeconfig(self.workdir / f"{component}.kubeconfig",
                                     self.tokens[user], user=user)

    def _start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self._commands[name] = (cmd, env)
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (owned by child)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.workdir,
                                env={**os.environ, **(env or {})})
        log.close()
        (self.workdir / "pids" / f"{name}.pid").write_text(str(proc.pid))
        time.sleep(0.05)
        if proc.poll() is not None:
            raise ControlPlaneError(f"{name} exited at once:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._start("etcd", [
            self._bin("etcd"), f"--data-dir={self.workdir / 'etcd'}", "--name=default",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}", "--unsafe-no-fsync", "--log-level=warn",
            # KubeRay's CRDs are ~1.4 MB of schema; with their managedFields a status
            # update of rayjobs.ray.io exceeds etcd's default 1.5 MiB request limit
            "--max-request-bytes=8388608",
        ])

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self._start("kube-apiserver", [
            self._bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            # the production set (these are on by default) plus the two hardened clusters add
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--profiling=false",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            # lumberjack (the audit log's writer) rotates at 100 MB unless told otherwise,
            # and a test session's polling reaches that: the tests then saw no new call
            # (an operator restart "never watched"); a rotation is still followed
            # (``audit_events`` reads a file with a new inode from its start)
            "--audit-log-mode=blocking", "--audit-log-maxsize=4096", "--v=1",
            # a real node's kubelet is known by its InternalIP (no DNS for its hostname)
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # the "kubernetes" Service cannot point at a loopback address
            *([] if self.node_ip else ["--endpoint-reconciler-type=none"]),
        ])

    def _wait_ready(self, deadline: float) -> None:
        def ready() -> bool:
            try:
                out = subprocess.run([self.kubectl, "--kubeconfig", str(self.kubeconfig),
                                      "get", "--raw", "/readyz"], capture_output=True,
                                     text=True, timeout=5)
            except subprocess.TimeoutExpired:
                return False
            if out.returncode != 0:
                for name in ("etcd", "kube-apiserver"):
                    pid = int((self.workdir / "pids" / f"{name}.pid").read_text())
                    if not _alive(pid):
                        raise ControlPlaneError(f"{name} exited:\n{self.log_tail(name)}")
            return out.returncode == 0 and out.stdout.strip() == "ok"
        self.wait_for(ready, deadline, "the API server to be ready")

    def wait_for(self, predicate: Any, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"timed out waiting for {what}")

    def kubectl_run(self, *args: str, input: str | None = None, check: bool = True,
                    kubeconfig: Path | None = None, timeout: float = 60
                    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.kubectl, "--kubeconfig", str(kubeconfig or self.kubeconfig),
                               *args], input=input, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply_objects(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl_run("apply", "--server-side", "--field-manager=raykube-test", "-f", "-",
                         input="\n---\n".join(json.dumps(o) for o in objs))

    def kuberay_crds(self) -> Path:
        """KubeRay v1.7.0's CRDs (the version raykube targets) from ../shared, else the
        CRDs of the built KubeRay module."""
        if (SHARED_KUBERAY_CRDS / "ray.io_rayjobs.yaml").exists():
            return SHARED_KUBERAY_CRDS
        found = sorted((REPO / "build").glob("kuberay-crds-*"))
        if not found:
            raise ControlPlaneError("KubeRay CRDs not found: run `make cluster-bins`")
        return found[-1]

    def _install_base(self) -> None:
        args = ["apply", "--server-side", "--field-manager=raykube-install"]
        if self.with_kuberay_crds:
            for f in sorted(self.kuberay_crds().glob("ray.io_*.yaml")):
                args += ["-f", str(f)]
        if self.install_raykube:
            base = REPO / "k8s" / "base"
            for f in ("namespace.yaml", "crd.yaml", "rbac.yaml"):
                args += ["-f", str(base / f)]
        self.kubectl_run(*args, timeout=120)
        if self.install_raykube:
            self._install_storage()
        deadline = time.monotonic() + 120
        names = [n for n in CRD_NAMES if (self.install_raykube or not n.endswith("raykube.io"))
                 and (self.with_kuberay_crds or not n.endswith(".ray.io"))]
        self.wait_for(lambda: self._crds_established(names), deadline,
                      "the CRDs to be established")
        if self.install_raykube:
            self.kubectl_run("create", "serviceaccount", "raykube-operator",
                             "-n", "raykube-system", check=False)

    def _install_storage(self) -> None:
        """The ``raykube-storage`` claim of ``default`` and its volume, as the kind overlay
        makes them (the claim patched to bind to the hostPath volume: base's claim alone
        asks a storage class for 20Gi and stays Pending here, and with it every Ray pod of a
        TrainingRun applied to ``default``). kwok runs no container: the path is never used.
        A claim left Pending by an older install is replaced (it holds nothing)."""
        import yaml

        out = self.kubectl_run("kustomize", str(REPO / "k8s" / "overlays" / "kind")).stdout
        objs = [o for o in yaml.safe_load_all(out)
                if o and o["kind"] in ("PersistentVolume", "PersistentVolumeClaim")]
        body = "\n---\n".join(json.dumps(o) for o in objs)
        args = ("apply", "--server-side", "--field-manager=raykube-install", "-f", "-")
        if self.kubectl_run(*args, input=body, check=False).returncode != 0:
            self.kubectl_run("delete", "pvc", "raykube-storage", "-n", "default",
                             "--timeout=60s", check=False)
            self.kubectl_run(*args, input=body)

    def _crds_established(self, names: Sequence[str] = CRD_NAMES) -> bool:
        out = self.kubectl_run("get", "crd", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        established = {c["metadata"]["name"] for c in json.loads(out.stdout)["items"]
                       if any(x["type"] == "Established" and x["status"] == "True"
                              for x in (c.get("status") or {}).get("conditions") or [])}
        return established >= set(names)

    def _node_ready(self) -> bool:
        out = self.kubectl_run("get", "node", NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conds = json.loads(out.stdout).get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    # --------------------------------------------------------------- helpers
    def token(self, service_account: str, namespace: str, duration: str = "2h") -> str:
        """A token of ``namespace/service_account`` from the TokenRequest API."""
        return self.kubectl_run("create", "token", service_account, "-n", namespace,
                                f"--duration={duration}").stdout.strip()

    def kubeconfig_for(self, service_account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (TokenRequest token)."""
        return self.write_kubeconfig(path, self.token(service_account, namespace),
                                     user=f"system:serviceaccount:{namespace}:{service_account}",
                                     namespace=namespace)

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """Audit events of ``user`` (all users when None), oldest first, with the fields the
        tests and the bench read (``AUDIT_FIELDS``). The log is read incrementally: each call parses
        only what was appended since the last one, and keeps only those fields (a test
        session's log reaches tens of MB)."""
        cache = self.__dict__.setdefault("_audit", {"offset": 0, "events": [], "inode": None})
        try:
            with open(self.audit_log, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != cache["inode"]:  # rotated after all: a new file from its start
                    cache["inode"], cache["offset"] = inode, 0
                f.seek(cache["offset"])
                chunk = f.read()
        except OSError:
            chunk = b""
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        for line in chunk[:end].splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                cache["events"].append({k: ev[k] for k in AUDIT_FIELDS if k in ev})
        cache["offset"] += end
        return [ev for ev in cache["events"]
                if user is None or (ev.get("user") or {}).get("username") == user]


def _kwok_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok"}},
        "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                   "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"}},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raykube.testing.control_plane",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", type=Path, default=REPO / "build" / "cluster")
    p.add_argument("--no-kuberay", action="store_true", help="do not start the KubeRay operator")
    p.add_argument("--no-kwok", action="store_true", help="no simulated node (a real one joins)")
    p.add_argument("--no-raykube", action="store_true",
                   help="install KubeRay's CRDs only (raykube comes from an overlay)")
    p.add_argument("--node-ip", help="listen and advertise on this address of this machine "
                   "(a real node's), not 127.0.0.1")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    cp = ControlPlane(args.dir.resolve(), kuberay=not args.no_kuberay, kwok=not args.no_kwok,
                      install_raykube=not args.no_raykube, node_ip=args.node_ip)
    try:
        if args.action == "up":
            t0 = time.monotonic()
            try:
                cp.up(timeout=args.timeout)
            except BaseException:
                cp.down(quiet=True)
                raise
            print(f"control plane up in {time.monotonic() - t0:.1f} s: {cp.server}\n"
                  f"  export KUBECONFIG={cp.kubeconfig}\n"
                  f"  export PATH={cp.bin_dir}:$PATH   # the kubectl built with it\n"
                  f"  logs: {cp.workdir / 'logs'}/\n  stop: make cluster-down")
        elif args.action == "down":
            stopped = cp.down()
            if not stopped:
                print("nothing was running")
        else:
            state = cp.running()
            for name, alive in state.items():
                print(f"{name:26s} {'running' if alive else 'stopped'}")
            return 0 if state and all(state.values()) else 1
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# A real node for the local control plane (`make cluster-up`): containerd + runc + CNI
# bridge + kubelet + kube-proxy on this machine, joined to build/cluster/kubeconfig.
#   tests/node/node.sh up        start it (after `make cluster-up`); loads IMAGES into containerd
#   tests/node/node.sh down      stop it, remove its iptables rule, bridges and pod mounts
#   tests/node/node.sh load REF  docker save REF | ctr import (make images first)
#   tests/node/node.sh demo [IMAGE]  run a Pod from IMAGE (default raykube/raykube:dev-operator)
#                                on the node; a Ray image starts Ray in the pod and runs a task
#   tests/node/node.sh svc-demo  a Pod behind a Service, fetched through its ClusterIP from the host
#   tests/node/node.sh runtime-up  containerd + pause + IMAGES only (checks the runtime alone)
#   tests/node/node.sh net-up    only the node's address (before `control_plane up --node-ip`)
# State and logs: build/node/ (config, logs, pids) and /var/lib/raykube-node (containerd,
# kubelet). Everything listens on 127.0.0.1, the node's own address (10.243.0.1) or the pod
# bridge; pods cannot reach beyond this machine (a FORWARD rule drops pod traffic leaving
# the bridge; pod traffic is never masqueraded).
#
# Choices, and why:
#  - containerd and runc from Debian (containerd 1.6.20): kubelet 1.36 still accepts a CRI
#    without the RuntimeConfig call (it falls back to its own cgroupDriver; warned as losing
#    support in 1.37). A separate containerd instance (own root, state, socket) with the CRI
#    plugin on, so Docker's containerd is left alone.
#  - cgroup v1, no systemd: cgroupfs driver everywhere; kubelet needs failCgroupV1: false.
#  - root here lacks CAP_SYS_RESOURCE: runc runs through tests/node/runc-oom-clamp, which
#    clamps the kubelet's negative oom_score_adj (-998 for every sandbox) to the caller's.
#  - no registry: the pod sandbox image is a locally built pause (tests/node/build-node-bins.sh
#    compiles kubernetes' pause.c), imported into containerd like our images.
#  - CIDRs: pods 10.244.0.0/24 on bridge rk0; services are the control plane's 10.96.0.0/16;
#    both are checked against `ip route` first (nothing may overlap).
#  - the kubelet uses the control plane's admin kubeconfig (no TLS bootstrap, no node
#    authorizer: a test node), serves on the node address, and has eviction thresholds of
#    1Gi so a well-used disk does not put the node under DiskPressure.
#  - cluster DNS: CoreDNS (built by build-node-bins.sh) runs on this machine on the node
#    address, port 53, answering cluster.local from the API server (kubernetes plugin) and
#    nothing else (no upstream); the kubelet gives pods that address as their nameserver.
#  - pods reach the API server through the `kubernetes` Service when the control plane was
#    started with --node-ip (it then listens on the node address; pod -> node address is
#    local traffic, not forwarded).
#  - these machines load br_netfilter and Docker sets FORWARD's policy to DROP: bridged
#    pod-to-pod traffic (a Service's backend on the same bridge) gets an ACCEPT rule.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
NODE_NAME=${NODE_NAME:-raykube-node-0}
POD_CIDR=${POD_CIDR:-10.244.0.0/24}
CLUSTER_CIDR=${CLUSTER_CIDR:-10.244.0.0/16}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/16}
BRIDGE=rk0
# The node's address: kubelet refuses a loopback node IP, so a /32 on an interface of its
# own (a port-less bridge; local only). The API server reaches the kubelet here.
NODE_IP=${NODE_IP:-10.243.0.1}
NODE_IF=rknode0
dir=$repo/build/node
state=/var/lib/raykube-node
run=/run/raykube-node
sock=$run/containerd.sock
kubeconfig=${KUBECONFIG_NODE:-$repo/build/cluster/kubeconfig}
PAUSE_IMAGE=docker.io/raykube/pause:local
IMAGES=${IMAGES:-raykube/raykube:dev-operator}

log() { echo "==> $*"; }
ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }
kubectl_() { "$repo/build/bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

start_bg() {  # name, command...: background it in its own session, pid in build/node/pids
  local name=$1; shift
  stop_bg "$name"   # a second `up` replaces the running one instead of starting a twin
  setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids/$name.pid"
}

stop_bg() {
  local f=$dir/pids/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

check_cidrs() {  # nothing in `ip route` may overlap the pod or service network
  python3 - "$POD_CIDR" "$CLUSTER_CIDR" "$SERVICE_CIDR" "$NODE_IP/32" "$BRIDGE" "$NODE_IF" <<'PY'
import ipaddress, subprocess, sys
mine = [ipaddress.ip_network(c) for c in sys.argv[1:5]]
ours = sys.argv[5:7]
for line in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout.splitlines():
    dest = line.split()[0]
    if dest == "default" or any(f" dev {d} " in f" {line} " for d in ours):
        continue
    net = ipaddress.ip_network(dest, strict=False)
    for m in mine:
        if net.overlaps(m):
            sys.exit(f"error: {m} overlaps the route '{line}'; set POD_CIDR/CLUSTER_CIDR/SERVICE_CIDR")
PY
}

install_packages() {
  local missing=()
  command -v containerd > /dev/null || missing+=(containerd)
  command -v runc > /dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v conntrack > /dev/null || missing+=(conntrack)
  command -v iptables > /dev/null || missing+=(iptables)
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

write_configs() {
  mkdir -p "$dir"/{logs,pids,cni} "$state" "$run"
  cat > "$dir/containerd.toml" <<TOML
version = 2
root = "$state/containerd"
state = "$run/containerd"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$repo/tests/node/runc-oom-clamp"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
TOML
  # ipMasq false: pod traffic is never NATed towards the outside (and is dropped there).
  cat > "$dir/cni/10-raykube.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "raykube",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$state/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
  cat > "$dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false            # these machines run cgroup v1 (kubelet >= 1.35 refuses it otherwise)
cgroupDriver: cgroupfs         # no systemd here
containerRuntimeEndpoint: unix://$sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}   # a test node on loopback; the API server has no kubelet client cert
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
resolvConf: ""                 # no upstream DNS for pods: nothing leaves this machine
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]         # CoreDNS on this machine (cluster.local only)
evictionHard: {memory.available: 200Mi, nodefs.available: 1Gi, imagefs.available: 1Gi, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
runtimeRequestTimeout: 10m     # creating the first container of a 7 GB image took > 2 min (the default) here
# CPU limits are not enforced (no CFS quota): a 2-core node schedules pods on requests, and
# Ray processes may use idle cores beyond them instead of being throttled to a sliver.
cpuCFSQuota: false
registerNode: true
YAML
  cat > "$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["127.0.0.0/8"]
clientConnection: {kubeconfig: $kubeconfig}
conntrack: {maxPerCore: 0}     # leave the host's conntrack sysctls alone
YAML
  cat > "$dir/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig
        pods insecure
    }
}
COREFILE
}

pod_egress_rules() {  # $1 = -I (add) or -D (remove): pods never reach beyond this machine
  iptables -w "$1" FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP -m comment --comment raykube-node 2>/dev/null || true
  # pod to pod on the bridge (br_netfilter sends bridged frames through FORWARD, whose
  # policy Docker sets to DROP)
  iptables -w "$1" FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT -m comment --comment raykube-node 2>/dev/null || true
}

net_up() {  # the node's address, on an interface of its own
  check_cidrs
  if ! ip link show "$NODE_IF" > /dev/null 2>&1; then
    ip link add "$NODE_IF" type bridge   # (no dummy module in these kernels; a port-less bridge)
    ip addr add "$NODE_IP/32" dev "$NODE_IF"
    ip link set "$NODE_IF" up
  fi
}

load_image() {
  local ref=$1 start=$SECONDS id stamp
  # Skipped when containerd already has this very image (the CPU image takes minutes).
  id=$(docker image inspect --format '{{.Id}}' "$ref")
  stamp=$state/loaded/${ref//[\/:]/_}
  if [[ -f $stamp && $(cat "$stamp") == "$id" ]] && ctr_ images ls -q | grep -qx "docker.io/$ref"; then
    log "$ref already in containerd ($id)"
    return
  fi
  log "loading $ref into containerd (docker save | ctr import)"
  docker save "$ref" | ctr_ images import --no-unpack - > /dev/null
  # Unpack for the overlayfs snapshotter the CRI uses (done once, here, not at pod start).
  ctr_ images unpack --snapshotter overlayfs "docker.io/$ref" > /dev/null 2>&1 || true
  mkdir -p "$state/loaded" && echo "$id" > "$stamp"
  log "  $ref loaded in $((SECONDS - start)) s"
}

make_pause_image() {
  if ctr_ images ls -q | grep -qx "$PAUSE_IMAGE"; then return; fi
  local tmp; tmp=$(mktemp -d)
  cp "$repo/build/bin/pause" "$tmp/pause"
  tar -C "$tmp" -c pause | docker import --change 'ENTRYPOINT ["/pause"]' - raykube/pause:local > /dev/null
  rm -rf "$tmp"
  load_image raykube/pause:local
}

runtime_up() {  # containerd with the CRI plugin, the pause image and our images; no kubelet
  check_cidrs
  install_packages
  write_configs
  if ! ctr --address "$sock" version > /dev/null 2>&1; then
    log "containerd ($(containerd --version | awk '{print $3}')) on $sock"
    start_bg containerd containerd --config "$dir/containerd.toml"
    for _ in $(seq 1 50); do ctr --address "$sock" version > /dev/null 2>&1 && break; sleep 0.2; done
  fi
  images/ensure-docker.sh
  make_pause_image
  for ref in $IMAGES; do load_image "$ref"; done
  pod_egress_rules -D; pod_egress_rules -I
  net_up
}

up() {
  [[ -f $kubeconfig ]] || { echo "error: $kubeconfig missing: run make cluster-up first" >&2; exit 1; }
  tests/node/build-node-bins.sh
  runtime_up
  log "coredns $("$repo/build/bin/coredns" -version 2>/dev/null | head -1 | awk '{print $1}') on $NODE_IP:53"
  start_bg coredns "$repo/build/bin/coredns" -conf "$dir/Corefile"
  log "kubelet $NODE_NAME"
  start_bg kubelet "$repo/build/bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$state/kubelet" \
    --cert-dir "$state/kubelet/pki" --v 1
  log "kube-proxy"
  start_bg kube-proxy "$repo/build/bin/kube-proxy" --config "$dir/kube-proxy.yaml" --v 1
  log "waiting for node/$NODE_NAME to be Ready"
  for _ in $(seq 1 120); do kubectl_ get node "$NODE_NAME" > /dev/null 2>&1 && break; sleep 1; done
  kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s
  for _ in $(seq 1 50); do curl -fs -o /dev/null http://127.0.0.1:18181/ready && break; sleep 0.2; done
  curl -fs -o /dev/null http://127.0.0.1:18181/ready || { tail -20 "$dir/logs/coredns.log" >&2; echo "error: coredns not ready" >&2; exit 1; }
  kubectl_ get node "$NODE_NAME" -o wide
}

down() {
  stop_bg coredns
  stop_bg kube-proxy
  stop_bg kubelet
  # The pods' containers (the kubelet is gone: kill them through containerd).
  if [[ -S $sock ]]; then
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$id" 2>/dev/null || true; done
    sleep 1
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" 2>/dev/null || true; done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" 2>/dev/null || true; done
  fi
  stop_bg containerd
  pod_egress_rules -D
  # kube-proxy's own chains (KUBE-*) outlive it unless asked to remove them.
  [[ -x $repo/build/bin/kube-proxy ]] && "$repo/build/bin/kube-proxy" --cleanup > /dev/null 2>&1 || true
  # ...and so do the kubelet's (KUBE-FIREWALL is jumped to from INPUT and OUTPUT).
  for chain in INPUT OUTPUT; do
    while iptables -w -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
  done
  for t in filter nat mangle; do
    for c in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      iptables -w -t "$t" -F "$c" 2>/dev/null && iptables -w -t "$t" -X "$c" 2>/dev/null || true
    done
  done
  # kubelet's and CNI's leftovers: pod mounts, the bridge.
  awk -v d="$state/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  ip link del "$NODE_IF" 2>/dev/null || true
  log "node stopped"
}

demo() {
  local image=${1:-raykube/raykube:dev-operator}
  local code="import raykube, raykube.spec, sys; print('raykube', raykube.__name__, 'python', sys.version.split()[0], 'on', open('/etc/hostname').read().strip())"
  if [[ $image != *operator* ]]; then  # a Ray image: start Ray in the pod, run a torch task on it
    code="import ray, torch, raykube; ray.init(num_cpus=1, include_dashboard=False); print('ray', ray.__version__, 'torch', torch.__version__, 'task ->', ray.get(ray.remote(lambda: float(torch.ones(3).sum())).remote()))"
  fi
  kubectl_ delete pod raykube-node-demo --ignore-not-found --wait=true > /dev/null
  kubectl_ apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: raykube-node-demo, namespace: default}
spec:
  nodeName: $NODE_NAME
  restartPolicy: Never
  containers:
    - name: demo
      image: docker.io/$image
      imagePullPolicy: Never
      command: ["python", "-c", "$code"]
YAML
  kubectl_ wait --for=jsonpath='{.status.phase}'=Succeeded pod/raykube-node-demo --timeout=300s
  kubectl_ get pod raykube-node-demo -o wide
  # `kubectl logs` goes through the API server to the kubelet on the node address (the
  # control plane prefers InternalIP); a control plane started before that flag could not
  # resolve the node's Hostname address, hence the fallback to the kubelet's own log file.
  kubectl_ logs raykube-node-demo 2>/dev/null || \
    cat "/var/log/pods/default_raykube-node-demo_$(kubectl_ get pod raykube-node-demo -o jsonpath='{.metadata.uid}')/demo/0.log"
}

svc_demo() {  # a Pod behind a Service: kube-proxy's ClusterIP rules, reached from the host
  kubectl_ delete pod,svc -l app=raykube-node-web --ignore-not-found --wait=true > /dev/null
  kubectl_ apply -f - > /dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: raykube-node-web, namespace: default, labels: {app: raykube-node-web}}
spec:
  nodeName: $NODE_NAME
  containers:
    - name: web
      image: docker.io/raykube/raykube:dev-operator
      imagePullPolicy: Never
      command: ["python", "-m", "http.server", "8080", "--directory", "/opt/venv"]
      readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: raykube-node-web, namespace: default, labels: {app: raykube-node-web}}
spec:
  selector: {app: raykube-node-web}
  ports: [{port: 80, targetPort: 8080}]
YAML
  kubectl_ wait --for=condition=Ready pod/raykube-node-web --timeout=120s > /dev/null
  local ip code=000
  ip=$(kubectl_ get svc raykube-node-web -o jsonpath='{.spec.clusterIP}')
  for _ in $(seq 1 30); do  # until kube-proxy has synced the new Service
    code=$(curl -s -m 3 -o /dev/null -w '%{http_code}' "http://$ip/") && [[ $code == 200 ]] && break
    sleep 1
  done
  echo "GET http://$ip/ (Service raykube-node-web -> pod $(kubectl_ get pod raykube-node-web -o jsonpath='{.status.podIP}'):8080): HTTP $code"
  kubectl_ delete pod,svc -l app=raykube-node-web --wait=false > /dev/null
  [[ $code == 200 ]]
}

case "${1:-}" in
  up) up ;;
  runtime-up) runtime_up ;;   # containerd + images only (no control plane needed)
  net-up) net_up ;;
  down) down ;;
  load) shift; for ref in "$@"; do load_image "$ref"; done ;;
  demo) shift; demo "$@" ;;
  svc-demo) svc_demo ;;
  *) echo "usage: $0 up|down|runtime-up|net-up|load REF...|demo [IMAGE]|svc-demo" >&2; exit 2 ;;
esac

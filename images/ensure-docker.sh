#!/usr/bin/env bash
# Make a Docker engine usable on this machine, installing and starting it when needed.
#   images/ensure-docker.sh          (images/build.sh calls it; idempotent)
# Why: these machines have no Docker engine by default, but Debian's docker.io package
# installs and its dockerd runs here (overlay2, cgroup v1). There is no systemd, so the
# daemon is started in the background and left running for later builds.
set -euo pipefail

log_dir="${DOCKERD_LOG_DIR:-/var/log}"

if docker info > /dev/null 2>&1; then
  exit 0                                   # a daemon is already reachable: use it
fi

if ! command -v dockerd > /dev/null 2>&1; then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get > /dev/null 2>&1; then
    echo "error: no Docker engine; install one (Debian: apt-get install docker.io) and start it" >&2
    exit 1
  fi
  echo "==> installing docker.io (Debian package)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi

if [[ "$(id -u)" != 0 ]]; then
  echo "error: dockerd is installed but not running; start it as root (dockerd &)" >&2
  exit 1
fi

echo "==> starting dockerd (log: $log_dir/dockerd.log)"
# setsid + nohup: the daemon outlives this script and the make process that ran it.
setsid nohup dockerd > "$log_dir/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if docker info > /dev/null 2>&1; then
    echo "==> dockerd is up ($(docker info --format '{{.ServerVersion}} storage={{.Driver}} cgroup={{.CgroupVersion}}'))"
    exit 0
  fi
  sleep 1
done
echo "error: dockerd did not come up in 60 s; see $log_dir/dockerd.log" >&2
tail -20 "$log_dir/dockerd.log" >&2
exit 1

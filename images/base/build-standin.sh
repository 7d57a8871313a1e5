#!/usr/bin/env bash
# Build, once, local stand-ins for the two registry images raykube's Dockerfiles start FROM,
# for machines without access to an image registry (like this project's build machines):
#   raykube/python-standin:3.11-bookworm       for python:3.11-slim-bookworm (operator image)
#   raykube/ray-standin:<ray>-py311-cpu        for rayproject/ray:<ray>-py311-cpu (cpu/cuda images)
# Usage: images/base/build-standin.sh           (images/build.sh calls it when BASE=standin)
#        FORCE=1 images/base/build-standin.sh   (rebuild even if cached)
# Cached by version: each image is labelled with the hash of the files that define it; an
# image whose label matches is reused (Docker's image store outside the checkout survives
# fresh clones), so a second `make images` does not rebuild the base.
# Needs root (debootstrap), Debian's debootstrap package (installed if missing) and a
# running Docker engine (images/ensure-docker.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The Ray version is the one pyproject.toml pins (ray[...]==X), so the stand-in cannot drift.
RAY_VERSION="$(sed -n 's/.*"ray\[[^]]*\]==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)"
[[ -n "$RAY_VERSION" ]] || { echo "error: no ray==X pin found in pyproject.toml" >&2; exit 1; }
PY_IMAGE="${PY_IMAGE:-raykube/python-standin:3.11-bookworm}"
RAY_IMAGE="${RAY_IMAGE:-raykube/ray-standin:${RAY_VERSION}-py311-cpu}"
SUITE=bookworm
# Packages of the root filesystem: python3.11 + venv (both stand-ins build venvs), CAs, and
# the tools the real Ray image has that KubeRay's pod commands/probes use (bash is in minbase).
PACKAGES=python3,python3-venv,ca-certificates,netbase,tzdata,sudo,wget,curl,procps

# The mirror apt already uses on this machine (deb822 "URIs:" or one-line "deb" form).
mirror="${DEBIAN_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | sed -n -e 's|^URIs: *\(\S*/debian\)$|\1|p' -e 's|^deb \(\[[^]]*\] \)\?\(\S*/debian\) .*|\2|p' | head -1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"

py_rev="$(cat "$0" | sha256sum | cut -c1-12)"
ray_rev="$( (cat "$0" images/base/ray-standin.Dockerfile; echo "$RAY_VERSION") | sha256sum | cut -c1-12)"

# debootstrap mounts /proc (and may mount /sys or bind /dev) inside the target; unmount
# whatever is still mounted there before removing it, and never cross into another file
# system while removing (a leftover bind mount of /dev must not be emptied).
cleanup_rootfs() {
  local dir="$1" m
  [[ -n "$dir" && -d "$dir" ]] || return 0
  for m in $(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
  rm -rf --one-file-system "$dir" "$dir.log"
}

label_of() { docker image inspect --format '{{ index .Config.Labels "raykube.standin.rev" }}' "$1" 2>/dev/null || true; }

images/ensure-docker.sh

# ------------------------------------------------------------ python:3.11-slim stand-in
if [[ "${FORCE:-0}" != 1 && "$(label_of "$PY_IMAGE")" == "$py_rev" ]]; then
  echo "==> $PY_IMAGE: cached (rev $py_rev)"
else
  command -v debootstrap > /dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
  rootfs="$(mktemp -d /var/tmp/raykube-rootfs.XXXXXX)"
  trap 'cleanup_rootfs "$rootfs"' EXIT
  echo "==> debootstrap $SUITE ($mirror) into $rootfs"
  start=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
    || { tail -30 "$rootfs.log" >&2; exit 1; }
  echo "    debootstrap: $((SECONDS - start)) s"

  # This machine reaches PyPI through a proxy whose CA is in the host's bundle but not in
  # Debian's. Add the host's extra CAs as local CAs (update-ca-certificates keeps them across
  # later ca-certificates updates); pip and Python's ssl in the image then trust the proxy.
  python3 - "$rootfs" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
host = pem.findall(pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_text())
debian = set(pem.findall((root / "etc/ssl/certs/ca-certificates.crt").read_text()))
extra = [c for c in host if c not in debian]
out = root / "usr/local/share/ca-certificates"
out.mkdir(parents=True, exist_ok=True)
for i, cert in enumerate(extra):
    (out / f"host-extra-{i}.crt").write_text(cert + "\n")
print(f"    host CAs not in Debian's bundle, added as local CAs: {len(extra)}")
PY
  chroot "$rootfs" update-ca-certificates > /dev/null
  # pip reads its CA bundle from here (a venv's pip would otherwise use its vendored certifi).
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
  # python:*-slim has `python` (not only python3) first on PATH in /usr/local/bin.
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  echo "==> docker import $PY_IMAGE"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL raykube.standin.rev=$py_rev raykube.standin.of=python:3.11-slim-bookworm" \
    - "$PY_IMAGE" > /dev/null
  cleanup_rootfs "$rootfs"; trap - EXIT
  ray_rev="force-$ray_rev"   # a new root filesystem: rebuild the Ray stand-in on it
fi

# ------------------------------------------------------------ rayproject/ray stand-in
if [[ "${FORCE:-0}" != 1 && "$(label_of "$RAY_IMAGE")" == "$ray_rev" ]]; then
  echo "==> $RAY_IMAGE: cached (rev $ray_rev)"
else
  echo "==> building $RAY_IMAGE (ray==$RAY_VERSION from PyPI)"
  # --network host: the build's pip reaches PyPI the way this machine does (no bridge NAT).
  DOCKER_BUILDKIT=0 docker build --network host \
    --file images/base/ray-standin.Dockerfile \
    --build-arg "PYTHON_IMAGE=$PY_IMAGE" \
    --build-arg "RAY_VERSION=$RAY_VERSION" \
    --label "raykube.standin.rev=${ray_rev#force-}" \
    --label "raykube.standin.of=rayproject/ray:${RAY_VERSION}-py311-cpu" \
    --tag "$RAY_IMAGE" images/base
fi
echo "==> stand-ins: $PY_IMAGE $RAY_IMAGE"

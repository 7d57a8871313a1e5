# The raykube operator: kopf + the Kubernetes client + raykube's spec/render/crd modules.
# No torch, no ray (the `operator` extra only). Measured on the stand-in base: 367 MB, of
# which the venv is 193 MB (126 MB of it the kubernetes client package).
#   docker build -f images/operator.Dockerfile -t raykube/raykube:dev-operator .   (or: make images)
# Runs as a non-root numeric uid and writes nothing outside /tmp, so it works with
# readOnlyRootFilesystem (k8s/base/operator.yaml mounts an emptyDir at /tmp).
# No `# syntax=` line: it would make BuildKit pull docker/dockerfile from a registry.
# PYTHON_IMAGE replaces the base where no registry is reachable (images/build.sh BASE=standin
# passes a Debian bookworm + Python 3.11 stand-in built by images/base/build-standin.sh).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- build: a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies (core + `operator` extra) from pyproject.toml alone: cached across source edits.
COPY pyproject.toml /src/pyproject.toml
RUN python -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["operator"]))' \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY README.md /src/README.md
COPY src /src/src
COPY operator /src/operator
# --no-deps: nothing beyond the operator extra gets in; pip byte-compiles here, at build
# time, so nothing is written at run time. The check fails the build if torch or ray
# slipped in.
RUN pip install --no-deps /src \
 && python -c 'import importlib.util as u, sys; bad = [m for m in ("torch", "ray", "torchvision") if u.find_spec(m)]; sys.exit(f"operator image must not contain {bad}") if bad else None' \
 && python -c 'import raykube_operator, raykube.spec'

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric uid (no entry in /etc/passwd needed): Kubernetes can verify runAsNonRoot.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["python", "-m", "raykube_operator"]
# Labels last: CREATED changes on every build, and what follows it is never cached.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="raykube-operator" \
      org.opencontainers.image.description="kopf operator turning TrainingRuns into KubeRay RayJobs and RayServices" \
      org.opencontainers.image.source="https://github.com/raykube/raykube" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"


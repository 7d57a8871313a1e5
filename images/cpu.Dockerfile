# raykube for CPU Ray pods (head, training workers, Serve replicas) — what a RayJob or
# RayService of a TrainingRun runs when scaling.gpusPerWorker is 0.
#   docker build -f images/cpu.Dockerfile -t raykube/raykube:dev-cpu .     (or: make images)
# Base: the official Ray image of the Ray version raykube pins (ray==2.60.0 in
# pyproject.toml), Python 3.11, CPU flavour. It runs as the user `ray` (uid 1000, gid 100)
# with Python first on PATH in /home/ray/anaconda3. BASE_IMAGE replaces it where no registry
# is reachable (images/base/build-standin.sh builds a stand-in with the same conventions).
# No `# syntax=` line: it would make BuildKit pull docker/dockerfile from a registry; the
# builder's built-in frontend (and the classic builder) handle every instruction used here.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG BASE_IMAGE=rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu
FROM ${BASE_IMAGE}

# PyTorch CPU wheels (no CUDA libraries: ~2 GB smaller than PyPI's default Linux wheels).
# Where download.pytorch.org is unreachable: TORCH_INDEX=https://pypi.org/simple and
# TORCH_LOCAL= (PyPI has no "+cpu" builds; its Linux wheels bring CUDA 13.0 libraries).
ARG BASE_IMAGE
ARG RAY_VERSION
ARG PYTHON_TAG
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.2
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_LOCAL=+cpu

USER 1000:100
WORKDIR /home/ray
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0

# 1) torch + torchvision, a matching pair from the torch index. Pinned exactly through a
#    constraints file, so the next step cannot swap them for other builds.
RUN printf 'torch==%s%s\ntorchvision==%s%s\n' "${TORCH_VERSION}" "${TORCH_LOCAL}" "${TORCHVISION_VERSION}" "${TORCH_LOCAL}" \
        > /tmp/constraints.txt \
 && pip install --index-url "${TORCH_INDEX}" -c /tmp/constraints.txt torch torchvision

# 2) raykube's dependencies (core + the `train` extra), read from pyproject.toml alone:
#    this layer is rebuilt only when the dependencies change, not on every source edit.
COPY --chown=1000:100 pyproject.toml /tmp/raykube/pyproject.toml
RUN python -c 'import tomllib; p = tomllib.load(open("/tmp/raykube/pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["train"]))' \
        > /tmp/requirements.txt \
 && pip install --extra-index-url "${TORCH_INDEX}" -c /tmp/constraints.txt -r /tmp/requirements.txt \
 && python -c 'import ray, torch, torchvision; assert ray.__version__ == "'"${RAY_VERSION}"'", ray.__version__; print("ray", ray.__version__, "torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__)'

# 3) raykube itself (no dependency resolution: everything is above).
COPY --chown=1000:100 README.md /tmp/raykube/README.md
COPY --chown=1000:100 src /tmp/raykube/src
COPY --chown=1000:100 operator /tmp/raykube/operator
RUN pip install --no-deps /tmp/raykube \
 && rm -rf /tmp/raykube /tmp/requirements.txt \
 && raykube --help > /dev/null

# Labels last, and their ARGs declared only here: a build ARG declared before a RUN is part
# of that RUN's cache key, and CREATED (a timestamp) would rebuild the GB-sized torch layer on
# every build.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="raykube-cpu" \
      org.opencontainers.image.description="Ray ${RAY_VERSION} + PyTorch ${TORCH_VERSION}${TORCH_LOCAL} + raykube: training, tuning and serving pods of a TrainingRun" \
      org.opencontainers.image.source="https://github.com/raykube/raykube" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# KubeRay supplies the command (ray start ...) and the RayJob entrypoint (raykube train).

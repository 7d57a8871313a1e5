# syntax=docker/dockerfile:1
# raykube for GPU Ray pods: what a TrainingRun's RayJob/RayService runs when
# scaling.gpusPerWorker > 0 (operator setting RAYKUBE_GPU_IMAGE). Also works on CPU nodes.
#   docker build -f images/cuda.Dockerfile -t raykube/raykube:dev-cuda .    (or: make images)
# Base: the official Ray image of the Ray version raykube pins (ray==2.60.0 in
# pyproject.toml), Python 3.11, CUDA 12.8 flavour (`-gpu` is only an alias that moves, so
# the CUDA version is pinned explicitly). It runs as the user `ray` (uid 1000, gid 100).
# Nodes need an NVIDIA driver recent enough for CUDA 12.8 and the NVIDIA device plugin.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG CUDA=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA}

# PyTorch wheels built for the same CUDA version as the base image.
ARG CUDA
ARG RAY_VERSION
ARG PYTHON_TAG
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.2
ARG TORCH_INDEX=https://download.pytorch.org/whl/${CUDA}
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="raykube-cuda" \
      org.opencontainers.image.description="Ray ${RAY_VERSION} + PyTorch ${TORCH_VERSION} (${CUDA}) + raykube: GPU training, tuning and serving pods of a TrainingRun" \
      org.opencontainers.image.source="https://github.com/raykube/raykube" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA}"

USER 1000:100
WORKDIR /home/ray
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0

# 1) torch + torchvision, a matching pair for this CUDA version, pinned through a
#    constraints file so the next step cannot replace them.
RUN printf 'torch==%s+%s\ntorchvision==%s+%s\n' "${TORCH_VERSION}" "${CUDA}" "${TORCHVISION_VERSION}" "${CUDA}" \
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

# KubeRay supplies the command (ray start ...) and the RayJob entrypoint (raykube train).

# raykube for GPU Ray pods: what a TrainingRun's RayJob/RayService runs when
# scaling.gpusPerWorker > 0 (operator setting RAYKUBE_GPU_IMAGE). Also works on CPU nodes.
#   docker build -f images/cuda.Dockerfile -t raykube/raykube:dev-cuda .    (or: make images)
# CUDA comes from PyTorch's PyPI wheels, not from the base image: torch==2.14.1 on PyPI is
# built for CUDA 13.0 and brings the CUDA 13.0 runtime, cuBLAS, cuDNN and NCCL as nvidia-*
# wheels. (There is no torch "+cu128" build on PyPI, and neither download.pytorch.org's
# cu128 wheels nor a rayproject/ray "-cu128" tag of Ray 2.60.0 could be verified.) So the
# base is the same Ray image as the CPU one (user `ray`, uid 1000, gid 100), and nothing
# here depends on a CUDA base tag existing. Nodes need an NVIDIA driver for CUDA 13.0
# (R580 or newer) and the NVIDIA device plugin. BASE_IMAGE replaces the base where no
# registry is reachable (images/base/build-standin.sh).
# No `# syntax=` line: it would make BuildKit pull docker/dockerfile from a registry.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG BASE_IMAGE=rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG RAY_VERSION
ARG PYTHON_TAG
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.2
# PyPI's default Linux wheels are the CUDA build; the local version is empty there.
ARG TORCH_INDEX=https://pypi.org/simple
ARG TORCH_LOCAL=
# The CUDA version torch must report (the build fails if the wheel is another build).
ARG TORCH_CUDA=13.0

USER 1000:100
WORKDIR /home/ray
# What an nvidia/cuda base would set: the NVIDIA container runtime mounts the driver's
# compute and utility (nvidia-smi, NVML) libraries; /usr/local/nvidia is where GKE-style
# installs mount the driver. NVIDIA_VISIBLE_DEVICES is left to the device plugin, so a pod
# that asked for no GPU sees none.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib \
    PATH=/home/ray/anaconda3/bin:/usr/local/nvidia/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# 1) torch + torchvision, a matching pair, pinned through a constraints file so the next
#    step cannot replace them.
RUN printf 'torch==%s%s\ntorchvision==%s%s\n' "${TORCH_VERSION}" "${TORCH_LOCAL}" "${TORCHVISION_VERSION}" "${TORCH_LOCAL}" \
        > /tmp/constraints.txt \
 && pip install --index-url "${TORCH_INDEX}" -c /tmp/constraints.txt torch torchvision \
 && python -c 'import torch; assert torch.version.cuda == "'"${TORCH_CUDA}"'", ("torch is built for CUDA", torch.version.cuda); print("torch", torch.__version__, "cuda", torch.version.cuda)'

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
# of that RUN's cache key, and CREATED (a timestamp) would rebuild the GB-sized torch layer.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="raykube-cuda" \
      org.opencontainers.image.description="Ray ${RAY_VERSION} + PyTorch ${TORCH_VERSION} (CUDA ${TORCH_CUDA}) + raykube: GPU training, tuning and serving pods of a TrainingRun" \
      org.opencontainers.image.source="https://github.com/raykube/raykube" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# KubeRay supplies the command (ray start ...) and the RayJob entrypoint (raykube train).

# A local stand-in for rayproject/ray:<RAY_VERSION>-py311-cpu, for machines that cannot pull
# from an image registry. Built by images/base/build-standin.sh on top of a Debian bookworm
# root filesystem (Python 3.11). It reproduces what raykube's images rely on in the real base:
#   - user `ray`, uid 1000, gid 100 (users), home /home/ray, passwordless sudo, login shell bash;
#   - Python first on PATH at /home/ray/anaconda3/bin (here a venv, not Anaconda), owned by
#     `ray`, so `pip install` as uid 1000 works exactly as in the real image;
#   - ray[default]==RAY_VERSION (ray start, dashboard, job submission: what KubeRay runs);
#   - wget (KubeRay's default exec probes call it), bash, curl, procps, sudo, tzdata;
#   - the real image's environment: TZ, LANG/LC_ALL=C.UTF-8, USER ray, WORKDIR /home/ray.
# It does not reproduce: Ubuntu (this is Debian), Anaconda/conda, the `ray[all]` extras
# beyond `default` (rllib, ...), or the real image's exact Python patch release.
ARG PYTHON_IMAGE=raykube/python-standin:3.11-bookworm
FROM ${PYTHON_IMAGE}
ARG RAY_VERSION
ARG RAY_UID=1000
ARG RAY_GID=100

ENV TZ=America/Los_Angeles \
    LC_ALL=C.UTF-8 \
    LANG=C.UTF-8 \
    PATH=/home/ray/anaconda3/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd -ms /bin/bash -d /home/ray ray --uid ${RAY_UID} --gid ${RAY_GID} \
 && usermod -aG sudo ray \
 && echo 'ray ALL=NOPASSWD: ALL' >> /etc/sudoers

USER ${RAY_UID}:${RAY_GID}
WORKDIR /home/ray
RUN test -n "${RAY_VERSION}" \
 && /usr/bin/python3 -m venv /home/ray/anaconda3 \
 && pip install --upgrade pip \
 && pip install "ray[default]==${RAY_VERSION}" \
 && python -c 'import ray, sys; print("ray", ray.__version__, "python", sys.version.split()[0])' \
 && ray --version
CMD ["/bin/bash"]

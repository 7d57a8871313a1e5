"""Invariants of images/*.Dockerfile and .dockerignore (no docker needed: static checks).

Docker is not available in CI, so the images are never built here; these tests pin down
what would silently go wrong in a build: floating base tags, root users, secrets in the
image config, torch/ray leaking into the operator image, a dependency layer that is
invalidated by every source edit, version drift between the Dockerfiles, pyproject.toml
and the operator's defaults (k8s/base/config.env).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILES = {name: IMAGES / f"{name}.Dockerfile" for name in ("cpu", "cuda", "operator")}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SECRET_NAME = re.compile(r"PASS(WORD)?|SECRET|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|AWS_", re.I)


# --------------------------------------------------------------------------- parsing
@dataclass
class Stage:
    base: str  # the FROM image, ARGs resolved
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTR, args)
    args: dict[str, str] = field(default_factory=dict)  # ARG values visible in the stage


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all(self, instr: str) -> list[str]:
        return [a for s in self.stages for i, a in s.instructions if i == instr]


def _logical_lines(text: str) -> list[str]:
    """Instructions with continuations joined and comments dropped (heredocs unused)."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        out.append(cur.strip())
        cur = ""
    assert not cur, "dangling line continuation"
    return out


def _subst(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
                  value)


def _arg(spec: str) -> tuple[str, str | None]:
    name, _, default = spec.partition("=")
    return name.strip(), (default.strip().strip('"') if "=" in spec else None)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            parts = rest.split()
            image = _subst(parts[0], global_args)
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=image, alias=alias))
            continue
        if instr == "ARG":
            name, default = _arg(rest)
            if not stages:
                # A global ARG's default may use the ARGs declared before it.
                global_args[name] = _subst(default or "", global_args)
            else:
                # ARG without a value inside a stage re-imports the global default.
                value = default if default is not None else global_args.get(name, "")
                stages[-1].args[name] = _subst(value, stages[-1].args)
        assert stages or instr == "ARG", f"{path.name}: {instr} before FROM"
        if stages:
            stages[-1].instructions.append((instr, rest))
    return Dockerfile(global_args, stages)


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, rest in stage.instructions:
        if instr == "ENV":
            for tok in shlex.split(rest):
                if "=" in tok:
                    k, _, v = tok.partition("=")
                    env[k] = v
    return env


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[str, Dockerfile]:
    return request.param, parse(DOCKERFILES[request.param])


def _ray_pin() -> str:
    for dep in PYPROJECT["project"]["optional-dependencies"]["train"]:
        req = Requirement(dep)
        if req.name == "ray":
            (spec,) = list(req.specifier)
            assert spec.operator == "==", "ray must be pinned exactly (it must match the image)"
            return spec.version
    raise AssertionError("ray is not in the train extra")


def _config_env() -> dict[str, str]:
    out = {}
    for line in (REPO / "k8s" / "base" / "config.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------------- every image
def test_every_image_has_a_dockerfile_and_the_build_script_builds_all_with_one_tag():
    for path in DOCKERFILES.values():
        assert path.exists(), path
    script = (IMAGES / "build.sh").read_text()
    assert "set -euo pipefail" in script
    assert re.search(r'IMAGES="\$\{IMAGES:-cpu cuda operator\}"', script)
    assert '"$REGISTRY/raykube:$TAG-$image"' in script
    assert '--file "images/$image.Dockerfile"' in script


def test_bases_are_pinned(dockerfile):
    name, df = dockerfile
    aliases = {s.alias for s in df.stages if s.alias}
    for stage in df.stages:
        image = stage.base
        assert "$" not in image, f"{name}: unresolved ARG in FROM {image}"
        if image in aliases:
            continue
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], \
            f"{name}: FROM {image} has no tag (that is :latest)"
        tag = image.rsplit(":", 1)[-1]
        assert "latest" not in tag and "nightly" not in tag, f"{name}: floating tag {image}"
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{name}: tag {tag!r} is not a full version"


def test_runs_as_a_numeric_non_root_user(dockerfile):
    name, df = dockerfile
    users = [a for i, a in df.final.instructions if i == "USER"]
    assert users, f"{name}: no USER in the final stage (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, \
        f"{name}: USER {users[-1]!r} must be a numeric non-root uid (runAsNonRoot can verify it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after the USER switches back to root.
    last_user = max(i for i, (instr, _) in enumerate(df.final.instructions) if instr == "USER")
    assert all(instr != "USER" for instr, _ in df.final.instructions[last_user + 1:])


def test_no_secrets_in_the_image_config(dockerfile):
    name, df = dockerfile
    for stage in df.stages:
        for var in [*_env(stage), *stage.args, *df.global_args]:
            assert not SECRET_NAME.search(var), f"{name}: {var} looks like a secret"
    text = DOCKERFILES[name].read_text()
    for bad in ("id_rsa", ".aws", ".env", "kubeconfig", ".kube/config", "--mount=type=secret"):
        assert bad not in text, f"{name}: mentions {bad}"


def test_oci_labels(dockerfile):
    name, df = dockerfile
    labels = " ".join(a for i, a in df.final.instructions if i == "LABEL")
    for key in ("title", "description", "source", "licenses", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels, f"{name}: no OCI label {key}"


def test_dependency_layer_is_cached_before_the_source(dockerfile):
    """pyproject.toml is copied and the dependencies installed before any source is copied:
    a source edit rebuilds one small layer, not the (GB-sized) dependency layer."""
    name, df = dockerfile

    def copied(args: str) -> str:  # the context path of a COPY
        return [t for t in args.split() if not t.startswith("--")][0]

    stage = next(s for s in df.stages if any(copied(a) == "src" for i, a in s.instructions if i == "COPY"))
    seq = [(i, a) for i, a in stage.instructions if i in ("COPY", "RUN")]
    idx_pyproject = next(n for n, (i, a) in enumerate(seq) if i == "COPY" and copied(a) == "pyproject.toml")
    idx_src = next(n for n, (i, a) in enumerate(seq) if i == "COPY" and copied(a) == "src")
    deps = [n for n, (i, a) in enumerate(seq)
            if i == "RUN" and "pip install" in a and "-r /tmp/requirements.txt" in a]
    assert deps and idx_pyproject < deps[0] < idx_src, f"{name}: {seq}"
    assert all(copied(a) == "pyproject.toml" for i, a in seq[:deps[0]] if i == "COPY"), \
        f"{name}: only pyproject.toml may be copied before the dependency layer"
    final_install = [a for i, a in seq[idx_src:] if i == "RUN" and "pip install" in a]
    assert final_install and all("--no-deps" in a for a in final_install), \
        f"{name}: the package itself must be installed with --no-deps"


def _extras_read(df: Dockerfile) -> set[str]:
    runs = " ".join(df.all("RUN"))
    return set(re.findall(r'\["optional-dependencies"\]\["(\w+)"\]', runs))


# ---------------------------------------------------------------------- Ray images
@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_ray_images_match_the_pinned_ray_and_torch(name):
    df = parse(DOCKERFILES[name])
    ray = _ray_pin()
    base = df.stages[0].base
    assert base.startswith(f"rayproject/ray:{ray}-py311-"), f"{name}: {base} is not Ray {ray}"
    assert _config_env()["RAYKUBE_RAY_VERSION"] == ray
    assert _extras_read(df) == {"train"}
    args = df.final.args
    torch_spec = {Requirement(d).name: Requirement(d).specifier
                  for d in PYPROJECT["project"]["optional-dependencies"]["train"]}
    assert args["TORCH_VERSION"] in torch_spec["torch"], (args["TORCH_VERSION"], torch_spec["torch"])
    assert args["TORCHVISION_VERSION"] in torch_spec["torchvision"]
    # torch and torchvision are a matching pair: torchvision 0.(N+15) goes with torch 2.N.
    tmajor, tminor = map(int, args["TORCH_VERSION"].split(".")[:2])
    vminor = int(args["TORCHVISION_VERSION"].split(".")[1])
    assert (tmajor, vminor) == (2, tminor + 15), (args["TORCH_VERSION"], args["TORCHVISION_VERSION"])
    runs = " ".join(df.all("RUN"))
    assert "-c /tmp/constraints.txt" in runs  # the pair cannot be replaced by the deps layer
    assert '"${TORCH_VERSION}" "${TORCH_LOCAL}"' in runs  # the pin carries the index's local version
    # Both Ray images start from the same official CPU Ray image: the CUDA image takes its
    # CUDA libraries from PyTorch's PyPI wheels (nvidia-* packages), so it depends on no
    # CUDA base tag (none of Ray 2.60.0's could be verified; torch 2.14.1 on PyPI is CUDA 13.0).
    assert base == f"rayproject/ray:{ray}-py311-cpu", base
    if name == "cpu":
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
        assert args["TORCH_LOCAL"] == "+cpu"
    else:
        assert args["TORCH_INDEX"] == "https://pypi.org/simple"
        assert args["TORCH_LOCAL"] == "", "PyPI has no local-version (+cuNNN) torch builds"
        assert re.fullmatch(r"\d+\.\d+", args["TORCH_CUDA"]), args["TORCH_CUDA"]
        assert 'torch.version.cuda == "\'"${TORCH_CUDA}"\'"' in runs, \
            "the build must fail when torch is not the expected CUDA build"
        env = _env(df.final)
        assert "NVIDIA_VISIBLE_DEVICES" not in env, "the device plugin sets it (else: every GPU)"
        assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == {"compute", "utility"}
        assert env["PATH"].startswith("/home/ray/anaconda3/bin:"), "the Ray image's Python first"


def test_ray_images_run_as_the_ray_images_user():
    for name in ("cpu", "cuda"):
        df = parse(DOCKERFILES[name])
        assert [a for i, a in df.final.instructions if i == "USER"] == ["1000:100"]
        for instr, rest in df.final.instructions:
            if instr == "COPY":
                assert "--chown=1000:100" in rest, f"{name}: COPY {rest} is owned by root"


def test_base_images_are_build_arguments_so_a_local_stand_in_can_replace_them(dockerfile):
    """Where no registry is reachable, images/build.sh BASE=standin passes local bases; the
    defaults stay the official images (checked above)."""
    name, df = dockerfile
    arg = "PYTHON_IMAGE" if name == "operator" else "BASE_IMAGE"
    raw_froms = [line.split()[1] for line in _logical_lines(DOCKERFILES[name].read_text())
                 if line.upper().startswith("FROM ")]
    external = [f for f in raw_froms if f not in {s.alias for s in df.stages if s.alias}]
    assert external and all(f == "${" + arg + "}" for f in external), (name, raw_froms)
    script = (IMAGES / "build.sh").read_text()
    assert f'--build-arg "{arg}=' in script
    assert "--network host" in script  # pip in the build reaches the index like the host


def test_no_syntax_directive_that_would_pull_a_frontend_image(dockerfile):
    name, _ = dockerfile
    first = DOCKERFILES[name].read_text().lstrip().splitlines()[0].replace(" ", "").lower()
    assert not first.startswith("#syntax="), f"{name}: BuildKit would pull the frontend image"


def test_build_metadata_args_do_not_invalidate_the_dependency_layers(dockerfile):
    """A build ARG declared before a RUN is part of its cache key: CREATED (a timestamp)
    declared before the torch layer reinstalls GBs on every build."""
    name, df = dockerfile
    for stage in df.stages:
        seq = [(i, a.split("=")[0].strip()) for i, a in stage.instructions]
        runs = [n for n, (i, _) in enumerate(seq) if i == "RUN"]
        for meta in ("VERSION", "REVISION", "CREATED"):
            declared = [n for n, (i, a) in enumerate(seq) if i == "ARG" and a == meta]
            assert not declared or not runs or declared[0] > runs[-1], \
                f"{name}: ARG {meta} is declared before a RUN"


def test_the_ray_stand_in_reproduces_what_the_ray_images_rely_on():
    standin = parse(IMAGES / "base" / "ray-standin.Dockerfile")
    st = standin.final
    env = _env(st)
    assert env["PATH"].startswith("/home/ray/anaconda3/bin:")
    assert [a for i, a in st.instructions if i == "WORKDIR"] == ["/home/ray"]
    users = [a for i, a in st.instructions if i == "USER"]
    assert _subst(users[-1], st.args) == "1000:100"  # what cpu/cuda.Dockerfile switch to
    runs = " ".join(a for i, a in st.instructions if i == "RUN")
    assert "useradd -ms /bin/bash -d /home/ray ray --uid ${RAY_UID} --gid ${RAY_GID}" in runs
    assert (st.args["RAY_UID"], st.args["RAY_GID"]) == ("1000", "100")
    assert "venv /home/ray/anaconda3" in runs and 'ray[default]==${RAY_VERSION}' in runs
    script = (IMAGES / "base" / "build-standin.sh").read_text()
    # the Ray version comes from pyproject.toml's pin, the tag from it
    assert "pyproject.toml" in script and "ray-standin:${RAY_VERSION}-py311-cpu" in script
    packages = re.search(r"^PACKAGES=(\S+)", script, re.M).group(1).split(",")
    # wget: KubeRay's default exec probes; python3-venv: both stand-ins build venvs
    assert {"python3", "python3-venv", "ca-certificates", "wget", "sudo"} <= set(packages)


# ------------------------------------------------------------------- operator image
def test_operator_image_installs_no_torch_and_no_ray():
    df = parse(DOCKERFILES["operator"])
    extras = _extras_read(df)
    assert extras == {"operator"}, extras
    # What that installs, resolved from pyproject.toml itself: a core or operator
    # dependency pulling in torch/ray would break the "small operator image" promise.
    reqs = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["operator"]
    names = {Requirement(r).name.lower() for r in reqs}
    assert not names & {"torch", "torchvision", "ray", "raykube"}, names
    assert "kopf" in names and "kubernetes" in names
    for run in df.all("RUN"):
        if "pip install" in run:
            assert not re.search(r"\b(torch|ray)\b(?!\W*\))", run.split("python -c")[0]), run
    # And the build refuses an image that has them anyway.
    assert any('("torch", "ray", "torchvision")' in r for r in df.all("RUN"))


def test_operator_image_works_with_a_read_only_root_filesystem():
    df = parse(DOCKERFILES["operator"])
    env = _env(df.final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME") == "/tmp"  # the only writable path (an emptyDir in the pod)
    assert not [a for i, a in df.final.instructions if i == "VOLUME"]
    assert [a for i, a in df.final.instructions if i == "ENTRYPOINT"] == \
        ['["python", "-m", "raykube_operator"]']
    # Dependencies are installed in the build stage only; the runtime stage copies them.
    assert not [a for i, a in df.final.instructions if i == "RUN"]
    assert df.stages[0].base.startswith("python:3.11.") and df.stages[0].base.endswith("-slim-bookworm")


def test_operator_image_python_admits_the_project():
    df = parse(DOCKERFILES["operator"])
    version = re.match(r"python:(\d+\.\d+\.\d+)", df.stages[-1].base).group(1)
    assert version in SpecifierSet(PYPROJECT["project"]["requires-python"])


# ---------------------------------------------------------------------- .dockerignore
def _ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's semantics: the last matching rule wins; a rule on a directory covers its
    contents; ``**`` matches any number of directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, pattern in rules:
        rx = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(rx, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_to_the_sources():
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
    for path in (".venv/bin/python", "runs/quickstart/result.json", "bench-out/x.png", ".git/config",
                 "build/kind-storage/default/ckpt/checkpoint.pt", "tests/conftest.py",
                 "src/raykube/__pycache__/spec.cpython-311.pyc", ".env", "datasets/cifar10/data"):
        assert _ignored(path, rules), f"{path} would be sent to the docker build"
    for path in ("pyproject.toml", "README.md", "src/raykube/spec.py",
                 "operator/raykube_operator/__init__.py"):
        assert not _ignored(path, rules), f"{path} is needed by the images but ignored"
    # Everything a Dockerfile COPYs from the context is in it.
    for name, path in DOCKERFILES.items():
        for instr, rest in parse(path).final.instructions + parse(path).stages[0].instructions:
            if instr == "COPY" and "--from" not in rest:
                src = [t for t in rest.split() if not t.startswith("--")][0]
                assert not _ignored(src, rules), f"{name}: COPY {src} is excluded by .dockerignore"

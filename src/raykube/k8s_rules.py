"""Kubernetes' own rules for the pod fields a TrainingRun passes through to its pods.

The API server accepts a RayJob whose pod template holds a toleration, node selector or
image that it would refuse on a Pod (KubeRay's CRD types those fields but does not
validate them), so the mistake would only surface as KubeRay failing to create pods,
with the TrainingRun stuck. These checks refuse such a spec up front, naming the field,
with the messages Kubernetes uses (``apimachinery/pkg/util/validation``,
``pkg/apis/core/validation.ValidateTolerations``, distribution's image reference).
Pure functions: each returns the problems, empty when valid.
"""

from __future__ import annotations

import re

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_NAME}$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# distribution/reference's grammar (docker.io/library/ray:2.60.0, localhost:5000/x@sha256:...)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
IMAGE_PATTERN = (rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
                 r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                 r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$")
_IMAGE_RE = re.compile(IMAGE_PATTERN)


def label_key_problems(key: str) -> list[str]:
    """A label key: an optional DNS-subdomain prefix and '/', then a name of <= 63."""
    prefix, _, name = key.rpartition("/")
    problems = []
    if "/" in key and not prefix:
        problems.append("prefix part must be non-empty")
    elif prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        problems.append(f"prefix {prefix!r} must be a lowercase DNS subdomain "
                        "(e.g. example.com)")
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _NAME_RE.match(name):
        problems.append("name part must consist of alphanumeric characters, '-', '_' or '.', "
                        "and must start and end with an alphanumeric character")
    return problems


def label_value_problems(value: str) -> list[str]:
    """A label value: empty, or a name of <= 63 characters."""
    if value == "":
        return []
    if len(value) > 63:
        return ["must be no more than 63 characters"]
    if not _NAME_RE.match(value):
        return ["must consist of alphanumeric characters, '-', '_' or '.', and must start "
                "and end with an alphanumeric character"]
    return []


def toleration_problems(key: str | None, operator: str | None, value: str | None,
                        effect: str | None, toleration_seconds: int | None) -> list[tuple[str, str]]:
    """(field, problem) pairs, as ``ValidateTolerations`` reports them for a Pod."""
    out: list[tuple[str, str]] = []
    if key:
        out += [("key", p) for p in label_key_problems(key)]
    elif operator != "Exists":
        out.append(("operator", "must be Exists when key is empty (a toleration of every "
                                "taint)"))
    if toleration_seconds is not None and effect != "NoExecute":
        out.append(("effect", "must be NoExecute when tolerationSeconds is set"))
    if operator == "Exists" and value:
        out.append(("value", "must be empty when operator is Exists"))
    elif operator != "Exists" and value is not None:
        out += [("value", p) for p in label_value_problems(value)]
    return out


def image_problem(image: str) -> str | None:
    """None for a valid image reference, else why the kubelet would refuse it."""
    if image != image.strip():
        return "must not have leading or trailing whitespace"
    if not _IMAGE_RE.match(image):
        return (f"{image!r} is not a valid image reference (e.g. "
                "registry.example.com/raykube:0.1.0; the repository is lowercase)")
    name = image.partition("@")[0]
    slash = name.rfind("/")
    if ":" in name[slash + 1:]:
        name = name[:name.rindex(":")]
    if len(name) > IMAGE_NAME_MAX:
        # the distribution reference grammar's bound ("repository name must not be more
        # than 255 characters"): the kubelet refuses it (InvalidImageName), pods never start
        return (f"the repository name is {len(name)} characters (registry and path, "
                f"without the tag); at most {IMAGE_NAME_MAX}")
    return None


IMAGE_NAME_MAX = 255


DNS_SUBDOMAIN_PATTERN = _DNS_SUBDOMAIN_RE.pattern
"""A Secret's or a PersistentVolumeClaim's name (RFC 1123 subdomain, dots allowed)."""


def object_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a Secret (or a claim): Kubernetes' message, or None."""
    if len(name) > 253:
        return "must be no more than 253 characters"
    if not _DNS_SUBDOMAIN_RE.match(name):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    return None

RESERVED_MOUNTS = ("/etc/raykube", "/proc", "/sys", "/dev")
"""Where the storage volume may not go, nor below: the spec ConfigMap's mount (a
duplicate mountPath makes the API server refuse the RayJob), and the kernel's."""
SYSTEM_DIRS = ("/bin", "/boot", "/etc", "/home", "/lib", "/lib64", "/opt", "/root", "/run",
               "/sbin", "/tmp", "/usr", "/var")
"""Directories of the image the volume would hide if mounted on them (Python, Ray's
sockets in /tmp/ray, the run's home); below them is fine (``/var/lib/raykube``)."""

IMAGE_HOME = "/home/ray"
"""The Ray images' home and working directory (rayproject/ray, images/*.Dockerfile)."""
IMAGE_PYTHON = f"{IMAGE_HOME}/anaconda3"
"""Where those images keep Python, Ray, torch and raykube: hidden by a volume on it, on
anything below it, or on the home above it, and no pod of the run could start."""


def mount_path_problem(path: str) -> str | None:
    """None for a storage ``mountPath`` the pods can use, else why not. Kubernetes
    itself refuses ``:`` and a duplicate of another mount (only when KubeRay creates the
    pods); the rest would start pods whose image or Ray no longer works."""
    if ":" in path:
        return "must not contain ':' (Kubernetes refuses it)"
    parts = path.split("/")[1:]
    if path == "/" or not all(parts):
        return ("must be the absolute path of a directory other than /, with no empty parts or "
                f"trailing '/' (got {path!r})")
    if any(p in (".", "..") for p in parts):
        return f"must not contain '.' or '..' parts (got {path!r})"
    for reserved in RESERVED_MOUNTS:
        if path == reserved or path.startswith(reserved + "/"):
            why = ("the run's spec is mounted there" if reserved == "/etc/raykube"
                   else "the kernel's file system is there")
            return f"{path} is reserved ({why}); use e.g. /mnt/raykube"
    if path in SYSTEM_DIRS:
        return f"would hide the image's {path}; use a directory of its own, e.g. /mnt/raykube"
    if path in (IMAGE_HOME, IMAGE_PYTHON) or path.startswith(IMAGE_PYTHON + "/"):
        return (f"would hide the image's Python ({IMAGE_PYTHON}) and no pod could start; use "
                "a directory of its own, e.g. /mnt/raykube")
    return None


QUANTITY_PATTERN = (r"^\+?([0-9]+(\.[0-9]+)?|\.[0-9]+)"
                    r"([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
"""A Kubernetes quantity as the spec accepts it (the CRD's pattern too): apimachinery's
grammar (``1e9``, ``+2Gi``, ``.5Gi`` were refused before), less a negative sign, which
no memory size can have, and a trailing point (``1.``)."""
QUANTITY_MAX_LENGTH = 64
"""Longest quantity the spec accepts (a bound the API server's CEL cost estimate needs)."""
QUANTITY_RULE = ("must be a Kubernetes quantity: a number and a unit, Ki, Mi, Gi, Ti "
                 "(powers of 1024) or k, M, G, T (of 1000), e.g. 4Gi or 512Mi")
"""What the spec's quantity fields say to a value that is not one (here and, as a CEL
rule's message, from the API server: its pattern error printed the regular expression)."""
_UNIT_TYPO = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtTpPeE])(i?)[bB]?(?:ytes?)?")


def quantity_hint(value: str) -> str:
    """``QUANTITY_RULE`` with what was given and, for the usual slips (``2GB``, ``512mb``,
    ``2 Gi``, ``2gi``), what was most likely meant."""
    m = _UNIT_TYPO.fullmatch(value.strip())
    if m is None:
        return f"{QUANTITY_RULE} (got {value!r})"
    number, unit = m[1], m[2].upper() if m[2] not in ("k", "K") else "k"
    binary = f"{number}{'K' if unit == 'k' else unit}i"
    meant = f"{binary}" + (f" or {number}{unit}" if not m[3] else "")
    return f"{QUANTITY_RULE} (got {value!r}: {meant}?)"


_MULTIPLIER = {None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9,
               "T": 1e12, "P": 1e15, "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
               "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}

MIN_RAY_POD_MEMORY = "512Mi"
"""Below this a Ray pod of ours cannot start its work: Ray refuses an object store under
75 MiB (``OBJECT_STORE_MINIMUM_MEMORY_BYTES``; the store is 30 % of the pod's memory by
default, so 250 MiB at the least), and a process importing torch peaks at 527 MiB on its
own (``import torch``, PyPI's torch 2.14.1 wheel, measured here: maximum RSS)."""


_ANY_QUANTITY_RE = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))"
                             r"([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")
"""Every quantity Kubernetes writes (apimachinery's ``resource.Quantity``), beyond what
the spec accepts: the API server and KubeRay write ``1.0000000001Gi`` back as
``1073741824107374183n``, and ``1e3`` stays itself."""

MAX_QUANTITY_BYTES = 2**63 - 1
"""The largest memory a Kubernetes quantity holds as an integer (int64): KubeRay wrote
``99999999999999999999Ei`` back as ``9223372036854775807``."""


def quantity_bytes(quantity: str) -> float | None:
    """A quantity's value ("4Gi" -> 4294967296.0, "1500m" -> 1.5, "1e3" -> 1000.0);
    None if it is not one."""
    m = _ANY_QUANTITY_RE.fullmatch(quantity)
    if m is None:
        return None
    number, suffix = m.groups()
    if suffix not in _MULTIPLIER:  # a decimal exponent: 1e3
        return float(number + suffix)
    return float(number) * _MULTIPLIER[suffix]


_MIN_RAY_POD_BYTES = quantity_bytes(MIN_RAY_POD_MEMORY) or 0.0


def milli_hint(quantity: str) -> str:
    """What a memory quantity in milli-units means, for a message that refuses it: the
    API server takes ``500m`` (half a byte), and it is nearly always a mistyped ``500Mi``
    (a probe's "500m cannot hold the model" did not say why). '' for any other."""
    m = _ANY_QUANTITY_RE.fullmatch(quantity)
    if m is None or m.group(2) != "m":
        return ""
    unit = "mebibyte" if m.group(1) == "1" else "mebibytes"
    return f" ('m' is thousandths of a byte: {m.group(1)}Mi is {m.group(1)} {unit})"


def ray_pod_memory_problem(quantity: str) -> str | None:
    """None when a Ray pod of ``quantity`` memory can run, else why not."""
    have = quantity_bytes(quantity)
    if have is not None and have > MAX_QUANTITY_BYTES:
        return (f"{quantity} is more memory than Kubernetes can hold (under 8Ei, "
                "int64 bytes); no node has it")
    if have is not None and have < _MIN_RAY_POD_BYTES:
        return (f"{quantity}{milli_hint(quantity)} is too little for a Ray pod: at least "
                f"{MIN_RAY_POD_MEMORY} "
                "(Ray's object store alone needs 75 MiB, 30 % of the pod's memory, and "
                "importing torch takes ~530 MiB)")
    return None

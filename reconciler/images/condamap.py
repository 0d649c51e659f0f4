"""Conda dependencies as pip requirements, for the offline wheelhouse of an environment image.

Pure: strings in, strings out. Our environment images install everything with pip from
wheels downloaded on the host, so the conda part of an Azure ML conda file has to be said
in pip's terms. Most conda packages of Python libraries carry their PyPI name; the few that
differ are in PIP_NAMES. Conda packages of native libraries and toolchains (cudatoolkit,
mkl, libgcc, ...) have no pip equivalent: rather than dropping them silently, which would
build an image that fails at run time, mapping stops with every such package named.

Version specs follow conda's match-spec rules: `numpy=1.26` is fuzzy (`1.26.*`), `==` is
exact, `numpy=1.26.4=py311h_0` pins a version and a build (pip gets the version),
`>=`, `<`, `!=`, `~=` and comma-joined bounds mean the same in pip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Handled outside pip's requirements: the image brings python, the venv brings pip.
DROPPED = frozenset(
    {
        "python",
        "pip",
        "setuptools",
        "wheel",
        # Conda metapackages that only select builds of other packages.
        "cpuonly",
        "nomkl",
    }
)

# Conda name -> PyPI name, where they differ.
PIP_NAMES = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-xgboost": "xgboost",
    "py-xgboost-cpu": "xgboost",
    "py-lightgbm": "lightgbm",
    "py-opencv": "opencv-python",
    "opencv": "opencv-python",
    "matplotlib-base": "matplotlib",
    "numpy-base": "numpy",
    "pytables": "tables",
    "msgpack-python": "msgpack",
    "ruamel_yaml": "ruamel.yaml",
    "python-graphviz": "graphviz",
    "python-kubernetes": "kubernetes",
    "python-flatbuffers": "flatbuffers",
    "python-xxhash": "xxhash",
    "python-lmdb": "lmdb",
    "python-duckdb": "duckdb",
    "pyqt": "PyQt5",
    "tensorflow-base": "tensorflow",
    "huggingface_hub": "huggingface-hub",
    "typing_extensions": "typing-extensions",
}

# Native libraries, compilers and tools packaged by conda with no pip counterpart.
NATIVE = frozenset(
    {
        "cudatoolkit",
        "cudnn",
        "cutensor",
        "nccl",
        "magma",
        "magma-cuda",
        "pytorch-cuda",
        "mkl",
        "mkl-include",
        "mkl-devel",
        "arrow-cpp",
        "intel-openmp",
        "llvm-openmp",
        "openmp",
        "tbb",
        "openblas",
        "blas",
        "openssl",
        "ca-certificates",
        "ncurses",
        "readline",
        "sqlite",
        "tk",
        "xz",
        "zlib",
        "bzip2",
        "zstd",
        "lz4-c",
        "icu",
        "krb5",
        "expat",
        "pcre",
        "pcre2",
        "jpeg",
        "freetype",
        "fontconfig",
        "cairo",
        "pango",
        "graphviz",
        "ffmpeg",
        "hdf5",
        "gcc",
        "gxx",
        "gfortran",
        "gcc_linux-64",
        "gxx_linux-64",
        "gfortran_linux-64",
        "binutils",
        "make",
        "git",
        "nodejs",
        "r-base",
        "ld_impl_linux-64",
        "sysroot_linux-64",
        "kernel-headers_linux-64",
        "openjdk",
    }
)

# Python packages whose conda name happens to start with "lib" (most such are C libraries).
LIB_PYTHON_PACKAGES = frozenset({"librosa", "libcst", "libpysal", "libtmux", "libsass"})

# `channel::name`, `channel/subdir::name`.
_CHANNEL = re.compile(r"^[^\s:]+::")
# name, then an optional version and build, in either `name=ver=build` or `name ver build`
# form, or with operators attached: `name>=1.3,<2`.
_NAME = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.+-]*)")
_BRACKET = re.compile(r"\[(.*)\]\s*$")
_BRACKET_FIELD = re.compile(r"""(\w+)\s*=\s*(?:'([^']*)'|"([^"]*)"|([^,\]]*))""")
_OPERATOR = re.compile(r"^(==|!=|>=|<=|~=|>|<)")


class CondaMappingError(ValueError):
    """Conda dependencies that cannot be said in pip's terms; `problems` names each."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        self.packages = tuple(dependency for dependency, _ in self.problems)
        detail = "; ".join(f"{dependency} ({reason})" for dependency, reason in self.problems)
        super().__init__(
            f"no pip equivalent for conda dependencies: {detail}. Our environment images "
            "install packages with pip only: remove these from the conda file, or build the "
            "environment from a Docker build context or an image that has them"
        )


@dataclass(frozen=True, slots=True)
class _Parsed:
    name: str
    version: str  # conda version spec as written, "" for any
    build: str  # build string, "" for any


def conda_to_pip(dependencies: Iterable[str]) -> tuple[str, ...]:
    """pip requirement strings for conda dependency strings, in the same order.

    Raises CondaMappingError naming every dependency that has no pip form, not just the
    first, so one edit of the conda file can fix them all.
    """
    requirements: list[str] = []
    problems: list[tuple[str, str]] = []
    for dependency in dependencies:
        text = dependency.strip()
        if not text:
            continue
        try:
            requirement = _map_one(text)
        except _Unmappable as err:
            problems.append((text, str(err)))
            continue
        if requirement is not None:
            requirements.append(requirement)
    if problems:
        raise CondaMappingError(problems)
    return tuple(requirements)


def pip_name(conda_name: str) -> str | None:
    """The PyPI name of a conda package; None when it is dropped (python, pip, ...).

    Raises _Unmappable (a ValueError) for a native package.
    """
    name = conda_name.lower()
    if name in DROPPED:
        return None
    if name in PIP_NAMES:
        return PIP_NAMES[name]
    if _is_native(name):
        raise _Unmappable("a native package, not a Python one")
    return name


class _Unmappable(ValueError):
    pass


def _is_native(name: str) -> bool:
    if name in NATIVE or name.startswith("_"):  # _libgcc_mutex, _openmp_mutex
        return True
    if name.startswith(("cuda-", "nvidia-", "r-")):  # CUDA toolkit parts, R packages
        return True
    return name.startswith("lib") and name not in LIB_PYTHON_PACKAGES and name not in PIP_NAMES


def _map_one(text: str) -> str | None:
    parsed = _parse(text)
    name = pip_name(parsed.name)
    if name is None:
        return None
    return name + _pip_version(parsed)


def _parse(text: str) -> _Parsed:
    text = _CHANNEL.sub("", text)
    version = build = ""
    bracket = _BRACKET.search(text)
    if bracket:
        for key, quoted1, quoted2, bare in _BRACKET_FIELD.findall(bracket.group(1)):
            value = (quoted1 or quoted2 or bare).strip()
            if key == "version":
                version = value
            elif key == "build":
                build = value
        text = text[: bracket.start()].strip()
    match = _NAME.match(text)
    if match is None:
        raise _Unmappable("not a conda package name")
    name = match.group(1)
    rest = text[match.end() :].strip()
    if rest.startswith("=") and not rest.startswith("=="):
        # name=version[=build]
        version_part, _, build_part = rest[1:].partition("=")
        version = version or _fuzzy(version_part.strip())
        build = build or build_part.strip()
        if build_part:
            # A pinned build pins the version exactly.
            version = "==" + version_part.strip()
    elif rest:
        # name version [build] (match-spec form), or operators: name>=1.3,<2
        words = rest.split()
        if _OPERATOR.match(words[0]):
            version = version or "".join(words)
        else:
            version = version or _fuzzy(words[0])
            if len(words) > 1:
                build = build or words[1]
                version = "==" + words[0]
    return _Parsed(name=name, version=version, build=build)


def _fuzzy(version: str) -> str:
    # conda's bare or `=` version means "starts with": 1.26 matches 1.26.0 and 1.26.4.
    if version in ("", "*"):
        return ""
    if _OPERATOR.match(version):
        return version
    return "==" + version.rstrip(".*").rstrip("*") + ".*"


def _pip_version(parsed: _Parsed) -> str:
    spec = parsed.version.replace(" ", "")
    if not spec or spec == "*":
        return ""
    if "|" in spec:
        raise _Unmappable(f"version spec {spec!r} uses conda's 'or', which pip has no form for")
    clauses = []
    for clause in spec.split(","):
        if not clause:
            continue
        if not _OPERATOR.match(clause):
            clause = _fuzzy(clause)
        clauses.append(clause)
    return ",".join(clauses)

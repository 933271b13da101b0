"""Binder builds a CPU environment with d2nb and detectron2 from ``binder/``.

repo2docker runs ``pip install -r binder/requirements.txt`` in the repository's root, then
``binder/postBuild``. These tests check that those two files agree with ``pyproject.toml``
(the dependencies and their pins) and with ``d2nb/install/__init__.py`` (the detectron2 commit).
"""

import os
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import d2nb.install as install
from conftest import ROOT

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

BINDER = ROOT / "binder"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
THIS_REPOSITORY = {".", "-e .", "-e ./", "./"}  # requirement lines that install the repository


def requirement_lines() -> list:
    lines = []
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def binder_requirements() -> dict:
    """canonical name -> Requirement, for the named packages of binder/requirements.txt."""
    named = {}
    for line in requirement_lines():
        if line.startswith("-") and not line.startswith("-e ") or line in THIS_REPOSITORY:
            continue
        requirement = Requirement(line.removeprefix("-e ").strip())
        named[canonicalize_name(requirement.name)] = requirement
    return named


def pyproject_dependencies() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(d).name): Requirement(d) for d in project["dependencies"]}


def just_below(bound: Version):
    """A version a little under ``bound`` (81 -> 80.999999, 2.0 -> 1.999999), or None for 0."""
    release = list(bound.release)
    nonzero = [i for i, part in enumerate(release) if part]
    if not nonzero:
        return None
    release = release[: nonzero[-1] + 1]
    release[-1] -= 1
    return Version(".".join(map(str, release)) + ".999999")


def can_both_hold(first: SpecifierSet, second: SpecifierSet, name: str) -> bool:
    """True when some version satisfies both specifier sets. The candidates: the versions the
    specifiers name, one just under each upper bound, and the version installed here."""
    if not list(first) or not list(second):
        return True
    candidates = set()
    for spec in [*first, *second]:
        if spec.version.endswith(".*"):
            continue
        candidates.add(Version(spec.version))
        if spec.operator in ("<", "<=", "~="):
            candidates.add(just_below(Version(spec.version)))
    try:
        candidates.add(Version(version(name)))
    except PackageNotFoundError:
        pass
    return any(first.contains(c, prereleases=True) and second.contains(c, prereleases=True)
               for c in candidates if c is not None)


def test_binder_installs_this_repository_and_so_every_dependency_with_its_pyproject_pin():
    repository_lines = [line for line in requirement_lines() if line in THIS_REPOSITORY]
    assert repository_lines, ("binder/requirements.txt must install this repository ('-e .'), "
                              "which brings every dependency of pyproject.toml with its own pin")
    # repo2docker runs pip in the repository root: '.' there is the folder holding pyproject.toml
    assert (ROOT / "pyproject.toml").is_file()


def test_packages_binder_names_are_dependencies_with_compatible_pins():
    dependencies = pyproject_dependencies()
    for name, requirement in binder_requirements().items():
        assert name in dependencies, (f"binder/requirements.txt installs {requirement}, which pyproject.toml's "
                                      "dependencies do not list: add it there, or take it out of binder")
        ours = dependencies[name]
        assert can_both_hold(requirement.specifier, ours.specifier, name), (
            f"binder/requirements.txt pins {requirement}, pyproject.toml {ours}: no version satisfies both")


def test_every_pyproject_dependency_is_present_in_binder():
    named = binder_requirements()
    installs_repository = any(line in THIS_REPOSITORY for line in requirement_lines())
    missing = [str(r) for name, r in pyproject_dependencies().items() if name not in named and not installs_repository]
    assert not missing, f"binder/requirements.txt lacks {missing}"


def test_binder_takes_torch_cpu_wheels():
    # Binder has no GPU, and the CUDA wheels (several GB) would not fit its image
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in requirement_lines() or \
        f"--index-url {TORCH_CPU_INDEX}" in requirement_lines()
    assert {"torch", "torchvision"} <= set(binder_requirements())


def test_postbuild_installs_detectron2_at_the_commit_d2nb_pins():
    script = (BINDER / "postBuild").read_text()
    assert script.startswith("#!"), "postBuild needs a shebang line"
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # d2nb.install builds detectron2 at DETECTRON2_COMMIT, with --no-build-isolation so that it
    # compiles against the CPU torch that requirements.txt installed first
    installs = [c for c in commands if "d2nb.install" in c or "detectron2" in c]
    assert installs, "binder/postBuild must install detectron2 (python -m d2nb.install)"
    for command in installs:
        if "python -m d2nb.install" not in command:
            assert install.DETECTRON2_COMMIT in command, (
                f"binder/postBuild installs detectron2 with {command!r}, not at d2nb.install.DETECTRON2_COMMIT "
                f"({install.DETECTRON2_COMMIT}); call python -m d2nb.install instead")


def test_no_binder_file_names_another_detectron2_commit():
    for path in BINDER.iterdir():
        for commit in re.findall(r"detectron2(?:\.git)?@([0-9a-f]{7,40})", path.read_text()):
            assert install.DETECTRON2_COMMIT.startswith(commit), f"{path.name} pins detectron2 at {commit}"


def test_postbuild_is_executable():
    # repo2docker runs binder/postBuild as a program
    listed = subprocess.run(["git", "ls-files", "-s", "binder/postBuild"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        assert listed.stdout.split()[0] == "100755", "git update-index --chmod=+x binder/postBuild"
    else:  # not a git checkout (a copy of the files): the file's own mode
        assert os.access(BINDER / "postBuild", os.X_OK), "chmod +x binder/postBuild"


def test_runtime_python_if_any_meets_requires_python():
    runtime = BINDER / "runtime.txt"
    if not runtime.exists():
        return  # repo2docker's default Python 3 meets requires-python >= 3.9
    wanted = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    found = re.fullmatch(r"python-(\d+\.\d+)", runtime.read_text().strip())
    assert found and Version(found.group(1)) in wanted

"""A cache of built wheels, so that a C++ extension package is compiled once per kind of machine.

detectron2 takes minutes to compile; a Colab runtime forgets it every time it restarts. Here a
package is built once with ``pip wheel --no-build-isolation --no-deps`` (against the torch that
is installed) and the wheel is kept in a folder named for everything that makes a build usable
elsewhere: the package's pinned revision, the Python tag and platform, torch's version, and
whether it was built for CUDA (which version, which GPU architectures). The next install on a
machine of the same kind is a ``pip install`` of that file.

    package = Package("detectron2", "detectron2 @ git+https://...@<commit>", "<commit>", "detectron2._C")
    installed = install_package(package)          # cache hit, or a fresh build kept for next time
    installed.how, installed.wheel, installed.install_seconds

Every install is proved by importing ``package.import_check`` in a new Python process. A
cached wheel that does not match its folder, that pip refuses, or whose import fails is moved
into ``<cache>/broken/`` with a ``why.txt`` and built again. Everything is generic over the
``Package``: the tests put a tiny extension package of their own through the same code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from d2nb import colab
from d2nb.errors import D2nbError

CACHE_DIR_VARIABLE = "D2NB_CACHE_DIR"
KEY_FILE = "key.json"  # written last: a folder without it is an interrupted build or copy
BROKEN = "broken"


@dataclass(frozen=True)
class Package:
    """What to build and how to prove the build works.

    ``source`` is anything ``pip wheel`` takes (a ``name @ git+URL@commit`` requirement, or a
    local folder, which is built from a clean copy); ``revision`` names that exact source (the
    pinned commit) and is part of the cache key; ``import_check`` is the module whose import
    shows the compiled extension loads (``detectron2._C``).
    """

    name: str
    source: str
    revision: str
    import_check: str


@dataclass(frozen=True)
class BuildTarget:
    """What a compiled wheel is only good for: this Python, this torch, these GPUs.

    ``cuda`` is None for a CPU-only build. A build is for CUDA as detectron2's setup.py decides
    it (and most torch extensions do): ``FORCE_CUDA=1``, or a CUDA GPU visible with the CUDA
    toolkit installed. ``architectures`` are then ``TORCH_CUDA_ARCH_LIST``, or the compute
    capabilities of the visible GPUs, which is what torch compiles for when it is unset.
    """

    python_tag: str
    platform: str
    torch: str
    cuda: Optional[str] = None
    architectures: str = ""

    def describe(self) -> str:
        gpu = f"CUDA {self.cuda}, architectures {self.architectures or 'torch default'}" if self.cuda else "CPU only"
        return f"{self.python_tag} {self.platform}, torch {self.torch}, {gpu}"


# Run in the Python that will build and install, which may not be this one (a virtual environment).
_TARGET_PROBE = r"""
import json, os, sys, sysconfig
import torch
from torch.utils.cpp_extension import CUDA_HOME
cuda = torch.version.cuda
if cuda and (os.environ.get("FORCE_CUDA") == "1" or (torch.cuda.is_available() and CUDA_HOME is not None)):
    visible = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    architectures = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(visible)
else:
    cuda, architectures = None, ""
tag = {"cpython": "cp"}.get(sys.implementation.name, sys.implementation.name) + "%d%d" % sys.version_info[:2]
print(json.dumps({"python_tag": tag, "platform": sysconfig.get_platform(), "torch": torch.__version__,
                  "cuda": cuda, "architectures": architectures}))
"""


def build_target(python: str = sys.executable, run: Callable = subprocess.run) -> BuildTarget:
    """The ``BuildTarget`` of ``python`` (its torch and GPUs), asked in a new process."""
    completed = run([python, "-c", _TARGET_PROBE], capture_output=True, text=True)
    if completed.returncode != 0:
        raise D2nbError(f"{python} cannot import torch, which building a torch extension needs:\n"
                        + _tail(completed.stderr, 5),
                        "install torch first (https://pytorch.org/get-started/locally/), then run this again")
    return BuildTarget(**json.loads(completed.stdout.strip().splitlines()[-1]))


def cache_key(package: Package, target: BuildTarget) -> str:
    """The cache folder's name: readable, and different for every build that is not interchangeable.

    e.g. ``detectron2-02b5c4e295e9-cp311-linux_x86_64-torch2.14.1+cu130-cpu`` or
    ``...-torch2.8.0+cu126-cuda12.6-arch75``.
    """
    if target.cuda:
        architectures = "_".join(a.replace(".", "").replace("+PTX", "ptx")
                                 for a in target.architectures.replace(",", ";").replace(" ", ";").split(";") if a)
        gpu = f"cuda{target.cuda}-arch{architectures or 'default'}"
    else:
        gpu = "cpu"
    key = f"{package.name}-{package.revision[:12]}-{target.python_tag}-{target.platform}-torch{target.torch}-{gpu}"
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in key)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "d2nb" / "wheels"


def wheel_cache_dir(cache_dir=None) -> Path:
    """Where wheels are kept: ``cache_dir`` if given, else ``$D2NB_CACHE_DIR``, else
    ``~/.cache/d2nb/wheels``. Created if missing; ``D2nbError`` when it cannot be, or when it is
    under ``/content/drive`` while Google Drive is not mounted."""
    folder = Path(cache_dir or os.environ.get(CACHE_DIR_VARIABLE) or default_cache_dir()).expanduser()
    if colab.on_drive(folder) and not (colab.DRIVE_MOUNT_POINT / "MyDrive").is_dir():
        # Creating it would write to the runtime's own disk, and block Drive's mount point.
        raise D2nbError(f"the wheel cache folder {folder} is on Google Drive, which is not mounted",
                        "in a notebook, setup_notebook(cache_dir=...) mounts it; in a shell, mount Drive "
                        "first (d2nb.colab.mount_drive() in a notebook cell)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise D2nbError(f"cannot create the wheel cache folder {folder}: {error.strerror or error}",
                        f"pass cache_dir= a folder you can write to, or set {CACHE_DIR_VARIABLE}") from error
    return folder


@dataclass
class Installed:
    """What ``install_package`` did: ``how`` is ``"cache hit"`` or ``"fresh build"``."""

    package: Package
    how: str
    wheel: Path
    install_seconds: float
    build_seconds: Optional[float] = None
    set_aside: list = field(default_factory=list)  # folders moved into broken/ on the way


def install_package(package: Package, cache_dir=None, python: str = sys.executable,
                    target: Optional[BuildTarget] = None, run: Callable = subprocess.run,
                    say: Callable = print) -> Installed:
    """Install ``package`` into ``python`` from the wheel cache, building the wheel first if the
    cache has none for this ``target`` (default: ``build_target(python)``).

    Raises ``D2nbError`` when the build fails, when pip cannot install the dependencies, or when
    even a freshly built wheel does not import.
    """
    cache = wheel_cache_dir(cache_dir)
    target = target or build_target(python, run)
    entry = cache / cache_key(package, target)
    set_aside = []
    wheel, problem = _cached_wheel(entry, package, target)
    if problem:
        set_aside.append(_set_aside(entry, problem, say))
    if wheel:
        say(f"Installing {package.name} from the wheel cache: {wheel}")
        started = time.perf_counter()
        problem = _install_and_check(wheel, package, python, run)
        if problem is None:
            return Installed(package, "cache hit", wheel, time.perf_counter() - started, set_aside=set_aside)
        set_aside.append(_set_aside(entry, problem, say))

    wheel, build_seconds = build_wheel(package, target, cache, python, run, say)
    started = time.perf_counter()
    problem = _install_and_check(wheel, package, python, run)
    if problem:
        broken = _set_aside(entry, problem, say, next_step="")
        raise D2nbError(f"{package.name} was built for {target.describe()} but the new wheel {problem} "
                        f"(it is kept in {broken})",
                        "check that torch imports and matches the CUDA toolkit (nvcc --version); "
                        f"the build log is {cache / 'logs' / (entry.name + '.log')}")
    return Installed(package, "fresh build", wheel, time.perf_counter() - started, build_seconds, set_aside)


def build_wheel(package: Package, target: BuildTarget, cache_dir=None, python: str = sys.executable,
                run: Callable = subprocess.run, say: Callable = print):
    """Build ``package`` into a wheel kept in the cache under ``cache_key(package, target)``;
    return (wheel path, seconds). ``D2nbError`` with the end of the build log when pip fails.

    The finished entry is written next to ``entry`` and renamed into place, so that an
    interrupted build leaves no half-written entry, and two kernels building at once both end
    with a whole one. A local source folder is built from a copy without its ``build/``,
    ``*.egg-info`` and compiled ``.so`` files, so that an earlier in-place build neither
    leaks into the wheel nor hides a failing compile.
    """
    entry = wheel_cache_dir(cache_dir) / cache_key(package, target)
    log = entry.parent / "logs" / f"{entry.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"Building {package.name} into a wheel for {target.describe()} (minutes; the log is {log})")
    started = time.perf_counter()
    # The compile happens on local disk (pip's own temporary folder, or the copy below), never
    # in the cache, which may be a slow Drive folder; only the finished entry is written there.
    with tempfile.TemporaryDirectory(prefix="d2nb-build-") as scratch, \
            tempfile.TemporaryDirectory(prefix=f".building-{entry.name}-", dir=entry.parent) as unfinished:
        source = package.source
        if Path(source).is_dir():
            source = str(shutil.copytree(source, Path(scratch) / "source", symlinks=True,
                                         ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so",
                                                                       ".git")))
        wheels = Path(unfinished) / "entry"
        wheels.mkdir()
        command = [python, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", str(wheels),
                   source]
        with open(log, "w") as out:
            out.write(" ".join(command) + "\n")
            out.flush()
            completed = run(command, stdout=out, stderr=subprocess.STDOUT, cwd=scratch)
        built = sorted(wheels.glob("*.whl"))
        if completed.returncode != 0 or len(built) != 1:
            raise D2nbError(f"pip could not build {package.name} from {package.source} "
                            f"(exit code {completed.returncode}); the end of {log}:\n{_tail(log.read_text(), 15)}",
                            _build_fix(log.read_text()))
        seconds = time.perf_counter() - started
        key = {"package": package.name, "revision": package.revision, **asdict(target),
               "wheel": built[0].name, "source": package.source, "build_seconds": round(seconds, 1),
               "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        (wheels / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")
        if entry.exists():  # built meanwhile by another kernel, or left over: ours is as good
            _set_aside(entry, "was replaced by a new build", say, next_step="")
        wheels.rename(entry)
    say(f"Built {built[0].name} in {seconds:.0f} s; kept in {entry}")
    return entry / built[0].name, seconds


def check_import(module: str, python: str = sys.executable, run: Callable = subprocess.run) -> Optional[str]:
    """None when ``python -c 'import <module>'`` works, else the error's last line.

    It runs in the temporary folder so that a source checkout in the working folder (a
    ``detectron2/`` folder without its compiled ``_C``) cannot stand in for the installed package.
    """
    completed = run([python, "-c", f"import {module}"], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if completed.returncode == 0:
        return None
    return _tail(completed.stderr, 1) or f"exit code {completed.returncode}"


def _cached_wheel(entry: Path, package: Package, target: BuildTarget):
    """(wheel, None) for a usable cache entry, (None, reason) for one to set aside, (None, None)
    when there is none."""
    if not entry.exists():
        return None, None
    try:
        key = json.loads((entry / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None, f"has no readable {KEY_FILE} (an interrupted build or copy)"
    expected = {"package": package.name, "revision": package.revision, **asdict(target)}
    wrong = [f"{name} {key.get(name)!r} (this machine: {value!r})" for name, value in expected.items()
             if key.get(name) != value]
    if wrong:
        return None, "does not match this machine: it was built for " + ", ".join(wrong)
    wheel = entry / str(key.get("wheel"))
    if not wheel.is_file():
        return None, f"lacks its wheel {wheel.name}"
    return wheel, None


def _install_and_check(wheel: Path, package: Package, python: str, run: Callable) -> Optional[str]:
    """Install ``wheel`` and import-check it: None when it works, else what is wrong with the
    wheel. A failure to install its dependencies is not the wheel's fault: ``D2nbError``."""
    # --force-reinstall: exactly this build, even over a same-version install that is broken;
    # --no-deps: and nothing else reinstalled. The second pip installs what it depends on.
    exact = run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
                capture_output=True, text=True)
    if exact.returncode != 0:
        return f"is refused by pip: {_tail(exact.stderr or exact.stdout, 1)}"
    dependencies = run([python, "-m", "pip", "install", str(wheel)], capture_output=True, text=True)
    if dependencies.returncode != 0:
        raise D2nbError(f"pip installed {wheel.name} but not the packages {package.name} depends on:\n"
                        + _tail(dependencies.stderr or dependencies.stdout, 5),
                        "check that this machine reaches PyPI, then run this again (the wheel is kept)")
    failed = check_import(package.import_check, python, run)
    if failed:
        return f"does not import (`import {package.import_check}`: {failed})"
    return None


def _set_aside(entry: Path, reason: str, say: Callable, next_step: str = "building a new one") -> Path:
    """Move a cache entry into ``<cache>/broken/`` with ``why.txt``; return where it went."""
    broken = entry.parent / BROKEN / f"{entry.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    broken.parent.mkdir(parents=True, exist_ok=True)
    entry.rename(broken)
    (broken / "why.txt").write_text(reason + "\n")
    say(f"The wheel cache entry {entry} {reason}; set aside in {broken}" + (f", {next_step}." if next_step else "."))
    return broken


def _build_fix(log: str) -> str:
    if "invalid command 'bdist_wheel'" in log:
        return "this Python's setuptools is too old to build wheels: pip install -U 'setuptools>=70.1,<81' wheel"
    if "No such file or directory: 'git'" in log or "Cannot find command 'git'" in log:
        return "install git (apt-get install git), or install detectron2 by hand as its INSTALL.md describes"
    return ("check that this machine reaches github.com and has a C++ compiler (g++) and torch installed, "
            "or install detectron2 by hand as its INSTALL.md describes, then run this again")


def _tail(text: str, lines: int) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])

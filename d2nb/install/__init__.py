"""Getting detectron2 onto a machine, and making a notebook kernel ready for d2nb.

detectron2 is not on PyPI; users install it from its GitHub repository. ``ensure_detectron2``
does that only when ``import detectron2`` fails (Colab, a fresh virtual environment), at the
commit pinned here, compiled against the torch that is already installed. The compiled wheel is
kept in a cache (``d2nb.install.wheels``: ``~/.cache/d2nb/wheels``, or ``cache_dir=`` /
``$D2NB_CACHE_DIR``, e.g. a Google Drive folder that outlives a Colab runtime), so the next
install on the same kind of machine takes seconds. A detectron2 that imports, however it was
installed, is never touched.

    python -m d2nb.install [--cache-dir DIR]   # from a shell
    d2nb.install.setup_notebook()              # first cell of every notebook: prints its status
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from typing import Callable, Optional

from d2nb import colab
from d2nb.errors import D2nbError
from d2nb.install.kernel import (LIBRARY_NOISE, NOISY_LOGGERS, quiet_library_warnings,  # noqa: F401
                                 show_d2nb_errors_in_one_line)
from d2nb.install.status import (ALREADY_INSTALLED, SetupStatus, describe_gpus,
                                 detectron2_version_and_location)
from d2nb.install.wheels import (CACHE_DIR_VARIABLE, Installed, Package, install_package,  # noqa: F401
                                 wheel_cache_dir)

DETECTRON2_REPOSITORY = "https://github.com/facebookresearch/detectron2"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"

# This project's own repository, written here only: pip installs d2nb from it (Colab), and the
# README's "Open in Colab" and Binder badges are built from it (tests/test_readme_links.py).
REPOSITORY_URL = "https://github.com/d2nb/d2nb"
REPOSITORY_BRANCH = "main"


def detectron2_requirement() -> str:
    """The pip requirement for the pinned detectron2 commit."""
    return f"detectron2 @ git+{DETECTRON2_REPOSITORY}.git@{DETECTRON2_COMMIT}"


def d2nb_requirement() -> str:
    """The pip requirement for d2nb from its repository (it is not on PyPI)."""
    return f"d2nb @ git+{REPOSITORY_URL}.git@{REPOSITORY_BRANCH}"


# What is built and how the build is proved: the compiled ops must load, not only the Python.
DETECTRON2 = Package(name="detectron2", source=detectron2_requirement(), revision=DETECTRON2_COMMIT,
                     import_check="detectron2._C")


def detectron2_installed() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def ensure_detectron2(cache_dir=None, run: Callable = subprocess.run, say: Callable = print) -> Optional[Installed]:
    """Install the pinned detectron2 if it cannot be imported, from the wheel cache when it
    holds a build for this machine; return what was done, or None when it was already there.

    Raises ``D2nbError`` when the build fails (most often: no network to GitHub, or no
    compiler), or when even a fresh build does not import.
    """
    if detectron2_installed():
        return None
    installed = install_package(DETECTRON2, cache_dir, run=run, say=say)
    importlib.invalidate_caches()  # this process may import it now
    return installed


def in_colab() -> bool:
    return colab.in_colab()


def setup_notebook(cache_dir=None, mount_drive: bool = False) -> SetupStatus:
    """Make a kernel ready and print its status in one block; return that status.

    detectron2 present (installed from the wheel cache or built into it if missing), known
    library noise hidden, ``D2nbError`` shown in one line, and in Colab ipywidgets 8 rendering.
    ``cache_dir`` (default ``$D2NB_CACHE_DIR``, else ``~/.cache/d2nb/wheels``) may be on Google
    Drive, e.g. ``/content/drive/MyDrive/d2nb/wheels``: Drive is then mounted when a wheel is
    needed. ``mount_drive=True`` mounts it in any case (``D2nbError`` outside Colab).
    """
    started = time.perf_counter()
    quiet_library_warnings()
    show_d2nb_errors_in_one_line()
    cache = cache_dir or os.environ.get(CACHE_DIR_VARIABLE)
    if mount_drive or (cache and colab.on_drive(cache) and colab.in_colab() and not detectron2_installed()):
        colab.mount_drive()
    installed = ensure_detectron2(cache_dir)
    if colab.in_colab():
        colab.hooks.enable_widget_manager()
    status = collect_status(installed, started)
    print(status)
    return status


def collect_status(installed: Optional[Installed], started: float) -> SetupStatus:
    """The ``SetupStatus`` after ``ensure_detectron2`` returned ``installed``."""
    version, location = detectron2_version_and_location()
    gpu, gpu_count, gpu_memory = describe_gpus()
    return SetupStatus(
        detectron2_version=version, detectron2_source=installed.how if installed else ALREADY_INSTALLED,
        detectron2_location=location, wheel=installed.wheel if installed else None,
        build_seconds=installed.build_seconds if installed else None,
        gpu=gpu, gpu_count=gpu_count, gpu_memory_gib=gpu_memory,
        in_colab=colab.in_colab(), drive_mounted=colab.drive_mounted(), seconds=time.perf_counter() - started)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--cache-dir", default=None,
                        help=f"folder of built detectron2 wheels (default: ${CACHE_DIR_VARIABLE}, "
                             f"else ~/.cache/d2nb/wheels)")
    return parser


def run(args) -> int:
    """Install detectron2 if missing and print the status block; 1 with the reason on failure."""
    started = time.perf_counter()
    try:
        installed = ensure_detectron2(args.cache_dir)
    except D2nbError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(collect_status(installed, started))
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m d2nb.install", description="install detectron2 (pinned commit, wheel cache) if it is missing"))
    return run(parser.parse_args(argv))

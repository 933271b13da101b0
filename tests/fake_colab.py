"""A stand-in Colab runtime for processes a test starts (a training command, a notebook kernel).

``install()`` replaces ``d2nb.colab.hooks`` with ``FakeColab`` and puts Colab's Drive mount
point at ``$D2NB_TEST_DRIVE`` (a folder of the test's): the process then runs d2nb's Colab
code paths, mounting Drive included, without Colab. A kernel gets it from an IPython startup
file (``ipython_startup(folder)``, then ``IPYTHONDIR=folder``), a command from ``python -c``.
"""

import os
from pathlib import Path

import d2nb.colab as colab

DRIVE_VARIABLE = "D2NB_TEST_DRIVE"
MOUNTS_LOG = "mounts.log"  # one line per mount, in the mount point: what the test reads back


class FakeColab(colab.ColabHooks):
    """In Colab, with a Drive that appears (``MyDrive``) when mounted."""

    def in_colab(self):
        return True

    def mount_drive(self, mount_point):
        (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)
        with open(Path(mount_point) / MOUNTS_LOG, "a") as log:
            log.write(f"mounted by process {os.getpid()}\n")

    def enable_widget_manager(self):
        pass


def install() -> None:
    colab.DRIVE_MOUNT_POINT = Path(os.environ[DRIVE_VARIABLE])
    colab.hooks = FakeColab()


def ipython_startup(folder: Path, tests: Path) -> Path:
    """An IPYTHONDIR whose startup file installs the fake in every kernel started with it."""
    startup = folder / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-fake-colab.py").write_text(
        f"import sys\nsys.path.insert(0, {str(tests)!r})\nimport fake_colab\nfake_colab.install()\n")
    return folder

"""Everything that only works inside Google Colab, behind one object that tests replace.

``hooks`` is the only thing in d2nb that imports ``google.colab``. A test swaps it for a fake
(``monkeypatch.setattr(d2nb.colab, "hooks", FakeColab())``) and checks what d2nb asked of Colab
without a Colab runtime.

    from d2nb import colab
    colab.mount_drive()            # Google Drive at /content/drive (Colab asks for permission once)
    colab.on_drive("/content/drive/MyDrive/d2nb/wheels")   # True: that folder needs Drive
"""

from __future__ import annotations

import sys
from pathlib import Path

from d2nb.errors import D2nbError

DRIVE_MOUNT_POINT = Path("/content/drive")
LOCAL_DATASETS = Path("/content/datasets")  # the runtime's own disk: pictures read fast, gone with the runtime


class ColabHooks:
    """The Colab calls d2nb makes, one method each."""

    def in_colab(self) -> bool:
        return "google.colab" in sys.modules  # a Colab kernel imports it at start-up

    def drive_mounted(self, mount_point: Path) -> bool:
        return (Path(mount_point) / "MyDrive").is_dir()

    def mount_drive(self, mount_point: Path) -> None:
        from google.colab import drive  # only exists in Colab

        drive.mount(str(mount_point))

    def enable_widget_manager(self) -> None:
        from google.colab import output  # only exists in Colab

        output.enable_custom_widget_manager()  # ipywidgets 8 render only with it


hooks = ColabHooks()


def in_colab() -> bool:
    return hooks.in_colab()


def on_drive(path) -> bool:
    """True when ``path`` lies under Colab's Drive mount point (``/content/drive``)."""
    return Path(path).expanduser().absolute().is_relative_to(DRIVE_MOUNT_POINT)


def mount_drive(mount_point=None) -> Path:
    """Mount Google Drive (once per runtime) at ``mount_point`` (default ``/content/drive``) and
    return ``<mount_point>/MyDrive``.

    Raises ``D2nbError`` outside Colab, where there is no Drive to mount.
    """
    mount_point = Path(mount_point or DRIVE_MOUNT_POINT)
    if not hooks.in_colab():
        raise D2nbError("Google Drive can only be mounted in Colab, and this kernel is not Colab's",
                        "leave mount_drive off outside Colab, and pass a local folder instead of /content/drive/...")
    if not hooks.drive_mounted(mount_point):
        hooks.mount_drive(mount_point)
    if not hooks.drive_mounted(mount_point):
        raise D2nbError(f"Google Drive did not appear at {mount_point}/MyDrive after mounting",
                        "run the cell again and allow access to Google Drive when Colab asks")
    return Path(mount_point) / "MyDrive"


def drive_mounted() -> bool:
    return hooks.in_colab() and hooks.drive_mounted(DRIVE_MOUNT_POINT)

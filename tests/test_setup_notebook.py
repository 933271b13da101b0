"""The first cell of every notebook: ``setup_notebook()`` installs detectron2 only when it is
missing, through the wheel cache (on Drive in Colab when asked), and prints one status block.

Colab is replaced by a fake ``d2nb.colab.hooks`` (and, for the real hooks, a fake
``google.colab`` module); a machine without detectron2 by a fake ``subprocess.run`` that answers
the torch probe and writes a wheel file where pip would. tests/test_install_cache.py builds
and installs real wheels through the same functions.
"""

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest

import d2nb.colab as colab
import d2nb.install as install
from conftest import NOTEBOOKS, ROOT
from d2nb.errors import D2nbError
from d2nb.install.status import SetupStatus

DETECTRON2_SOURCE = f"detectron2 @ git+https://github.com/facebookresearch/detectron2.git@{install.DETECTRON2_COMMIT}"
TARGET = {"python_tag": "cp311", "platform": "linux-x86_64", "torch": "2.8.0+cu126", "cuda": "12.6",
          "architectures": "7.5"}  # a Colab T4 runtime


class MachineWithoutDetectron2:
    """``subprocess.run`` for a Colab runtime before detectron2: every command is recorded."""

    def __init__(self):
        self.commands = []

    def __call__(self, command, **kwargs):
        command = [str(part) for part in command]
        self.commands.append(command)
        if command[1] == "-c" and "cpp_extension" in command[2]:  # the build-target probe
            return subprocess.CompletedProcess(command, 0, json.dumps(TARGET) + "\n", "")
        if command[1:4] == ["-m", "pip", "wheel"]:
            wheel_dir = Path(command[command.index("--wheel-dir") + 1])
            (wheel_dir / "detectron2-0.6-cp311-cp311-linux_x86_64.whl").write_bytes(b"a wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    def pip(self, subcommand):
        return [c for c in self.commands if c[1:4] == ["-m", "pip", subcommand]]


class FakeColab(colab.ColabHooks):
    """A Colab runtime: its Drive keeps what is written under MyDrive from one runtime to the next."""

    def __init__(self):
        self.calls = []
        self.mounted = False

    def in_colab(self):
        return True

    def drive_mounted(self, mount_point):
        return self.mounted

    def mount_drive(self, mount_point):
        self.calls.append(("mount", Path(mount_point)))
        (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)
        self.mounted = True

    def enable_widget_manager(self):
        self.calls.append(("widgets",))


@pytest.fixture()
def colab_runtime(monkeypatch, tmp_path):
    """A new Colab runtime without detectron2, with /content/drive under tmp_path; call again for
    the next runtime (the same Drive)."""
    monkeypatch.setattr(colab, "DRIVE_MOUNT_POINT", tmp_path / "content" / "drive")
    monkeypatch.setattr(install, "detectron2_installed", lambda: False)
    monkeypatch.delenv("D2NB_CACHE_DIR", raising=False)
    real_ensure = install.ensure_detectron2

    def new_runtime():
        hooks, machine = FakeColab(), MachineWithoutDetectron2()
        monkeypatch.setattr(colab, "hooks", hooks)
        monkeypatch.setattr(install, "ensure_detectron2", lambda cache_dir=None: real_ensure(cache_dir, run=machine))
        return hooks, machine

    return new_runtime


def test_in_colab_detectron2_is_built_once_into_a_drive_cache_then_installed_from_it(colab_runtime, capsys):
    hooks, machine = colab_runtime()
    cache = colab.DRIVE_MOUNT_POINT / "MyDrive" / "d2nb" / "wheels"

    first = install.setup_notebook(cache_dir=cache)

    assert hooks.calls == [("mount", colab.DRIVE_MOUNT_POINT), ("widgets",)]
    [build] = machine.pip("wheel")
    assert build[4:7] == ["--no-build-isolation", "--no-deps", "--wheel-dir"] and build[-1] == DETECTRON2_SOURCE
    assert first.detectron2_source == "fresh build" and first.drive_mounted and first.in_colab
    entry = cache / "detectron2-02b5c4e295e9-cp311-linux-x86_64-torch2.8.0+cu126-cuda12.6-arch75"
    assert first.wheel == entry / "detectron2-0.6-cp311-cp311-linux_x86_64.whl" and first.wheel.is_file()
    assert [sys.executable, "-c", "import detectron2._C"] in machine.commands
    printed = capsys.readouterr().out
    assert str(first) in printed and "fresh build in" in printed and "mounted at" in printed

    hooks, machine = colab_runtime()  # the runtime restarts; Drive keeps the wheel
    second = install.setup_notebook(cache_dir=cache)

    assert second.detectron2_source == "cache hit" and second.wheel == first.wheel
    assert not machine.pip("wheel") and [c[-1] for c in machine.pip("install")] == [str(first.wheel)] * 2
    assert f"from the wheel cache ({first.wheel})" in str(second)


def test_a_cache_named_by_D2NB_CACHE_DIR_on_drive_mounts_drive_too(colab_runtime, monkeypatch):
    hooks, machine = colab_runtime()
    cache = colab.DRIVE_MOUNT_POINT / "MyDrive" / "wheels"
    monkeypatch.setenv("D2NB_CACHE_DIR", str(cache))
    status = install.setup_notebook()
    assert ("mount", colab.DRIVE_MOUNT_POINT) in hooks.calls and status.wheel.parent.parent == cache


def test_a_detectron2_that_imports_is_never_touched(monkeypatch, tmp_path, capsys):
    hooks = FakeColab()
    monkeypatch.setattr(colab, "hooks", hooks)
    monkeypatch.setattr(colab, "DRIVE_MOUNT_POINT", tmp_path / "content" / "drive")

    def no_pip(command, **kwargs):
        raise AssertionError(f"ran {command} although detectron2 is installed")

    real_ensure = install.ensure_detectron2
    monkeypatch.setattr(install, "ensure_detectron2", lambda cache_dir=None: real_ensure(cache_dir, run=no_pip))
    assert install.detectron2_installed()

    status = install.setup_notebook(cache_dir=tmp_path / "cache")

    assert status.detectron2_source == "already installed" and status.wheel is None
    assert hooks.calls == [("widgets",)] and not (tmp_path / "cache").exists()
    import detectron2

    assert status.detectron2_version == detectron2.__version__
    assert Path(status.detectron2_location) == Path(detectron2.__file__).parent
    block = capsys.readouterr().out
    assert block.startswith("d2nb set-up in ") and f"detectron2  {detectron2.__version__}, already installed" in block
    assert f"  GPU         {status.gpu}\n" in block and "  Drive       not mounted\n" in block


def test_setup_notebook_in_colab_turns_on_the_widget_manager_through_google_colab(monkeypatch):
    """The real hooks, with a stand-in for Colab's ``google.colab`` module."""
    enabled = []
    fake = types.ModuleType("google.colab")
    fake.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    assert colab.in_colab() and not colab.drive_mounted()
    status = install.setup_notebook()
    assert enabled == [True] and status.in_colab and status.detectron2_source == "already installed"


def test_mounting_drive_outside_colab_says_so(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(D2nbError, match="only be mounted in Colab"):
        install.setup_notebook(mount_drive=True)


def test_the_status_block_names_where_detectron2_came_from_the_gpu_and_drive():
    status = SetupStatus(detectron2_version="0.6", detectron2_source="cache hit", detectron2_location="/x",
                         wheel=Path("/content/drive/MyDrive/w/detectron2.whl"), build_seconds=None,
                         gpu="Tesla T4, 14.7 GiB", gpu_count=1, gpu_memory_gib=14.7, in_colab=True,
                         drive_mounted=True, seconds=12.34)
    assert str(status) == ("d2nb set-up in 12.3 s\n"
                           "  detectron2  0.6, from the wheel cache (/content/drive/MyDrive/w/detectron2.whl)\n"
                           "  GPU         Tesla T4, 14.7 GiB\n"
                           f"  Drive       mounted at {colab.DRIVE_MOUNT_POINT}")


def test_python_m_d2nb_install_is_a_quick_no_op_where_detectron2_imports(tmp_path):
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "d2nb.install"], capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "D2NB_CACHE_DIR": str(tmp_path / "cache")})
    assert completed.returncode == 0, completed.stderr
    assert ", already installed (" in completed.stdout and "GPU" in completed.stdout
    assert not (tmp_path / "cache").exists() and time.perf_counter() - started < 60


def first_code_cell(path: Path) -> str:
    return next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source


def test_every_notebook_starts_with_the_same_set_up_cell():
    cells = {path.name: first_code_cell(path) for path in sorted(NOTEBOOKS.glob("*.ipynb"))}
    assert len(set(cells.values())) == 1, cells


def test_the_first_cell_prints_the_status_block_in_a_kernel(monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's d2nb
    cell = nbformat.v4.new_code_cell(first_code_cell(NOTEBOOKS / "01_inference.ipynb"))
    notebook = nbformat.v4.new_notebook(cells=[cell])
    NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = notebook.cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert not [o for o in outputs if o.get("output_type") in ("error", "execute_result")], outputs
    lines = text.splitlines()
    assert lines[0].startswith("d2nb set-up in ") and lines[1].startswith("  detectron2  ")
    assert ", already installed (" in lines[1] and lines[2].startswith("  GPU         ") and lines[3] == \
        "  Drive       not mounted (not Colab)"

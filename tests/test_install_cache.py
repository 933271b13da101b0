"""The wheel cache, with real builds: a tiny torch C++ extension that the test writes is built
with the same ``pip wheel --no-build-isolation --no-deps`` and the same cache keys as
detectron2, and installed into fresh virtual environments (``--system-site-packages``, so that
torch is this machine's). The second install is the cached wheel, with no build; an entry for
another torch is not used; a wheel that does not match or does not import is set aside and
built again.

The virtual environments are made ``--without-pip``: their ``python -m pip`` is then this
machine's pip, which installs into the environment it runs in. ensurepip would put setuptools
65 into each one, which has no ``bdist_wheel`` and would shadow the system's setuptools.
"""

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import d2nb.install.wheels as wheels
from d2nb.errors import D2nbError
from d2nb.install.wheels import Package, build_target, cache_key, install_package

TORCH_OP = """#include <torch/extension.h>
torch::Tensor twice(const torch::Tensor& x) { return x * 2; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("twice", &twice); }
"""
PLAIN_OP = """#include <Python.h>
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
"""


def write_package(folder: Path, name: str, torch_op: bool, cpp: str = None) -> Package:
    """A package with one compiled module ``<name>._C``: a torch op (``CppExtension``, as
    detectron2's ops are) or a plain setuptools ``Extension`` in C++ that compiles in a second."""
    (folder / name).mkdir(parents=True)
    init = "import torch  # _C links against torch's libraries\n" if torch_op else ""
    (folder / name / "__init__.py").write_text(init)
    (folder / name / "op.cpp").write_text(cpp or (TORCH_OP if torch_op else PLAIN_OP))
    if torch_op:
        extension = ("from torch.utils.cpp_extension import BuildExtension, CppExtension\n"
                     f"ext = CppExtension('{name}._C', ['{name}/op.cpp'])\n"
                     "cmdclass = {'build_ext': BuildExtension}\n")
    else:
        extension = f"ext = Extension('{name}._C', ['{name}/op.cpp'], language='c++')\ncmdclass = {{}}\n"
    (folder / "setup.py").write_text("from setuptools import Extension, setup\n" + extension
                                     + f"setup(name='{name}', version='0.1', packages=['{name}'], "
                                       f"ext_modules=[ext], cmdclass=cmdclass)\n")
    return Package(name=name, source=str(folder), revision="test-revision-1", import_check=f"{name}._C")


def fresh_venv(folder: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True)
    return str(folder / "bin" / "python")


class Recorder:
    """``subprocess.run`` that remembers each command."""

    def __init__(self):
        self.commands = []

    def __call__(self, command, **kwargs):
        self.commands.append([str(part) for part in command])
        return subprocess.run(command, **kwargs)

    def pip(self, subcommand):
        return [c for c in self.commands if c[1:4] == ["-m", "pip", subcommand]]


def python_says(python: str, code: str) -> str:
    completed = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/")
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout.strip()


@pytest.fixture(scope="module")
def torch_op(tmp_path_factory):
    return write_package(tmp_path_factory.mktemp("torch_op_source"), "d2nb_test_torch_op", torch_op=True)


@pytest.fixture()
def plain_op(tmp_path):
    return write_package(tmp_path / "plain_op_source", "d2nb_test_plain_op", torch_op=False)


def test_a_second_install_into_a_fresh_venv_is_the_cached_wheel_without_a_build(torch_op, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first_python, first_run = fresh_venv(tmp_path / "venv1"), Recorder()
    first = install_package(torch_op, cache, python=first_python, run=first_run)

    assert first.how == "fresh build" and first.build_seconds > 0
    [build] = first_run.pip("wheel")
    assert build[4:7] == ["--no-build-isolation", "--no-deps", "--wheel-dir"]
    entry = first.wheel.parent
    assert entry.parent == cache and entry.name == cache_key(torch_op, build_target(first_python))
    assert f"torch{torch.__version__}" in entry.name and entry.name.startswith("d2nb_test_torch_op-test-revisi")
    key = json.loads((entry / "key.json").read_text())
    assert key["torch"] == torch.__version__ and key["wheel"] == first.wheel.name
    twice = "import torch, d2nb_test_torch_op._C as c; print(c.twice(torch.ones(2)).tolist())"
    assert python_says(first_python, twice) == "[2.0, 2.0]"

    def no_build(*args, **kwargs):
        raise AssertionError("built again although the cache holds a wheel for this machine")

    monkeypatch.setattr(wheels, "build_wheel", no_build)
    second_python, second_run = fresh_venv(tmp_path / "venv2"), Recorder()
    second = install_package(torch_op, cache, python=second_python, run=second_run)

    assert second.how == "cache hit" and second.wheel == first.wheel and second.build_seconds is None
    assert not second_run.pip("wheel")
    assert [c[-1] for c in second_run.pip("install")] == [str(first.wheel)] * 2  # exactly it, then its dependencies
    assert python_says(second_python, "import d2nb_test_torch_op._C as c, d2nb_test_torch_op; print(c.__file__)") \
        .startswith(str(tmp_path / "venv2"))
    print(f"first: build {first.build_seconds:.1f} s + install {first.install_seconds:.1f} s; "
          f"second: install {second.install_seconds:.1f} s")
    assert second.install_seconds < first.build_seconds


def test_an_entry_for_another_torch_is_left_alone_and_not_used(plain_op, tmp_path):
    cache = tmp_path / "cache"
    python = fresh_venv(tmp_path / "venv")
    target = build_target(python)
    other_torch = replace(target, torch="1.13.1+cu117")
    theirs = install_package(plain_op, cache, python=python, target=other_torch)  # as another runtime left it
    assert theirs.wheel.parent.name == cache_key(plain_op, other_torch) != cache_key(plain_op, target)

    run = Recorder()
    ours = install_package(plain_op, cache, python=fresh_venv(tmp_path / "venv2"), run=run)

    assert ours.how == "fresh build" and len(run.pip("wheel")) == 1
    assert ours.wheel.parent.name == cache_key(plain_op, target)
    assert str(theirs.wheel) not in {c[-1] for c in run.commands}
    assert theirs.wheel.is_file() and not (cache / "broken").exists()


def test_an_entry_whose_key_file_names_another_torch_is_set_aside_and_rebuilt(plain_op, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = install_package(plain_op, cache, python=fresh_venv(tmp_path / "venv"))
    key_file = first.wheel.parent / "key.json"
    key_file.write_text(json.dumps({**json.loads(key_file.read_text()), "torch": "1.13.1+cu117"}))  # copied by hand

    again = install_package(plain_op, cache, python=fresh_venv(tmp_path / "venv2"))

    assert again.how == "fresh build" and again.wheel.parent == first.wheel.parent
    [broken] = (cache / "broken").iterdir()
    assert "torch '1.13.1+cu117' (this machine: " in (broken / "why.txt").read_text()
    assert f"set aside in {broken}, building a new one" in capsys.readouterr().out


def break_the_compiled_module(wheel: Path) -> None:
    """The wheel still installs, but its ``_C`` is not a shared library any more."""
    members = {}
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            members[info.filename] = b"not an ELF file" if info.filename.endswith(".so") else archive.read(info)
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_a_cached_wheel_that_does_not_import_is_set_aside_and_rebuilt(plain_op, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = install_package(plain_op, cache, python=fresh_venv(tmp_path / "venv"))
    break_the_compiled_module(first.wheel)
    python, run = fresh_venv(tmp_path / "venv2"), Recorder()

    again = install_package(plain_op, cache, python=python, run=run)

    out = capsys.readouterr().out
    assert again.how == "fresh build" and len(again.set_aside) == 1 and len(run.pip("wheel")) == 1
    why = (again.set_aside[0] / "why.txt").read_text()
    assert "does not import (`import d2nb_test_plain_op._C`" in why and "ImportError" in why
    assert f"The wheel cache entry {first.wheel.parent} does not import" in out
    assert python_says(python, "import d2nb_test_plain_op._C as c; print(c.answer())") == "42"


def test_a_fresh_build_that_does_not_import_is_an_error_and_is_not_kept(plain_op, tmp_path):
    missing = replace(plain_op, import_check="d2nb_test_plain_op._not_built")
    with pytest.raises(D2nbError, match=r"the new wheel does not import \(`import d2nb_test_plain_op._not_built`"):
        install_package(missing, tmp_path / "cache", python=fresh_venv(tmp_path / "venv"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["broken", "logs"]


def test_a_failing_build_shows_the_compiler_error_and_the_log(tmp_path):
    package = write_package(tmp_path / "source", "d2nb_test_broken_op", torch_op=False, cpp="this is not C++\n")
    with pytest.raises(D2nbError) as raised:
        install_package(package, tmp_path / "cache", python=fresh_venv(tmp_path / "venv"))
    message = str(raised.value)
    assert "pip could not build d2nb_test_broken_op" in message and "error" in message.split("log")[-1]
    log = next((tmp_path / "cache" / "logs").glob("*.log"))
    assert str(log) in message and " -m pip wheel --no-build-isolation --no-deps " in log.read_text().splitlines()[0]
    assert not list((tmp_path / "cache").glob("d2nb_test_broken_op-*")), "no entry for a failed build"


def test_a_local_source_is_built_from_a_clean_copy(plain_op, tmp_path):
    install_package(plain_op, tmp_path / "cache", python=fresh_venv(tmp_path / "venv"))
    assert sorted(p.name for p in Path(plain_op.source).iterdir()) == ["d2nb_test_plain_op", "setup.py"]


def test_the_cache_key_changes_with_each_thing_a_build_depends_on():
    package = Package("detectron2", "detectron2 @ git+https://example.invalid/d2.git@abc", "02b5c4e295e9990", "x._C")
    cpu = wheels.BuildTarget("cp311", "linux-x86_64", "2.8.0+cu126")
    gpu = replace(cpu, cuda="12.6", architectures="7.5;8.0+PTX")
    targets = (cpu, gpu, replace(cpu, torch="2.9.0+cu126"), replace(cpu, python_tag="cp312"),
               replace(gpu, architectures="9.0"), replace(gpu, cuda="12.8"))
    keys = {cache_key(package, target) for target in targets}
    keys.add(cache_key(replace(package, revision="ffffffffffff"), cpu))
    assert len(keys) == 7
    assert cache_key(package, cpu) == "detectron2-02b5c4e295e9-cp311-linux-x86_64-torch2.8.0+cu126-cpu"
    assert cache_key(package, gpu).endswith("-torch2.8.0+cu126-cuda12.6-arch75_80ptx")
    assert cache_key(package, replace(gpu, architectures="9.0a")).endswith("-cuda12.6-arch90a")  # an H200's


def test_the_cache_folder_is_the_argument_then_the_variable_then_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("D2NB_CACHE_DIR", raising=False)
    assert wheels.wheel_cache_dir() == tmp_path / "home" / ".cache" / "d2nb" / "wheels"
    monkeypatch.setenv("D2NB_CACHE_DIR", str(tmp_path / "drive"))
    assert wheels.wheel_cache_dir() == tmp_path / "drive"
    assert wheels.wheel_cache_dir(tmp_path / "given") == tmp_path / "given"
    (tmp_path / "file").write_text("")
    with pytest.raises(D2nbError, match=r"(?s)cannot create the wheel cache folder .*file/sub.*Fix: pass cache_dir="):
        wheels.wheel_cache_dir(tmp_path / "file" / "sub")


def test_a_cache_on_an_unmounted_drive_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import d2nb.colab as colab

    monkeypatch.setattr(colab, "DRIVE_MOUNT_POINT", tmp_path / "content" / "drive")
    with pytest.raises(D2nbError, match="is on Google Drive, which is not mounted"):
        wheels.wheel_cache_dir(tmp_path / "content" / "drive" / "MyDrive" / "wheels")
    assert not (tmp_path / "content").exists()

"""The README's two commands, as a newcomer runs them, in a fresh virtual environment.

The repository's files (``git ls-files``: tracked, and untracked files that are not ignored)
are copied into tmp_path; a virtual environment made with ``--system-site-packages`` sees this
machine's torch and detectron2 (building detectron2 takes longer than the test may), and
everything else the commands do happens in it: ``pip install -e .`` of the copy, papermill,
the test run. The commands are read from the README's first code block, so that this test
breaks when the README changes.

Recursion protection: the README's second command runs the test suite, which holds this
test. It runs here with ``D2NB_INNER_RUN=1`` in its environment, which makes this test and the
browser test skip themselves in that inner run, and with ``-k hygiene`` appended so that it
runs the quick notebook-hygiene tests only.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(os.environ.get("D2NB_INNER_RUN") == "1",
                                reason="inner run of test_fresh_install (recursion protection)")

TRAIN_ITERATIONS = " -p max_iter 30"  # appended to the README's first command (see below)
INNER_TESTS = " -k hygiene"           # appended to the README's second command (see above)


def readme_commands() -> list:
    """The command lines of the README's first fenced code block."""
    block = re.search(r"^```[\w-]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert block, "README.md has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def ci_command() -> str:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    assert len(commands) == 1, f".ci/run should run one command line, found {commands}"
    return commands[0]


def copy_repository(destination: Path) -> Path:
    """The files git would give a clone, plus untracked files that are not ignored."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0, f"git ls-files failed in {ROOT} (not a git checkout?):\n{listed.stderr}"
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def make_venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder)], check=True)
    return folder / "bin"


def add_console_scripts(bin_dir: Path, commands: list) -> None:
    """A fresh environment gets e.g. ``papermill`` in its bin/ when pip installs the package;
    here pip finds it already installed in the system site and writes nothing. Write the script
    as pip would, so the command runs with this environment's Python (and its d2nb)."""
    for command in commands:
        for word in re.findall(r"(?:^|&&)\s*([\w.-]+)", command):
            if (bin_dir / word).exists():
                continue
            for entry in entry_points(group="console_scripts", name=word):
                module, _, attribute = entry.value.partition(":")
                script = bin_dir / word
                script.write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom {module} import {attribute.split('.')[0]}\n"
                                  f"sys.exit({attribute}())\n")
                script.chmod(0o755)


def run(command: str, cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    completed = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=timeout)
    assert completed.returncode == 0, (f"{command!r} failed (exit {completed.returncode}):\n"
                                       f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}")
    return completed


def test_readme_commands_work_in_a_fresh_virtual_environment(tmp_path):
    install_and_train, test_suite = readme_commands()
    assert test_suite == ci_command(), "the README's second command must be what .ci/run runs"

    project = copy_repository(tmp_path / "d2nb")
    bin_dir = make_venv(tmp_path / "venv")
    add_console_scripts(bin_dir, [install_and_train, test_suite])
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME") and not key.startswith("PYTEST_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(bin_dir.parent),
               DETECTRON2_DATASETS=str(tmp_path / "datasets"))

    # The README's first command, byte for byte, with fewer iterations appended (papermill
    # takes the last -p max_iter): the full schedule takes ~5 minutes on 2 cores; 30
    # iterations exercise the same install, dataset generation, training and evaluation.
    command = install_and_train + TRAIN_ITERATIONS
    assert command[: len(install_and_train)] == install_and_train
    run(command, project, env, timeout=2400)

    imported = run("python -c 'import d2nb; print(d2nb.__file__)'", project, env, timeout=120).stdout.strip()
    assert Path(imported).resolve().is_relative_to(project.resolve()), f"d2nb came from {imported}, not the copy"
    executed = json.loads((project / "runs" / "03_train.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert (project / "runs" / "train" / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (project / "runs" / "train" / "metrics.json").read_text().splitlines()]
    assert max(row["iteration"] for row in metrics if "total_loss" in row) == 29  # trained 30 iterations
    assert any("bbox/AP" in row for row in metrics), "no evaluation after training"

    # The README's second command, as .ci/run runs it, restricted to the hygiene tests, and
    # with D2NB_INNER_RUN=1 so that this test does not run itself again (see the docstring).
    completed = run(test_suite + INNER_TESTS, project, {**env, "D2NB_INNER_RUN": "1"}, timeout=1200)
    assert re.search(r"\b\d+ passed\b", completed.stdout) and " failed" not in completed.stdout, completed.stdout[-3000:]

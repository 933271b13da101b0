"""Shared, session-scoped fixtures: real data on disk and one real training run.

The synthetic dataset is generated once into a temporary DETECTRON2_DATASETS; the training
notebook runs once under papermill on the CPU and its output folder (checkpoint, metrics,
config) is reused by every test that needs a trained model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _shared_datasets() -> Path:
    """``../shared/datasets`` beside the checkout; for a clone made elsewhere (a CI check in
    /tmp), beside the repository it was cloned from; or where D2NB_SHARED_DATASETS says."""
    candidates = [os.environ.get("D2NB_SHARED_DATASETS"), ROOT.parent / "shared" / "datasets"]
    origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared" / "datasets")
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), ROOT.parent / "shared" / "datasets")


SHARED_DATASETS = _shared_datasets()


@pytest.fixture(scope="session", autouse=True)
def datasets_root(tmp_path_factory):
    """A fresh DETECTRON2_DATASETS for the whole session (subprocesses inherit it)."""
    root = tmp_path_factory.mktemp("datasets")
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old


def run_notebook(name: str, output_notebook: Path, parameters: dict, timeout: int = 1800):
    """Run notebooks/<name> under papermill in a real kernel; return the executed notebook."""
    command = [sys.executable, "-m", "papermill", str(NOTEBOOKS / name), str(output_notebook),
               "--cwd", str(ROOT), "-k", "python3", "--no-progress-bar"]
    for key, value in parameters.items():
        command += ["-p", key, str(value)] if not isinstance(value, (list, dict)) else ["-y", json.dumps({key: value})]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, f"papermill failed:\n{completed.stderr[-4000:]}"
    return json.loads(output_notebook.read_text())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """03_train on the CPU with only gpus and output_dir set: the embedded default."""
    folder = tmp_path_factory.mktemp("trained")
    output_dir = folder / "run"
    notebook = run_notebook("03_train.ipynb", folder / "03_train.out.ipynb",
                            {"gpus": 0, "output_dir": output_dir})
    return {"output_dir": output_dir, "notebook": notebook}


def metrics_rows(output_dir: Path) -> list:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.json").read_text().splitlines()]

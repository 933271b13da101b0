"""Issue 17, the Colab day: a training run on Google Drive killed midway, then the notebook
run again with its defaults continues it.

A folder of the test's stands in for Drive (``/content/drive``) and ``tests/fake_colab.py``
for the Colab runtime, in the training process and in the notebook's kernel alike: Drive is
mounted through ``d2nb.colab``'s hooks, checkpoints are staged on the local disk, and the
datasets stay in ``$DETECTRON2_DATASETS``. The training process (``d2nb train``, the CPU recipe
on the synthetic data) saves a checkpoint every 3 seconds and is killed with SIGKILL after
the first; 03_train then runs under papermill in a real kernel, first with another base_lr
(stopped in one line naming the difference), then with the defaults (continued to max_iter).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import NOTEBOOKS, ROOT, metrics_rows
from d2nb.checkpoint import load_torch_file
from fake_colab import DRIVE_VARIABLE, MOUNTS_LOG, ipython_startup
from reliability_support import unchanged

TESTS = Path(__file__).resolve().parent
MAX_ITER = 100  # about 0.1 s a step on 2 cores: the first time-based checkpoint comes near step 25
CHECKPOINT_MINUTES = 0.05  # 3 seconds
TRAIN_COMMAND = ("import sys; sys.path.insert(0, {tests!r}); import fake_colab; fake_colab.install(); "
                 "from d2nb.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """The stand-in Drive, the output_dir on it, and the environment of a Colab process."""
    folder = tmp_path_factory.mktemp("colab")
    drive = folder / "content" / "drive"
    env = {**os.environ, DRIVE_VARIABLE: str(drive), "PYTHONPATH": str(ROOT),
           "IPYTHONDIR": str(ipython_startup(folder / "ipython", TESTS))}
    return {"folder": folder, "drive": drive, "output_dir": drive / "MyDrive" / "runs" / "shapes", "env": env}


def run_notebook(colab, name: str, parameters: dict) -> tuple:
    """03_train under papermill in a kernel of the stand-in Colab; (exit code, executed notebook)."""
    output = colab["folder"] / f"{name}.ipynb"
    command = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "03_train.ipynb"), str(output), "--cwd", str(ROOT),
               "-k", "python3", "--no-progress-bar"]
    for key, value in parameters.items():
        command += ["-p", key, str(value)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=colab["env"])
    return completed, json.loads(output.read_text())


def cell_text(cell) -> str:
    return "".join(o["text"] if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                   for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def error_outputs(notebook) -> list:
    return [(index, output) for index, cell in enumerate(notebook["cells"]) for output in cell.get("outputs", [])
            if output["output_type"] == "error"]


@pytest.fixture(scope="module")
def killed_run(colab):
    """``d2nb train`` on Drive, killed with SIGKILL once its first time-based checkpoint is named."""
    output_dir = colab["output_dir"]
    log_path = colab["folder"] / "killed_train.log"
    command = [sys.executable, "-c", TRAIN_COMMAND.format(tests=str(TESTS)), "train", "--num-gpus", "0",
               "--output-dir", str(output_dir), "--max-iter", str(MAX_ITER),
               "--checkpoint-minutes", str(CHECKPOINT_MINUTES), "--checkpoint-period", "1000"]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=colab["env"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            last = output_dir / "last_checkpoint"
            def saved() -> bool:  # last_checkpoint names it, and the line saying so is written (after it)
                if not (last.is_file() and last.read_text().endswith("_timed.pth")):
                    return False
                return f"Saved {last.read_text()} (" in log_path.read_text()

            while not saved():
                assert process.poll() is None, f"training ended before a time-based checkpoint:\n" \
                                               f"{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no time-based checkpoint in 300 s"
                time.sleep(0.1)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
    checkpoint = (output_dir / "last_checkpoint").read_text()
    return {"checkpoint": checkpoint, "iteration": load_torch_file(output_dir / checkpoint)["iteration"],
            "log": log_path.read_text()}


def test_the_killed_run_left_a_complete_time_based_checkpoint_on_drive(colab, killed_run):
    output_dir = colab["output_dir"]
    assert f"Saved {killed_run['checkpoint']} (0.05 minutes since the last checkpoint)" in killed_run["log"]
    # on a loaded machine the first step alone may take the 3 seconds: iteration 0 is a fair checkpoint too
    assert 0 <= killed_run["iteration"] < MAX_ITER - 1 and not (output_dir / "model_final.pth").exists()
    assert (colab["drive"] / MOUNTS_LOG).read_text().count("mounted") == 1  # d2nb mounted Drive, once
    # the datasets stay on the local disk: nothing of them under the output_dir on Drive
    assert not [p for p in output_dir.rglob("*") if p.suffix in (".png", ".jpg")] or \
        [p.name for p in output_dir.rglob("*.png")] == ["training_curves.png"]
    assert list(Path(os.environ["DETECTRON2_DATASETS"]).glob("d2nb_synthetic_*/train.json"))


def test_the_notebook_with_another_base_lr_names_what_differs_in_one_line(colab, killed_run):
    output_dir = colab["output_dir"]
    kept = [output_dir / name for name in ("last_checkpoint", killed_run["checkpoint"], "config.yaml")]
    with unchanged(*kept):
        completed, notebook = run_notebook(colab, "another_base_lr", {"gpus": 0, "output_dir": output_dir,
                                                                       "max_iter": MAX_ITER, "base_lr": 0.5})
    assert completed.returncode != 0
    [(index, error)] = error_outputs(notebook)
    assert "result = train(settings)" in "".join(notebook["cells"][index]["source"])
    assert len(error["traceback"]) == 1, error["traceback"]  # one line, not a traceback through d2nb
    text = error["traceback"][0]
    assert f"output_dir {str(output_dir)!r} holds a run of another config ({killed_run['checkpoint']}" in text
    assert "SOLVER.BASE_LR 0.001 -> 0.5" in text and "| Fix: for a new run, pass resume=False with a new " \
        f"output_dir (e.g. output_dir='{output_dir}_2')" in text


def test_the_notebook_run_again_with_its_defaults_continues_the_killed_run_to_max_iter(colab, killed_run):
    output_dir, start = colab["output_dir"], killed_run["iteration"] + 1
    completed, notebook = run_notebook(colab, "resumed", {"gpus": 0, "output_dir": output_dir, "max_iter": MAX_ITER})
    assert completed.returncode == 0, completed.stderr[-3000:]

    status = cell_text(notebook["cells"][1]).splitlines()  # the first cell's status block
    assert status[0].startswith("d2nb set-up in ") and status[1].startswith("  detectron2  ")
    assert status[2].startswith("  GPU         ") and status[3] == f"  Drive       mounted at {colab['drive']}"

    train_cell = next(cell_text(c) for c in notebook["cells"] if "result = train(settings)" in "".join(c["source"]))
    assert f"Resuming {output_dir} from {killed_run['checkpoint']}: iteration {start} of {MAX_ITER} " \
           "(resume='auto': the same config and dataset)" in train_cell
    assert f"Starting training from iteration {start}" in (output_dir / "log.txt").read_text()

    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1 and "model" in final
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(output_dir.glob("*_timed.pth")) and not list(output_dir.glob(".*.tmp"))
    steps = [row["iteration"] for row in metrics_rows(output_dir) if "total_loss" in row]
    assert steps == sorted(set(steps)) and steps[-1] == MAX_ITER - 1  # continued past the checkpoint, once each
    assert [s for s in steps if s >= start], steps
    assert "segm/AP" in metrics_rows(output_dir)[-1]
    assert (colab["drive"] / MOUNTS_LOG).read_text().count("mounted") == 1  # already mounted: not again

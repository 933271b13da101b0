"""Issue 8, faults survived: a kernel interrupt during training, a process killed with SIGKILL
while it writes a checkpoint, and cells (or a whole notebook) run again in the same kernel."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from PIL import Image

from conftest import ROOT
from d2nb.checkpoint import load_torch_file
from d2nb.predict import prediction_from_arrays
from d2nb.train import build_config, train
from d2nb.widgets.inference import ThresholdExplorer, UploadPanel
from reliability_support import file_hashes, tiny_settings

TESTS = Path(__file__).resolve().parent


def iterations_in(metrics_json: Path) -> list:
    import json

    return [json.loads(line)["iteration"] for line in metrics_json.read_text().splitlines()]


# --------------------------------------------------------------------------- interrupt


class SendInterrupt(HookBase):
    """After ``iteration``, sends this process SIGINT: what the notebook's stop button (the
    kernel's interrupt) does; Python raises KeyboardInterrupt wherever the loop then is."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_kernel_interrupt_saves_a_checkpoint_and_resume_continues_from_it(tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as in a Jupyter kernel
    run = tmp_path / "run"
    first = train(tiny_settings(run, max_iter=4, checkpoint_period=100), extra_hooks=[SendInterrupt(1)])
    assert first.interrupted and first.iteration == 1
    assert (run / "last_checkpoint").read_text() == "model_0000001.pth" and not (run / "model_final.pth").exists()
    saved = load_torch_file(run / "model_0000001.pth")
    # saved where the LR schedule is: two steps done, whichever hook the interrupt landed in
    assert saved["trainer"]["iteration"] == 1 and saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 2

    second = train(tiny_settings(run, max_iter=4, checkpoint_period=100, resume=True))
    assert not second.interrupted and second.iteration == 4 and second.iterations_run == 2
    assert iterations_in(run / "metrics.json")[-1] == 3 and (run / "model_final.pth").is_file()


# --------------------------------------------------------------------------- SIGKILL


KILLED_RUN = textwrap.dedent("""
    # A training run whose second checkpoint is written slowly: half its bytes, then a pause
    # in which the test kills it. Arguments: output_dir, the file that says the write began.
    import io, os, sys, time
    from pathlib import Path

    import torch

    sys.path.insert(0, {tests!r})
    from reliability_support import tiny_settings
    from d2nb.train import train

    real_save, saves = torch.save, []

    def slow_save(obj, stream, *args, **kwargs):
        saves.append(obj)
        if len(saves) < 2:
            return real_save(obj, stream, *args, **kwargs)
        data = io.BytesIO()
        real_save(obj, data)
        stream.write(data.getvalue()[: data.tell() // 2])
        stream.flush()
        os.fsync(stream.fileno())
        Path(sys.argv[2]).write_text("writing")
        time.sleep(600)

    torch.save = slow_save
    train(tiny_settings(sys.argv[1], max_iter=3, checkpoint_period=1))
""")


def test_sigkill_while_a_checkpoint_is_written_leaves_last_checkpoint_complete_and_resume_finishes(tmp_path):
    run, started = tmp_path / "run", tmp_path / "writing"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN.format(tests=str(TESTS)))
    log = (tmp_path / "killed_run.log").open("w")
    process = subprocess.Popen([sys.executable, str(script), str(run), str(started)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            assert process.poll() is None, (tmp_path / "killed_run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its second checkpoint"
            time.sleep(0.2)
        partial = list(run.glob(".model_0000001.pth.*.tmp"))
        assert len(partial) == 1 and partial[0].stat().st_size > 1_000_000  # killed in the middle of it
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        log.close()

    # what the killed process left: last_checkpoint names the complete earlier file, nothing
    # carries the final name of the half-written one
    assert (run / "last_checkpoint").read_text() == "model_0000000.pth"
    assert load_torch_file(run / "model_0000000.pth")["iteration"] == 0
    assert not (run / "model_0000001.pth").exists()

    resumed = train(tiny_settings(run, max_iter=3, checkpoint_period=1, resume=True))
    assert resumed.iteration == 3 and resumed.iterations_run == 2
    assert iterations_in(run / "metrics.json")[-1] == 2
    assert not list(run.glob(".*.tmp"))  # the half-written file was removed when training started again
    assert load_torch_file(run / "model_final.pth")["iteration"] == 2


# --------------------------------------------------------------------------- running again


class CountHooks(HookBase):
    """Records how many hooks the trainer has and how many handlers its loggers have."""

    seen = []

    def before_train(self):
        import logging

        handlers = {name: len(logging.getLogger(name).handlers) for name in ("detectron2", "fvcore", "d2nb")}
        CountHooks.seen.append((len(self.trainer._hooks), handlers))


def test_running_the_training_cells_again_registers_and_hooks_nothing_twice(tmp_path):
    CountHooks.seen.clear()
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"

    def notebook_cells(output_dir):  # the training notebook's cells, in one kernel
        build_config(tiny_settings(output_dir))
        # resume=False: each run trains (resume="auto" would find the first run finished and only evaluate it)
        train(tiny_settings(output_dir, max_iter=2, checkpoint_period=100, resume=False), extra_hooks=[CountHooks()])

    notebook_cells(first_dir)
    names = DatasetCatalog.list()
    notebook_cells(first_dir)  # the whole notebook again, same parameters
    first_log = file_hashes(first_dir / "log.txt")
    notebook_cells(second_dir)  # and again with another output_dir
    assert DatasetCatalog.list() == names
    assert CountHooks.seen[0] == CountHooks.seen[1] == CountHooks.seen[2]
    assert CountHooks.seen[0][1] == {"detectron2": 2, "fvcore": 2, "d2nb": 2}  # its log.txt and the console
    assert iterations_in(first_dir / "metrics.json") == [1]  # the second run's rows, once
    assert iterations_in(second_dir / "metrics.json") == [1]
    assert file_hashes(first_dir / "log.txt") == first_log  # the last run wrote only into its own log


def picture(colour) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), colour).save(buffer, "PNG")
    return {"name": f"{colour}.png", "type": "image/png", "size": len(buffer.getvalue()),
            "content": memoryview(buffer.getvalue()), "last_modified": datetime.now(timezone.utc)}


def fake_predict(images):
    return [prediction_from_arrays(image.image, [(5, 5, 30, 30)], [0.9], [0], ["thing"], name=image.name)
            for image in images]


def test_the_upload_widget_answers_the_same_file_twice_after_an_error_and_after_its_cell_runs_again():
    explorer = ThresholdExplorer([])
    panel = UploadPanel(fake_predict, explorer)
    panel.upload.value = [picture("red")]
    panel.upload.value = [picture("red")]  # the same file chosen again
    assert [p.name for p in explorer.predictions] == ["red.png", "red.png"]

    failures = iter([RuntimeError("CUDA error: an illegal memory access was encountered"),
                     torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])

    def failing_predict(images):
        raise next(failures)

    panel.predict = failing_predict
    panel.upload.value = [picture("blue")]
    assert "predicting 1 picture(s) failed: RuntimeError: CUDA error: an illegal memory access" in panel.messages.value
    assert "Fix: upload them again" in panel.messages.value
    panel.upload.value = [picture("blue")]
    assert "the GPU ran out of memory predicting 1 picture(s)" in panel.messages.value
    assert "Fix: upload fewer pictures at a time, or make the Predictor with device=&#x27;cpu&#x27;" in \
        panel.messages.value
    panel.predict = fake_predict
    panel.upload.value = [picture("blue")]
    assert [p.name for p in explorer.predictions] == ["red.png", "red.png", "blue.png"]
    assert "1 picture(s) added" in panel.messages.value and "failed" not in panel.messages.value

    explorer_again = ThresholdExplorer([])  # the cell run again: new widgets, the old ones still work
    panel_again = UploadPanel(fake_predict, explorer_again)
    panel_again.upload.value = [picture("green")]
    panel.upload.value = [picture("green")]
    assert [p.name for p in explorer_again.predictions] == ["green.png"]
    assert explorer.predictions[-1].name == "green.png" and explorer.drawn_count == 1
    explorer_again.slider.value = 0.95
    assert explorer_again.drawn_count == 0 and explorer.drawn_count == 1
    assert np.asarray(Image.open(io.BytesIO(explorer_again.image.value))).shape[:2] == (40, 60)

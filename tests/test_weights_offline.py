"""Offline is a message, not a traceback: training with model-zoo or URL weights that cannot be
fetched fails before the model is built, within seconds, saying how to go on."""

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import NOTEBOOKS, ROOT
from d2nb.errors import D2nbError
from d2nb.train import TrainSettings, build_config, train
from d2nb.weights import available_cores

ZOO = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


def settings(tmp_path, **values):
    return TrainSettings(gpus=0, output_dir=str(tmp_path / "run"), max_iter=1, ims_per_batch=2, monitor=False,
                         **values)


def test_a_url_on_a_closed_port_fails_in_seconds_before_the_model_is_built(tmp_path):
    started = time.perf_counter()
    with pytest.raises(D2nbError) as error:
        train(settings(tmp_path, weights="http://127.0.0.1:9/model_final.pth"))
    assert time.perf_counter() - started < 15
    assert "could not download the checkpoint 'http://127.0.0.1:9/model_final.pth'" in error.value.problem
    assert "weights='none'" in error.value.fix and "local .pth path" in error.value.fix
    assert not (tmp_path / "run").exists()  # nothing started


def test_the_zoo_checkpoint_with_the_network_blocked(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty_cache"))  # nothing cached from an earlier run

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    started = time.perf_counter()
    with pytest.raises(D2nbError) as error:
        train(settings(tmp_path, config=ZOO))
    assert time.perf_counter() - started < 15
    assert error.value.problem.startswith(f"could not download the model-zoo checkpoint for {ZOO} (")
    assert error.value.fix == "connect to the internet, pass weights='none' to train from scratch, or a local .pth path"


def test_the_training_notebook_offline_ends_with_the_one_line_message(tmp_path):
    output = tmp_path / "out.ipynb"
    completed = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOKS / "03_train.ipynb"), str(output), "--cwd", str(ROOT),
         "-k", "python3", "--no-progress-bar", "-p", "gpus", "0", "-p", "config", ZOO,
         "-p", "weights", "http://127.0.0.1:9/model_final_f10217.pkl", "-p", "max_iter", "2",
         "-p", "output_dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert completed.returncode != 0
    notebook = json.loads(output.read_text())
    errors = [o for c in notebook["cells"] if c["cell_type"] == "code" for o in c["outputs"]
              if o["output_type"] == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1, errors
    line = errors[0]["traceback"][0]
    assert line.startswith("D2nbError: could not download the checkpoint") and " | Fix: connect to the internet" in line
    assert "URLError" not in json.dumps(notebook["cells"])


def test_loader_workers_never_exceed_the_cores():
    cfg = build_config(TrainSettings(gpus=0, config=ZOO, weights="none", num_workers=None, output_dir="runs/x"))
    assert cfg.DATALOADER.NUM_WORKERS <= available_cores()

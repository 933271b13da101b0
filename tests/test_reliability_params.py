"""Issue 8, bad input: parameters as papermill delivers them. Each is refused before anything
is written, with the parameter, the value and the fix; what papermill hands over as text
but means a number or a flag is understood."""

import os
from pathlib import Path

import pytest
from papermill.cli import _resolve_type  # how papermill's `-p NAME VALUE` types VALUE

import d2nb.devices
from d2nb.devices import available_gpus
from d2nb.errors import D2nbError
from d2nb.train import TrainSettings, build_config, train
from reliability_support import TINY, assert_message, unchanged


@pytest.fixture
def user_folder(tmp_path):
    """A project folder with something of the user's in it: it must not change."""
    (tmp_path / "notes.md").write_text("my experiments\n")
    return tmp_path


def papermill_settings(folder, **parameters) -> TrainSettings:
    """TrainSettings as the notebook makes them from `papermill -p NAME VALUE ...`."""
    values = {"gpus": "0", "output_dir": str(folder / "run"), "synthetic": TINY}
    values.update(parameters)
    return TrainSettings.from_values({k: _resolve_type(v) if isinstance(v, str) else v for k, v in values.items()})


def refused(folder, call) -> D2nbError:
    with unchanged(folder), pytest.raises(D2nbError) as error:
        call()
    assert not (folder / "run").exists()  # refused before the output folder was made
    return error.value


@pytest.mark.parametrize("name, value, problem, fix", [
    ("gpus", "two", "gpus must be a whole number (0 for the CPU), got 'two'", "'-p gpus 1' to papermill"),
    ("gpus", "-1", "gpus must be a whole number (0 for the CPU), got -1", "gpus=0 trains on the CPU"),
    ("max_iter", "lots", "max_iter must be a whole number, got 'lots' (str)", "'-p max_iter 1000' to papermill"),
    ("max_iter", "0", "max_iter must be at least 1, got 0", "pass e.g. max_iter=1000"),
    ("ims_per_batch", "2.5", "ims_per_batch must be a whole number, got 2.5 (float)", "pass e.g. ims_per_batch=4"),
    ("base_lr", "fast", "base_lr must be a positive number, got 'fast'", "'-p base_lr 0.001' to papermill"),
    ("base_lr", "-0.01", "base_lr must be a positive number, got -0.01", "leave it unset for the default"),
    ("resume", "maybe", "resume must be True, False or 'auto', got 'maybe'", "'-p resume True' to papermill"),
    ("checkpoint_minutes", "-1", "checkpoint_minutes must be a number of at least 0, got -1",
     "'-p checkpoint_minutes 10' to papermill"),
    ("amp", "2", "amp must be True or False, got 2", "pass amp=True or amp=False"),
    ("output_dir", "", "output_dir must be a folder path, got ''", "pass e.g. output_dir='runs/train'"),
    ("opts", "5", "opts must be a list of KEY VALUE strings, got 5", "-y \"opts: [SOLVER.BASE_LR, '0.001']\""),
])
def test_a_wrong_type_from_papermill_names_the_parameter_and_an_example(user_folder, name, value, problem, fix):
    settings = papermill_settings(user_folder, **{name: value})
    error = refused(user_folder, lambda: train(settings))
    assert_message(error, [problem], [fix])


def test_text_that_means_a_number_or_a_flag_is_understood(user_folder):
    # `papermill -r max_iter 50` (raw) and a hand-typed `resume = "False"` arrive as text
    settings = TrainSettings(gpus="0", output_dir=str(user_folder / "run"), synthetic=TINY, max_iter="50",
                             ims_per_batch="2", base_lr="0.0005", resume="False", opts="SOLVER.WARMUP_ITERS 3")
    with unchanged(user_folder):
        cfg = build_config(settings)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (50, 2, 0.0005)
    assert cfg.SOLVER.WARMUP_ITERS == 3 and cfg.MODEL.DEVICE == "cpu"


@pytest.mark.parametrize("config, close", [
    ("mask_rcnn_R_50_FPN_3", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"),
    ("COCO-Detection/faster_rcnn_R_50_FPN.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
    ("mask_rcnn_R_18_FPN_cpu", "mask_rcnn_R_18_FPN_cpu.yaml"),
])
def test_an_unknown_config_name_suggests_the_closest_names(user_folder, config, close):
    error = refused(user_folder, lambda: train(papermill_settings(user_folder, config=config)))
    assert_message(error, [f"config {config!r} is not a d2nb recipe", "did you mean", repr(close)],
                   ["'COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml'", "d2nb.zoo.list_zoo_configs()"])


def test_more_gpus_than_this_machine_has(user_folder):
    have = available_gpus()
    error = refused(user_folder, lambda: train(papermill_settings(user_folder, gpus=str(have + 2))))
    assert_message(error, [f"gpus={have + 2} asked for, but this machine has {have} CUDA GPU(s)"],
                   [f"pass gpus={have}", "leave gpus unset to use every GPU there is"])


def test_more_gpus_than_a_four_gpu_machine_has(user_folder, monkeypatch):
    monkeypatch.setattr(d2nb.devices, "available_gpus", lambda: 4)
    error = refused(user_folder, lambda: train(papermill_settings(user_folder, gpus="8")))
    assert_message(error, ["gpus=8 asked for, but this machine has 4 CUDA GPU(s)"], ["pass gpus=4, or leave"])


def test_ims_per_batch_not_divisible_by_the_gpu_count(user_folder, monkeypatch):
    monkeypatch.setattr(d2nb.devices, "available_gpus", lambda: 4)  # the check runs before any CUDA call
    settings = papermill_settings(user_folder, gpus="4", ims_per_batch="6")
    error = refused(user_folder, lambda: train(settings))
    assert_message(error, ["ims_per_batch=6 is not divisible by the 4 training processes (one per GPU, gpus=4)"],
                   ["pass ims_per_batch=4 or 8 (a multiple of 4)"])


def test_an_output_dir_that_is_a_file(user_folder):
    (user_folder / "run").write_text("a file where the run's folder should be\n")
    with unchanged(user_folder), pytest.raises(D2nbError) as error:
        train(papermill_settings(user_folder, max_iter="2"))
    assert_message(error.value, [f"output_dir '{user_folder / 'run'}' is a file, not a folder"],
                   ["pass a folder path for output_dir"])


def test_an_output_dir_in_a_read_only_folder(user_folder):
    locked = user_folder / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("read-only data\n")
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere a mode bit forbids: use a read-only filesystem
            locked = Path("/sys")
        settings = papermill_settings(user_folder, output_dir=str(locked / "run"), max_iter="2")
        with unchanged(user_folder), pytest.raises(D2nbError) as error:
            train(settings)
    finally:
        (user_folder / "locked").chmod(0o755)
    assert_message(error.value, [f"cannot write into output_dir '{locked / 'run'}' ("],
                   ["pass an output_dir in a folder you can write to"])
    assert not (locked / "run").exists()

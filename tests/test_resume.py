"""Issue 17, resuming without thinking: ``resume="auto"`` continues a run of the same config,
names what differs for another one, lets max_iter grow; a checkpoint every
``checkpoint_minutes`` (the newest only); checkpoints written whole onto a stand-in for Google
Drive; Drive mounted through ``d2nb.colab``'s hooks for an ``output_dir`` there.

Each run is the CPU recipe on a few 128 px synthetic pictures, one per step: seconds a run.
tests/test_colab_resume.py kills a real training process and resumes it in the notebook."""

import json
import os
import shutil
from pathlib import Path

import pytest
from detectron2.engine import HookBase

import d2nb.colab as colab
from d2nb.checkpoint import AtomicCheckpointer, load_torch_file
from d2nb.cli import train as train_cli
from d2nb.data import default_datasets_root
from d2nb.errors import D2nbError
from d2nb.train import TrainSettings, check_settings, train
from d2nb.train.output import mount_drive_for
from d2nb.train.resume import describe_differences, resume_choice, trim_metrics
from reliability_support import CaptureLog, assert_message, tiny_settings, unchanged


def iterations_in(output_dir) -> list:
    return [json.loads(line)["iteration"] for line in (Path(output_dir) / "metrics.json").read_text().splitlines()]


class StopAt(HookBase):
    """Raises KeyboardInterrupt before step ``iteration``: the notebook's stop button."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt


class WatchTimed(HookBase):
    """Records, after each step, the time-based checkpoints there are and what last_checkpoint names."""

    def __init__(self):
        self.seen = []

    def after_step(self):
        folder = Path(self.trainer.cfg.OUTPUT_DIR)
        last = (folder / "last_checkpoint").read_text() if (folder / "last_checkpoint").exists() else None
        self.seen.append((self.trainer.iter, sorted(p.name for p in folder.glob("*_timed.pth")), last))


# --------------------------------------------------------------------------- the values


def test_resume_takes_true_false_and_auto_as_papermill_and_hand_edits_give_them():
    assert [resume_choice(v) for v in (True, False, "auto", "Auto", "true", "no", 1)] == \
        [True, False, "auto", "auto", True, False, True]
    assert TrainSettings().resume == "auto" and TrainSettings().checkpoint_minutes == 10
    checked = check_settings(TrainSettings(gpus=0, checkpoint_minutes="0.5"))
    assert checked.resume == "auto" and checked.checkpoint_minutes == 0.5
    with pytest.raises(D2nbError, match="resume must be True, False or 'auto', got 'later'"):
        resume_choice("later")


def test_the_command_line_says_resume_as_train_net_does_and_auto_without_a_flag():
    import argparse

    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    settings = [train_cli.settings_from_args(parser.parse_args(["train", *flags]))
                for flags in ([], ["--resume"], ["--no-resume"], ["--checkpoint-minutes", "0.5"])]
    assert [s.resume for s in settings] == ["auto", True, False, "auto"]
    assert settings[3].checkpoint_minutes == 0.5
    again = train_cli.settings_from_args(parser.parse_args(["train", "--resume", "OUTPUT_DIR", "runs/r50"]))
    assert again.resume is True and again.output_dir == "runs/r50"  # train_net.py's spelling still works


# --------------------------------------------------------------------------- resume="auto"


def test_auto_continues_a_stopped_run_of_the_same_config_and_says_from_where(tmp_path):
    run = tmp_path / "run"
    first = train(tiny_settings(run, max_iter=5, checkpoint_period=100), extra_hooks=[StopAt(3)])
    assert first.interrupted and (run / "last_checkpoint").read_text() == "model_0000002.pth"

    with CaptureLog("d2nb.train") as log:
        second = train(tiny_settings(run, max_iter=5, checkpoint_period=100))  # the default: "auto"
    assert f"Resuming {run} from model_0000002.pth: iteration 3 of 5 (resume='auto': the same config and dataset)" \
        in log.text
    assert not second.interrupted and second.iteration == 5 and second.iterations_run == 2
    assert load_torch_file(run / "model_final.pth")["iteration"] == 4


def test_auto_refuses_a_run_of_another_config_and_names_what_differs(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, max_iter=3, checkpoint_period=100), extra_hooks=[StopAt(2)])
    kept = [run / name for name in ("last_checkpoint", "model_0000001.pth", "config.yaml", "metrics.json")]
    with unchanged(*kept), pytest.raises(D2nbError) as error:
        train(tiny_settings(run, max_iter=3, checkpoint_period=100, base_lr=0.5, seed=7))
    message = assert_message(
        error.value, [f"output_dir {str(run)!r} holds a run of another config (model_0000001.pth, iteration 2)",
                      "this run differs from its config.yaml in: SEED 0 -> 7; SOLVER.BASE_LR 0.0005 -> 0.5"],
        ["pass resume=False with a new output_dir (e.g. output_dir=", "_2'", "resume=True to continue it"])
    assert "\n" not in message.replace("\nFix: ", " ")

    with unchanged(*kept), pytest.raises(D2nbError) as error:  # another dataset: its classes and its name
        train(tiny_settings(run, max_iter=3, checkpoint_period=100, synthetic_size=96))
    assert "holds a run of another dataset and config" in error.value.problem
    assert "annotations " in error.value.problem and "d2nb_synthetic_v5_96x96" in error.value.problem

    new_run = train(tiny_settings(run, max_iter=3, checkpoint_period=100, base_lr=0.5, resume=False))
    assert new_run.iterations_run == 3  # resume=False: started again, as the message offers


def test_only_the_keys_that_change_what_is_trained_count(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, max_iter=4, checkpoint_period=100), extra_hooks=[StopAt(2)])
    # how often it saves and evaluates, the loader processes, what it evaluates on: not the run itself
    resumed = train(tiny_settings(run, max_iter=4, checkpoint_period=3, eval_period=0, num_workers=1,
                                  opts=["DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]))
    assert resumed.iteration == 4 and resumed.iterations_run == 2


def test_max_iter_may_grow_and_the_line_says_so(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, max_iter=3, checkpoint_period=100))
    with CaptureLog("d2nb.train") as log:
        longer = train(tiny_settings(run, max_iter=5, checkpoint_period=100))
    assert f"Resuming {run} from model_final.pth: iteration 3 of 5: max_iter grows from 3 to 5" in log.text
    assert longer.iteration == 5 and longer.iterations_run == 2
    assert iterations_in(run)[-1] == 4 and "MAX_ITER: 5" in (run / "config.yaml").read_text()

    with pytest.raises(D2nbError, match="SOLVER.MAX_ITER 5 -> 4"):  # a shorter schedule is another run
        train(tiny_settings(run, max_iter=4, checkpoint_period=100))


def test_a_finished_run_run_again_is_evaluated_not_trained(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, max_iter=2, checkpoint_period=100))
    final = (run / "model_final.pth").read_bytes()
    with CaptureLog("d2nb.train") as log:
        again = train(tiny_settings(run, max_iter=2, checkpoint_period=100))
    assert f"{run} already finished its 2 iterations (model_final.pth): nothing to train" in log.text
    assert again.iteration == 2 and again.iterations_run == 0 and not again.interrupted
    assert (run / "model_final.pth").read_bytes() == final and iterations_in(run) == [1]


def test_resume_true_continues_another_config_and_logs_the_differences(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, max_iter=4, checkpoint_period=100), extra_hooks=[StopAt(2)])
    with CaptureLog("d2nb.train") as log:
        resumed = train(tiny_settings(run, max_iter=4, checkpoint_period=100, base_lr=0.0001, resume=True))
    assert "(resume=True; with this run's values for SOLVER.BASE_LR 0.0005 -> 0.0001)" in log.text
    assert resumed.iterations_run == 2


def test_rows_a_stopped_run_logged_after_its_checkpoint_are_dropped(tmp_path):
    rows = [{"iteration": 4, "total_loss": 1.0}, {"iteration": 9, "total_loss": 0.9},
            {"iteration": 12, "total_loss": 0.8}]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 1')
    assert trim_metrics(tmp_path, 9) == 2
    assert iterations_in(tmp_path) == [4, 9]
    assert describe_differences([("MODEL.RESNETS.NORM", "FrozenBN", "BN"), ("INPUT.MIN_SIZE_TRAIN", [128], [96])]) \
        == "MODEL.RESNETS.NORM 'FrozenBN' -> 'BN'; INPUT.MIN_SIZE_TRAIN (128,) -> (96,)"


# --------------------------------------------------------------------------- every N minutes


def test_a_checkpoint_every_few_minutes_the_newest_only_and_resume_continues_from_it(tmp_path):
    run, watch = tmp_path / "run", WatchTimed()
    # 0.00001 minutes: a time-based checkpoint after every step that is neither periodic nor the last
    first = train(tiny_settings(run, max_iter=6, checkpoint_period=3, checkpoint_minutes=0.00001),
                  extra_hooks=[watch, StopAt(5)])
    assert first.interrupted
    assert watch.seen[:4] == [
        (0, ["model_0000000_timed.pth"], "model_0000000_timed.pth"),
        (1, ["model_0000001_timed.pth"], "model_0000001_timed.pth"),  # the older one removed
        (2, ["model_0000001_timed.pth"], "model_0000002.pth"),  # periodic: no time-based one beside it
        (3, ["model_0000003_timed.pth"], "model_0000003_timed.pth")]
    # the stop at step 5 saved model_0000004.pth; the time-based one of step 4 is the newest kept
    assert (run / "last_checkpoint").read_text() == "model_0000004.pth"
    assert sorted(p.name for p in run.glob("*_timed.pth")) == ["model_0000004_timed.pth"]
    saved = load_torch_file(run / "model_0000004_timed.pth")  # what PeriodicCheckpointer would have saved
    assert saved["iteration"] == 4 and saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 5
    assert saved.keys() == load_torch_file(run / "model_0000002.pth").keys()

    (run / "model_0000004.pth").unlink()  # a disconnect before the stop's save: the time-based one is last
    (run / "last_checkpoint").write_text("model_0000004_timed.pth")
    with CaptureLog("d2nb.train") as log:
        resumed = train(tiny_settings(run, max_iter=6, checkpoint_period=3))
    assert f"from model_0000004_timed.pth: iteration 5 of 6" in log.text
    assert resumed.iteration == 6 and resumed.iterations_run == 1
    assert (run / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(run.glob("*_timed.pth"))  # a finished run keeps model_final.pth, not the time-based one


def test_checkpoint_minutes_0_saves_only_every_checkpoint_period(tmp_path):
    run = tmp_path / "run"
    train(tiny_settings(run, max_iter=3, checkpoint_period=100, checkpoint_minutes=0))
    assert sorted(p.name for p in run.glob("model_*.pth")) == ["model_final.pth"]


# --------------------------------------------------------------------------- Google Drive


class FakeColab(colab.ColabHooks):
    """A Colab runtime whose Drive appears under the test's folder when mounted."""

    def __init__(self):
        self.calls = []

    def in_colab(self):
        return True

    def mount_drive(self, mount_point):
        self.calls.append(("mount", Path(mount_point)))
        (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)

    def enable_widget_manager(self):
        self.calls.append(("widgets",))


@pytest.fixture()
def drive(monkeypatch, tmp_path):
    """/content/drive under tmp_path, and a Colab runtime that has not mounted it yet."""
    hooks = FakeColab()
    monkeypatch.setattr(colab, "DRIVE_MOUNT_POINT", tmp_path / "content" / "drive")
    monkeypatch.setattr(colab, "hooks", hooks)
    return hooks


def test_an_output_dir_on_drive_mounts_it_through_the_colab_hooks(drive, monkeypatch):
    output_dir = colab.DRIVE_MOUNT_POINT / "MyDrive" / "runs" / "shapes"
    mount_drive_for(output_dir)
    mount_drive_for(output_dir)  # mounted once
    assert drive.calls == [("mount", colab.DRIVE_MOUNT_POINT)]
    mount_drive_for("runs/local")
    assert len(drive.calls) == 1

    monkeypatch.setattr(colab, "hooks", colab.ColabHooks())  # not Colab
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    with pytest.raises(D2nbError) as error:
        mount_drive_for(output_dir)
    assert_message(error.value, [f"output_dir {str(output_dir)!r} is on Google Drive", "only be mounted in Colab"],
                   ["pass an output_dir on this machine"])


def test_datasets_stay_on_the_local_disk_when_the_working_folder_is_on_drive(drive, monkeypatch):
    folder = colab.DRIVE_MOUNT_POINT / "MyDrive" / "project"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert default_datasets_root() == colab.LOCAL_DATASETS
    monkeypatch.setenv("DETECTRON2_DATASETS", str(folder / "mine"))
    assert default_datasets_root() == folder / "mine"  # the user's own choice stands


def test_checkpoints_reach_drive_written_locally_copied_under_a_temporary_name_then_renamed(drive, monkeypatch):
    import torch

    folder = colab.DRIVE_MOUNT_POINT / "MyDrive" / "run"
    folder.mkdir(parents=True)
    copies, renames = [], []
    real_copy, real_replace = shutil.copyfileobj, os.replace

    def watched_copy(source, destination, length=0):
        copies.append(source.tell())  # read from the local file, from its start
        return real_copy(source, destination, length)

    def watched_replace(source, destination):
        renames.append((Path(source).parent, Path(source).name, Path(destination).name))
        return real_replace(source, destination)

    monkeypatch.setattr(shutil, "copyfileobj", watched_copy)
    monkeypatch.setattr(os, "replace", watched_replace)
    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(folder))
    checkpointer.save("model_0000004_timed", iteration=4)
    assert copies == [0, 0]  # the checkpoint and last_checkpoint, each copied whole from the local disk
    assert [(parent, name.split(".pth.")[0], final) for parent, name, final in renames[:1]] == \
        [(folder, ".model_0000004_timed", "model_0000004_timed.pth")]  # renamed on Drive from a temporary name
    assert renames[1][1].startswith(".last_checkpoint.") and renames[1][2] == "last_checkpoint"
    assert (folder / "last_checkpoint").read_text() == "model_0000004_timed.pth"
    assert load_torch_file(folder / "model_0000004_timed.pth")["iteration"] == 4
    assert sorted(p.name for p in folder.iterdir()) == ["last_checkpoint", "model_0000004_timed.pth"]

    def short_copy(source, destination, length=0):  # the mount took only part of the file
        destination.write(source.read()[:100])

    monkeypatch.setattr(shutil, "copyfileobj", short_copy)
    with pytest.raises(D2nbError) as error:
        checkpointer.save("model_0000009_timed", iteration=9)
    assert "the last complete checkpoint, model_0000004_timed.pth, is intact" in error.value.problem
    assert (folder / "last_checkpoint").read_text() == "model_0000004_timed.pth"
    assert sorted(p.name for p in folder.iterdir()) == ["last_checkpoint", "model_0000004_timed.pth"]


def test_a_last_checkpoint_naming_a_missing_file_is_said_before_anything_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_0000099.pth")
    with unchanged(run), pytest.raises(D2nbError) as error:
        train(tiny_settings(run))
    assert_message(error.value, [f"{str(run / 'last_checkpoint')!r} names 'model_0000099.pth', which is not in"],
                   ["pass resume=False with a new output_dir", "or write the name of a model_*.pth file"])

"""Issue 8, training faults: a NaN or infinite loss, CUDA running out of memory (raised from a
step on the CPU, as CUDA raises it), a full disk while a checkpoint is written. Each stops the
run with what usually causes it and the setting to change; every checkpoint already written
stays complete and loadable, and the user's dataset is untouched."""

import errno
import io
import json
import math
import os
import shutil

import pytest
import torch
from detectron2.engine import HookBase

from d2nb.checkpoint import load_torch_file
from d2nb.data import make_synthetic_dataset
from d2nb.errors import D2nbError
from d2nb.train import build_config, train
from d2nb.zoo import CPU_RECIPE
from reliability_support import TINY, assert_message, tiny_settings, unchanged


@pytest.fixture(scope="module")
def user_dataset(tmp_path_factory):
    """The user's own COCO dataset (the synthetic shapes copied into a folder of theirs)."""
    root = tmp_path_factory.mktemp("user")
    json_file, images = make_synthetic_dataset(TINY, root=root / "made")["train"]
    folder = root / "shapes"
    shutil.copytree(images, folder)
    shutil.copy(json_file, folder / "annotations.json")
    return folder / "annotations.json"


def settings(output_dir, user_dataset, **overrides):
    return tiny_settings(output_dir, dataset=str(user_dataset), config=CPU_RECIPE, **overrides)


class LossBecomes(HookBase):
    """From ``iteration`` on, the model's (first) classification loss is multiplied by
    ``factor`` (NaN or infinity), as a diverging run's loss becomes. ``name``: that loss."""

    def __init__(self, iteration: int, factor: float):
        self.iteration, self.factor, self.name = iteration, factor, None

    def before_step(self):
        if self.trainer.iter == self.iteration:
            model, forward = self.trainer.model, self.trainer.model.forward

            def diverging(*args, **kwargs):
                losses = forward(*args, **kwargs)
                self.name = next(name for name in sorted(losses) if "cls" in name)
                return {**losses, self.name: losses[self.name] * self.factor}

            model.forward = diverging


class OutOfMemoryAt(HookBase):
    """The forward pass of ``iteration`` raises CUDA's out-of-memory error, as CUDA does when
    the activations of a batch do not fit."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            def out_of_memory(*args, **kwargs):
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 14.75 GiB")

            self.trainer.model.forward = out_of_memory


def checkpoint_files(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".pth", ".tmp")))


def assert_complete_checkpoint(folder, name: str, iteration: int):
    assert (folder / "last_checkpoint").read_text() == name
    saved = load_torch_file(folder / name)
    assert saved["iteration"] == iteration
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def base_lr(run, user_dataset) -> float:
    """The lr the recipe gives one image a step (its own, scaled by the linear scaling rule)."""
    return build_config(settings(run, user_dataset)).SOLVER.BASE_LR


def test_a_nan_loss_names_the_cause_the_setting_to_lower_and_the_checkpoint_to_keep(tmp_path, user_dataset):
    run, diverging = tmp_path / "run", LossBecomes(2, math.nan)
    lr = base_lr(run, user_dataset)
    with unchanged(user_dataset.parent), pytest.raises(D2nbError) as error:
        train(settings(run, user_dataset, max_iter=3), extra_hooks=[diverging])
    assert_message(error.value, [
        "training diverged at iteration 2: the loss became NaN or infinite (Loss became infinite or NaN at "
        f"iteration=2! {diverging.name} = nan)",
        f"a learning rate too high for the batch (base_lr={lr:g} with ims_per_batch=1)",
        "boxes of zero size or outside their image"],
        [f"lower base_lr, e.g. base_lr={lr / 10:g}, and run again",
         f"weights='{run / 'model_0000001.pth'}' (saved before the loss diverged",
         "resume=True would bring back the old learning rate", "validate_coco"])
    assert "Loss became infinite or NaN at iteration=2" in (run / "log.txt").read_text()  # detectron2's, kept
    assert checkpoint_files(run) == ["model_0000001.pth"]  # nothing after the NaN, nothing half-written
    assert_complete_checkpoint(run, "model_0000001.pth", 1)


def test_an_infinite_loss_at_the_first_step_says_the_same_without_a_checkpoint(tmp_path, user_dataset):
    run, diverging = tmp_path / "run", LossBecomes(0, math.inf)
    lr = base_lr(run, user_dataset)
    with unchanged(user_dataset.parent), pytest.raises(D2nbError) as error:
        train(settings(run, user_dataset, max_iter=3), extra_hooks=[diverging])
    message = assert_message(error.value, [
        "training diverged at iteration 0: the loss became NaN or infinite (Loss became infinite or NaN at "
        f"iteration=0! {diverging.name} = inf)", f"(base_lr={lr:g} with ims_per_batch=1)"],
        [f"lower base_lr, e.g. base_lr={lr / 10:g}, and run again;", "validate_coco"])
    assert "weights=" not in message and checkpoint_files(run) == []


def test_cuda_out_of_memory_saves_the_steps_done_and_suggests_a_smaller_batch(tmp_path, user_dataset):
    run = tmp_path / "run"
    size = build_config(settings(run, user_dataset)).INPUT  # the recipe's: 128 px images stay 128 px
    with unchanged(user_dataset.parent), pytest.raises(D2nbError) as error:
        train(settings(run, user_dataset, max_iter=3, ims_per_batch=2, checkpoint_period=100),
              extra_hooks=[OutOfMemoryAt(2)])
    assert_message(error.value, [
        "the GPU ran out of memory at iteration 2, with ims_per_batch=2 and training images resized to "
        f"{size.MIN_SIZE_TRAIN[0]} px on the shorter side (at most {size.MAX_SIZE_TRAIN} px on the longer)",
        "the steps done so far are saved in model_0000001.pth"],
        ["lower ims_per_batch (e.g. ims_per_batch=1; base_lr follows it unless you set it)",
         "or lower the image size with opts=['INPUT.MIN_SIZE_TRAIN', '(", "or turn on amp=True",
         "; then run again with resume=True to continue from model_0000001.pth"])
    assert checkpoint_files(run) == ["model_0000001.pth"]
    assert_complete_checkpoint(run, "model_0000001.pth", 1)

    with unchanged(user_dataset.parent):  # as the message says: a smaller batch, resume=True
        resumed = train(settings(run, user_dataset, max_iter=3, ims_per_batch=1, checkpoint_period=100, resume=True))
    assert resumed.iteration == 3 and resumed.iterations_run == 1 and (run / "model_final.pth").is_file()
    steps = [json.loads(line)["iteration"] for line in (run / "metrics.json").read_text().splitlines()]
    assert steps[-1] == 2


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_complete_one(tmp_path, user_dataset, monkeypatch):
    run, real_save, calls = tmp_path / "run", torch.save, []

    def save_on_a_full_disk(obj, stream, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, stream, *args, **kwargs)
        data = io.BytesIO()
        real_save(obj, data)
        stream.write(data.getvalue()[: data.tell() // 2])  # half of it reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with unchanged(user_dataset.parent), pytest.raises(D2nbError) as error:
        train(settings(run, user_dataset, max_iter=3, checkpoint_period=1))
    assert_message(error.value, [
        f"the disk holding '{run}' is full (", "MiB free): model_0000001.pth could not be saved (nothing "
        "half-written is left); the last complete checkpoint, model_0000000.pth, is intact"],
        ["free space on that disk (old model_*.pth files you no longer need are the largest files there)",
         "or pass an output_dir on a larger disk, then run again with resume=True to continue from model_0000000.pth"])
    assert checkpoint_files(run) == ["model_0000000.pth"]
    assert_complete_checkpoint(run, "model_0000000.pth", 0)

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    with unchanged(user_dataset.parent):
        resumed = train(settings(run, user_dataset, max_iter=3, checkpoint_period=1, resume=True))
    assert resumed.iteration == 3 and resumed.iterations_run == 2
    assert checkpoint_files(run) == ["model_0000000.pth", "model_0000001.pth", "model_0000002.pth", "model_final.pth"]

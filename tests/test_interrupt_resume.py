"""Stopping training (KeyboardInterrupt, as the notebook's stop button raises) and resuming."""

import json

import torch
from detectron2.engine import HookBase

from d2nb.data import SyntheticSpec
from d2nb.train import TrainSettings, train

TINY = SyntheticSpec(num_train=16, num_val=4, seed=1)


class InterruptAt(HookBase):
    """Raises KeyboardInterrupt inside the step loop, where Ctrl-C lands."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt


def _settings(output_dir, **kw):
    return TrainSettings(gpus=0, output_dir=str(output_dir), synthetic=TINY, max_iter=12, ims_per_batch=2,
                         checkpoint_period=100, num_workers=0, monitor=False, **kw)


def test_interrupt_saves_a_checkpoint_and_resume_finishes_on_the_same_schedule(tmp_path):
    first = train(_settings(tmp_path), extra_hooks=[InterruptAt(7)])
    assert first.interrupted and first.iteration == 6
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"
    saved = torch.load(tmp_path / "model_0000006.pth", map_location="cpu", weights_only=False)
    assert saved["trainer"]["iteration"] == 6
    assert not (tmp_path / "model_final.pth").exists()

    second = train(_settings(tmp_path, resume=True))
    assert not second.interrupted and second.iteration == 12
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 11 and "model" in final
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    iterations = [r["iteration"] for r in rows if "lr" in r]
    assert iterations[-1] == 11
    # the LR schedule continued where it stopped: one scheduler, 12 steps in all
    assert saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 7
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 12
    assert second.metrics and "bbox" in second.metrics

"""A checkpoint every few minutes, beside detectron2's every-N-iterations one: a Colab
runtime that disconnects loses at most ``checkpoint_minutes`` of training.

``TimedCheckpointer`` is a hook in the style of detectron2's ``PeriodicCheckpointer``: after a
step, once ``checkpoint_minutes`` have passed since the last checkpoint (either kind), it
saves ``model_XXXXXXX_timed.pth`` through the trainer's checkpointer, the same full checkpoint
(model, optimizer, LR scheduler, iteration) that ``last_checkpoint`` then names, so
``resume`` continues from it. Only the newest one is kept: each save removes the older
``*_timed.pth`` files (a stopped run's too), and a run that reaches ``model_final.pth``
removes the last.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from detectron2.engine import HookBase

logger = logging.getLogger("d2nb.train")

TIMED_SUFFIX = "_timed"


def timed_checkpoint_name(iteration: int) -> str:
    """``model_0000123_timed``: as ``PeriodicCheckpointer`` names its files, marked as time-based."""
    return f"model_{iteration:07d}{TIMED_SUFFIX}"


class TimedCheckpointer(HookBase):
    """Save a checkpoint when ``minutes`` have passed since the last one; keep the newest only.

    ``clock`` (seconds, default ``time.monotonic``) is there for tests."""

    def __init__(self, minutes: float, clock=time.monotonic):
        self.seconds = minutes * 60
        self.clock = clock
        self._since = None

    def before_train(self):
        self._since = self.clock()

    def after_step(self):
        iteration = self.trainer.iter
        if iteration + 1 >= self.trainer.max_iter:
            return  # PeriodicCheckpointer writes model_final.pth now
        if (iteration + 1) % self.trainer.cfg.SOLVER.CHECKPOINT_PERIOD == 0:
            self._since = self.clock()  # PeriodicCheckpointer saved this step
            return
        if self.clock() - self._since < self.seconds:
            return
        name = timed_checkpoint_name(iteration)
        self.trainer.checkpointer.save(name, iteration=iteration)  # and last_checkpoint names it
        self._since = self.clock()
        for older in self._timed_files(keep=f"{name}.pth"):
            older.unlink(missing_ok=True)
        logger.info(f"Saved {name}.pth ({self.seconds / 60:g} minutes since the last checkpoint)")

    def after_train(self):
        finished = self.trainer.iter >= self.trainer.max_iter  # the loop ran to its end
        if finished and self.trainer.checkpointer.get_checkpoint_file().endswith("model_final.pth"):
            for older in self._timed_files(keep="model_final.pth"):
                older.unlink(missing_ok=True)

    def _timed_files(self, keep: str) -> list:
        """The ``*_timed.pth`` files of the output folder other than ``keep`` and the one
        ``last_checkpoint`` names."""
        folder = Path(self.trainer.checkpointer.save_dir)
        named = os.path.basename(self.trainer.checkpointer.get_checkpoint_file())
        return [path for path in folder.glob(f"model_*{TIMED_SUFFIX}.pth") if path.name not in (keep, named)]

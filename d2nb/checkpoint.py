"""A checkpointer whose files are complete or absent, never half-written.

detectron2 writes ``model_XXXXXXX.pth`` in place and then ``last_checkpoint``; a process
killed in between (a Colab session reclaimed, a SIGKILL) leaves ``last_checkpoint`` naming
a truncated file that ``resume=True`` then fails on. Here both files are written under a
temporary name and renamed, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic writes of checkpoints and ``last_checkpoint``."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

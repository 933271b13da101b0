"""What a notebook's first cell reports: detectron2 and where it came from, the GPU, Drive, time.

``setup_notebook()`` prints a ``SetupStatus`` as one short block and returns it, so that a
test (or the next cell) reads the same facts as fields:

    d2nb set-up in 3.2 s
      detectron2  0.6, already installed (/usr/lib/python3/site-packages/detectron2)
      GPU         NVIDIA H200, 139.8 GiB
      Drive       not mounted
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from d2nb import colab

ALREADY_INSTALLED = "already installed"
CACHE_HIT = "cache hit"
FRESH_BUILD = "fresh build"
NO_GPU = "no GPU: CPU"


@dataclass
class SetupStatus:
    """The facts of one set-up; ``str()`` is the block the first cell prints.

    ``detectron2_source`` is ``"already installed"`` (found, nothing was touched), ``"cache
    hit"`` (installed from a cached wheel) or ``"fresh build"`` (compiled, then cached).
    """

    detectron2_version: str
    detectron2_source: str
    detectron2_location: str      # the imported package's folder
    wheel: Optional[Path]         # the cached wheel installed from, None when already installed
    build_seconds: Optional[float]
    gpu: str                      # "NVIDIA H200, 139.8 GiB", "2 x NVIDIA T4, 15.0 GiB each", "no GPU: CPU"
    gpu_count: int
    gpu_memory_gib: Optional[float]
    in_colab: bool
    drive_mounted: bool
    seconds: float

    def __str__(self) -> str:
        where = {ALREADY_INSTALLED: f"already installed ({self.detectron2_location})",
                 CACHE_HIT: f"from the wheel cache ({self.wheel})",
                 FRESH_BUILD: f"fresh build in {self.build_seconds or 0:.0f} s, cached as {self.wheel}"}
        drive = (f"mounted at {colab.DRIVE_MOUNT_POINT}" if self.drive_mounted
                 else "not mounted" + ("" if self.in_colab else " (not Colab)"))
        return "\n".join([f"d2nb set-up in {self.seconds:.1f} s",
                          f"  detectron2  {self.detectron2_version}, "
                          + where.get(self.detectron2_source, self.detectron2_source),
                          f"  GPU         {self.gpu}",
                          f"  Drive       {drive}"])


def detectron2_version_and_location():
    """(version, folder) of the detectron2 that ``import detectron2`` finds, without importing it."""
    spec = importlib.util.find_spec("detectron2")
    location = str(Path(spec.origin).parent) if spec and spec.origin else "?"
    try:
        version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path
        import detectron2

        version = getattr(detectron2, "__version__", "?")
    return version, location


def describe_gpus():
    """(text, count, memory GiB of the first) of the CUDA GPUs torch sees."""
    import torch

    if not torch.cuda.is_available():
        return NO_GPU, 0, None
    count = torch.cuda.device_count()
    first = torch.cuda.get_device_properties(0)
    memory = round(first.total_memory / 2**30, 1)
    text = f"{first.name}, {memory} GiB" if count == 1 else f"{count} x {first.name}, {memory} GiB each"
    return text, count, memory

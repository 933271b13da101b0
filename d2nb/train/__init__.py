"""Training: the settings a user chooses, the detectron2 config built from them, and the run.

    settings = TrainSettings(gpus=0, output_dir="runs/shapes")
    result = train(settings)          # live monitor in a notebook, logs in a terminal
    result.metrics["segm"]["AP"]

One module per step, in the order a run goes through them:

- ``settings``: ``TrainSettings`` (every parameter, its default) and ``check_settings``, which
  checks them once, where they enter, and returns the ``CheckedSettings`` later steps take;
- ``config``: ``build_config``, the detectron2 config built from them, and ``describe``;
- ``fast``: fast mode's speed-ups (AMP, TF32, bitmask targets, batched gradient clipping);
- ``run``: ``train`` and ``evaluate_only``, as tools/train_net.py's ``main``;
- ``resume``: whether a run continues what ``output_dir`` holds (``resume="auto"``);
- ``trainer``: the ``Trainer`` and one process's training, with its hooks: ``monitor`` (the
  live view), ``interrupt`` (what a stopped run keeps), ``checkpoints`` (a checkpoint every
  ``checkpoint_minutes``), ``roi_align`` (ROIAlign for the CPU);
- ``launch``: several processes through detectron2's ``launch``;
- ``output``: the output folder (Drive mounted when it is there) checked, ``log.txt``,
  ``class_names.json``;
- ``result``: ``TrainResult`` and ``format_metrics``.

What a run leaves in ``output_dir`` is what ``tools/train_net.py`` leaves: config.yaml,
log.txt, metrics.json, events.out.tfevents.*, model_XXXXXXX.pth, model_final.pth,
last_checkpoint, inference/coco_instances_results.json, plus training_curves.png,
d2nb_dataset.json (what ``resume="auto"`` compares) and, while training, the newest
time-based model_XXXXXXX_timed.pth.
"""

from d2nb.train.config import (
    FINE_TUNE_IMS_PER_GPU, FINE_TUNE_MAX_ITER, GPU_RECIPE_WORKERS, build_config, default_base_lr, describe,
    optimizer_name,
)
from d2nb.train.fast import FAST_MODE_WORKERS, apply_fast_mode, clip_per_parameter_foreach
from d2nb.train.output import setup_run_logging
from d2nb.train.result import TrainResult, format_metrics
from d2nb.train.run import ZOO_WEIGHTS_URL, evaluate_only, train
from d2nb.train.settings import CheckedSettings, TrainSettings, check_settings
from d2nb.train.trainer import Trainer

__all__ = ["FAST_MODE_WORKERS", "FINE_TUNE_IMS_PER_GPU", "FINE_TUNE_MAX_ITER", "GPU_RECIPE_WORKERS",
           "ZOO_WEIGHTS_URL", "CheckedSettings", "TrainResult", "TrainSettings", "Trainer", "apply_fast_mode",
           "build_config", "check_settings", "clip_per_parameter_foreach", "default_base_lr", "describe",
           "evaluate_only", "format_metrics", "optimizer_name", "setup_run_logging", "train"]

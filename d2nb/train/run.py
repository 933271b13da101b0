"""Starting a run, as tools/train_net.py's ``main`` does: ``train`` (in this process, or in
several through ``d2nb.train.launch``) and ``evaluate_only`` (train_net.py's ``--eval-only``).

Both check the settings first (``check_settings``, once) and then, before any model is built
or process started, everything that would otherwise fail later: the config, the datasets and
their files, the weights (a download that cannot happen says so now), the output folder.
"""

from __future__ import annotations

from pathlib import Path

from d2nb import zoo
from d2nb.checkpoint import AtomicCheckpointer
from d2nb.data import check_dataset_files
from d2nb.errors import D2nbError
from d2nb.train.config import build_config
from d2nb.train.launch import launch_processes
from d2nb.train.monitor import in_notebook
from d2nb.train.output import prepare_output_dir, setup_run_logging
from d2nb.train.result import TrainResult, plain_metrics
from d2nb.train.settings import TrainSettings, check_settings, training_processes
from d2nb.train.trainer import Trainer, train_in_process
from d2nb.weights import local_weights

ZOO_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/detectron2/"  # detectron2's model_zoo.get_checkpoint_url prefix


def train(settings: TrainSettings, extra_hooks=()) -> TrainResult:
    """Train as ``settings`` says; return the final iteration and evaluation metrics.

    One process for one GPU or the CPU; detectron2's ``launch`` (DDP over NCCL, or gloo on
    the CPU) for several, with the live view drawn here from rank 0's ``metrics.json``.
    Interrupting (Ctrl-C, the notebook's stop button) saves a checkpoint and returns with
    ``interrupted=True``; run again with ``resume=True`` to continue from it. A NaN loss, CUDA
    running out of memory or a full disk stop it with a ``D2nbError`` saying what to change;
    the checkpoints already written stay complete.
    """
    settings = check_settings(settings)  # once: every step below takes these values as they are
    cfg = build_config(settings)  # makes the dataset before any process starts
    resuming = settings.resume and (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file()
    if cfg.MODEL.WEIGHTS and "://" in cfg.MODEL.WEIGHTS and not resuming:  # offline: a message, before the model
        from_zoo = cfg.MODEL.WEIGHTS.startswith(ZOO_WEIGHTS_URL)
        local_weights(cfg.MODEL.WEIGHTS, (settings.config or zoo.default_config(False)) if from_zoo else None)
    check_dataset_files([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])  # said now, not mid-training
    prepare_output_dir(cfg.OUTPUT_DIR)
    processes = training_processes(settings)
    if processes * settings.num_machines == 1:
        return train_in_process(cfg, settings, list(extra_hooks))
    if extra_hooks:
        raise D2nbError("extra_hooks only run in single-process training",
                        "add the hook in a Trainer subclass, or train on one GPU")
    return launch_processes(cfg, settings, processes)


def evaluate_only(settings: TrainSettings) -> dict:
    """train_net.py's ``--eval-only``: evaluate ``weights`` (or, with ``resume``, the last
    checkpoint in output_dir) on the validation dataset; return the metrics."""
    settings = check_settings(settings)
    cfg = build_config(settings)
    if not cfg.DATASETS.TEST:
        raise D2nbError(f"no validation dataset to evaluate on for dataset {settings.dataset!r}",
                        "pass val_dataset= a registered name, a COCO json or a Roboflow folder")
    check_dataset_files(cfg.DATASETS.TEST)
    prepare_output_dir(cfg.OUTPUT_DIR)
    setup_run_logging(cfg.OUTPUT_DIR, quiet_console=in_notebook())
    model = Trainer.build_model(cfg)
    AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=settings.resume)
    return plain_metrics(Trainer.test(cfg, model))

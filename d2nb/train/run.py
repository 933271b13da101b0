"""Starting a run, as tools/train_net.py's ``main`` does: ``train`` (in this process, or in
several through ``d2nb.train.launch``) and ``evaluate_only`` (train_net.py's ``--eval-only``).

Both check the settings first (``check_settings``, once) and then, before any model is built
or process started, everything that would otherwise fail later: the config, the datasets and
their files, the weights (a download that cannot happen says so now), the output folder.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from d2nb import zoo
from d2nb.checkpoint import AtomicCheckpointer
from d2nb.data import check_dataset_files
from d2nb.errors import D2nbError
from d2nb.train.config import build_config
from d2nb.train.launch import launch_processes
from d2nb.train.monitor import in_notebook
from d2nb.train.output import mount_drive_for, prepare_output_dir, setup_run_logging
from d2nb.train.result import TrainResult, plain_metrics, write_result
from d2nb.train.resume import decide_resume, trim_metrics, write_dataset_identity
from d2nb.train.settings import TrainSettings, check_settings, training_processes
from d2nb.train.trainer import Trainer, train_in_process
from d2nb.weights import local_weights

ZOO_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/detectron2/"  # detectron2's model_zoo.get_checkpoint_url prefix

logger = logging.getLogger("d2nb.train")


def train(settings: TrainSettings, extra_hooks=()) -> TrainResult:
    """Train as ``settings`` says; return the final iteration and evaluation metrics.

    One process for one GPU or the CPU; detectron2's ``launch`` (DDP over NCCL, or gloo on
    the CPU) for several, with the live view drawn here from rank 0's ``metrics.json``.
    Interrupting (Ctrl-C, the notebook's stop button) saves a checkpoint and returns with
    ``interrupted=True``; running again continues from it (``resume="auto"``, see
    ``d2nb.train.resume``: ``D2nbError`` when ``output_dir`` holds a run of another config). A
    NaN loss, CUDA running out of memory or a full disk stop it with a ``D2nbError`` saying what
    to change; the checkpoints already written stay complete.
    """
    settings = check_settings(settings)  # once: every step below takes these values as they are
    cfg = build_config(settings)  # makes the dataset before any process starts
    mount_drive_for(cfg.OUTPUT_DIR)
    decision = decide_resume(cfg, settings.resume)  # "auto" becomes True or False here
    settings = replace(settings, resume=decision.resume)
    if cfg.MODEL.WEIGHTS and "://" in cfg.MODEL.WEIGHTS and not decision.resume:  # offline: a message, before the model
        from_zoo = cfg.MODEL.WEIGHTS.startswith(ZOO_WEIGHTS_URL)
        local_weights(cfg.MODEL.WEIGHTS, (settings.config or zoo.default_config(False)) if from_zoo else None)
    check_dataset_files([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])  # said now, not mid-training
    prepare_output_dir(cfg.OUTPUT_DIR)
    if decision.message:
        setup_run_logging(cfg.OUTPUT_DIR, quiet_console=in_notebook())  # the line goes to log.txt too
        logger.info(decision.message)
    if decision.finished:
        return evaluate_finished_run(cfg)
    if decision.resume:
        trim_metrics(cfg.OUTPUT_DIR, decision.start_iter - 1)  # the steps redone now are logged again
    write_dataset_identity(cfg)  # what the next run's resume="auto" compares with
    processes = training_processes(settings)
    if processes * settings.num_machines == 1:
        return train_in_process(cfg, settings, list(extra_hooks))
    if extra_hooks:
        raise D2nbError("extra_hooks only run in single-process training",
                        "add the hook in a Trainer subclass, or train on one GPU")
    return launch_processes(cfg, settings, processes)


def evaluate_finished_run(cfg) -> TrainResult:
    """A run that already reached its ``max_iter``: its last checkpoint evaluated again."""
    model = Trainer.build_model(cfg)
    AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
    metrics = plain_metrics(Trainer.test(cfg, model)) if cfg.DATASETS.TEST else {}
    result = TrainResult(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER, metrics, train_seconds=0.0, iterations_run=0)
    write_result(result)
    return result


def evaluate_only(settings: TrainSettings) -> dict:
    """train_net.py's ``--eval-only``: evaluate ``weights`` (or, with ``resume=True``, the last
    checkpoint in output_dir) on the validation dataset; return the metrics."""
    settings = check_settings(settings)
    cfg = build_config(settings)
    if not cfg.DATASETS.TEST:
        raise D2nbError(f"no validation dataset to evaluate on for dataset {settings.dataset!r}",
                        "pass val_dataset= a registered name, a COCO json or a Roboflow folder")
    check_dataset_files(cfg.DATASETS.TEST)
    mount_drive_for(cfg.OUTPUT_DIR)
    prepare_output_dir(cfg.OUTPUT_DIR)
    setup_run_logging(cfg.OUTPUT_DIR, quiet_console=in_notebook())
    model = Trainer.build_model(cfg)
    # only resume=True picks output_dir's checkpoint: "auto" evaluates the weights named
    AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                      resume=settings.resume is True)
    return plain_metrics(Trainer.test(cfg, model))

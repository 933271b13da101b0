"""The trainer and one process's training run.

``Trainer`` is detectron2's ``DefaultTrainer`` with d2nb's parts: atomic checkpoints
(``d2nb.checkpoint``), COCO evaluation, the CPU recipe's model parts and separable ROIAlign,
AdamW for the recipe, and fast mode's step (``d2nb.train.fast_step``: no waits for the GPU
outside the model, a fused SGD) and batched gradient clipping. Its hooks are detectron2's
plus the validation loss (``d2nb.train.validation``), the live monitor (``d2nb.train.monitor``)
and any ``extra_hooks``.

``train_in_process`` runs it in this process (or as one rank of several): logging to
``log.txt``, the seed, the monitor, and what happens when training stops early (a Ctrl-C
saves the completed steps, a NaN loss or CUDA out of memory becomes a ``D2nbError``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from detectron2.engine import AMPTrainer, DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from d2nb.batched_heads import use_batched_heads
from d2nb.checkpoint import AtomicCheckpointer
from d2nb.faults import diverged, is_out_of_memory, out_of_memory
from d2nb.modeling import register as register_model_parts
from d2nb.train.checkpoints import TimedCheckpointer
from d2nb.train.config import optimizer_name
from d2nb.train.fast import clip_per_parameter_foreach, enable_tf32, share_tensors_by_file_name
from d2nb.train.fast_step import FastStepTrainer, fused_sgd
from d2nb.train.interrupt import save_after_interrupt, save_after_out_of_memory
from d2nb.train.monitor import LiveMonitor, in_notebook, run_title
from d2nb.train.output import prints_to_log, setup_run_logging, write_class_names
from d2nb.train.result import TrainResult, plain_metrics, write_result
from d2nb.train.roi_align import use_separable_roi_align
from d2nb.train.settings import CheckedSettings
from d2nb.train.validation import build as build_validation_loss

logger = logging.getLogger("d2nb.train")


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with COCO evaluation, atomic checkpoints and extra hooks."""

    def __init__(self, cfg, extra_hooks=(), validation_loss=None):
        self._extra_hooks = list(extra_hooks)
        self._validation_loss = validation_loss
        super().__init__(cfg)
        if cfg.get("D2NB_FAST_STEP", False) and isinstance(self._trainer, AMPTrainer):
            self._trainer = FastStepTrainer.replacing(self._trainer, cfg.MODEL.DEVICE)

    def after_train(self):
        try:
            super().after_train()
        finally:  # also when a hook's after_train (the final evaluation) fails
            if isinstance(self._trainer, FastStepTrainer):  # DefaultTrainer never calls its loop's after_train
                self._trainer.close()  # the feed thread and the loader's workers, before a notebook's next run

    def load_state_dict(self, state_dict):
        # torch's Optimizer.load_state_dict takes the saved groups' kernel choice (foreach,
        # fused) too: a fast-mode run resumed without it, or the other way, keeps this run's
        optimizer = self._trainer.optimizer
        kernels = [(group.get("foreach"), group.get("fused")) for group in optimizer.param_groups]
        super().load_state_dict(state_dict)
        for group, (foreach, fused) in zip(optimizer.param_groups, kernels):
            group["foreach"], group["fused"] = foreach, fused

    def build_hooks(self):
        # DefaultTrainer makes its checkpointer just before calling this; swap it before the
        # PeriodicCheckpointer hook captures it.
        self.checkpointer = AtomicCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                               trainer=self.checkpointer.checkpointables["trainer"])
        hooks = super().build_hooks()
        if self._validation_loss is not None:  # before the writers, so that they write its scalars
            from detectron2.engine.hooks import PeriodicWriter

            writer = next((i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)), len(hooks))
            hooks.insert(writer, self._validation_loss)
        return hooks + self._extra_hooks

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model; on the CPU its ROIAlign backward runs as matrix products
        (``d2nb.train.roi_align``: same results, a fifth less time per CPU-recipe step); in fast
        mode on a GPU its RPN and ROI heads label and sample the whole batch at once
        (``d2nb.batched_heads``)."""
        register_model_parts()
        model = super().build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu":
            use_separable_roi_align(model)
        elif cfg.get("D2NB_BATCHED_HEADS", False):
            logger.info("Batched RPN and ROI-head loops: %s", ", ".join(use_batched_heads(model)) or "none")
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's training loader; in fast mode its workers hand tensors over by file name."""
        if cfg.get("D2NB_FILE_SYSTEM_SHARING", False) and cfg.DATALOADER.NUM_WORKERS > 0:
            share_tensors_by_file_name()
        return super().build_train_loader(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD as detectron2 builds it, or AdamW where the config says ``SOLVER.OPTIMIZER: AdamW``
        (d2nb's from-scratch CPU recipe: it converges in far fewer steps than SGD). Fast mode's
        SGD is torch's fused one (``D2NB_FAST_STEP``: the same update, which skips itself on the
        GPU when AMP's gradients overflow) and clips per-parameter gradient norms in batched
        operations (same result)."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if cfg.get("D2NB_FOREACH_CLIP", False) and clip.ENABLED and clip.CLIP_TYPE == "norm":
            plain = cfg.clone()
            plain.defrost()
            plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
            return clip_per_parameter_foreach(cls._build_optimizer(plain, model), clip.CLIP_VALUE, clip.NORM_TYPE)
        return cls._build_optimizer(cfg, model)

    @classmethod
    def _build_optimizer(cls, cfg, model):
        import torch
        from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

        if optimizer_name(cfg) != "AdamW":
            if not cfg.get("D2NB_FAST_STEP", False):
                return super().build_optimizer(cfg, model)
            # detectron2's build_optimizer, with the fused kernel in place of foreach
            params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                                  weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
                                                  bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
                                                  weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
            return maybe_add_gradient_clipping(
                cfg, fused_sgd(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                               nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY))

        params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                              weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        return maybe_add_gradient_clipping(
            cfg, torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                   fused=True))  # one fused kernel for all tensors: 4x less time on CPU

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation; in a notebook, without pycocotools' prints (log.txt has them)."""
        with prints_to_log(in_notebook()):
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))


def train_in_process(cfg, settings: CheckedSettings, extra_hooks: list, rank: int = 0) -> TrainResult:
    """Train ``cfg`` here (as ``rank`` of a launched group); rank 0 writes d2nb_result.json."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    setup_run_logging(cfg.OUTPUT_DIR, rank, quiet_console=in_notebook())
    if comm.is_main_process():
        Path(cfg.OUTPUT_DIR, "config.yaml").write_text(cfg.dump())
        write_class_names(cfg)
        if not settings.resume:  # a notebook run again: its metrics, not the last run's followed by its own
            Path(cfg.OUTPUT_DIR, "metrics.json").unlink(missing_ok=True)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    enable_tf32(cfg)
    if settings.checkpoint_minutes and comm.is_main_process():  # a disconnect loses at most that much
        extra_hooks = [TimedCheckpointer(settings.checkpoint_minutes)] + extra_hooks
    monitor = None
    if settings.monitor and comm.is_main_process():
        monitor = LiveMonitor(os.path.join(cfg.OUTPUT_DIR, "training_curves.png"),
                              live=rank == 0 and in_notebook(), title=run_title(cfg))
        extra_hooks = extra_hooks + [monitor]
    logger.info(f"Training {cfg.DATASETS.TRAIN[0]} on {cfg.MODEL.DEVICE} in {comm.get_world_size()} "
                f"process{'es' if comm.get_world_size() > 1 else ''}; writing to {cfg.OUTPUT_DIR}")
    validation_loss = build_validation_loss(cfg, settings.val_loss_period, settings.val_loss_images, cfg.TEST.EVAL_PERIOD)
    trainer = Trainer(cfg, extra_hooks, validation_loss)
    trainer.resume_or_load(resume=settings.resume)
    interrupted = False
    started, first_iter = time.perf_counter(), trainer.start_iter
    try:
        trainer.train()
    except KeyboardInterrupt:
        interrupted = True
        save_after_interrupt(trainer)
    except FloatingPointError as error:  # detectron2's word for a NaN or infinite loss
        last = trainer.checkpointer.get_checkpoint_file() if trainer.checkpointer.has_checkpoint() else None
        raise diverged(cfg, trainer.iter, error, last) from None
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        raise out_of_memory(cfg, trainer.iter, save_after_out_of_memory(trainer)) from None
    metrics = getattr(trainer, "_last_eval_results", None) or {}
    result = TrainResult(cfg.OUTPUT_DIR, trainer.iter, plain_metrics(metrics), interrupted,
                         monitor.overhead if monitor else None, time.perf_counter() - started,
                         trainer.iter - first_iter, validation_loss.seconds if validation_loss else None)
    if comm.is_main_process():
        write_result(result)
    return result

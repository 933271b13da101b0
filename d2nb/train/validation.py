"""Validation loss during training: the model's losses on val pictures, as detectron2 logs
the training losses, without touching the training.

    hook = build(cfg, period=50, images=16, full_period=cfg.TEST.EVAL_PERIOD)   # a trainer hook

Every ``period`` iterations (a multiple of 20, when detectron2 writes) the hook runs the model *in training mode* (the mode in which
detectron2's R-CNN returns losses) on a fixed subset of the val split, and every
``full_period`` iterations on the whole split, and puts ``validation/total_loss`` and each
term (``validation/loss_cls``, ``validation/loss_mask``...) into detectron2's EventStorage:
metrics.json, TensorBoard and the live monitor show them beside the training losses.

What it leaves as it found it, so that a run with validation loss trains exactly as one
without: no gradient is computed; every batch norm's running statistics are restored (in
training mode they would move towards the val pictures); the random generators (torch, CUDA,
numpy, Python) are restored, since RPN and ROI heads sample proposals at random; the val
pictures go through their own mapper (the test-time resize, no flip) and never through the
training loader. With several processes each takes its share of the pictures and the losses
are averaged over all of them.
"""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import torch

PREFIX = "validation/"


POINTS_PER_RUN = 10  # the default period: max_iter // this
WRITER_PERIOD = 20  # detectron2's DefaultTrainer writes metrics.json and TensorBoard every 20 iterations


def default_period(max_iter: int) -> int:
    return max(1, int(max_iter) // POINTS_PER_RUN)


def written_period(period: int) -> int:
    """``period`` rounded up to a multiple of the writers' period: detectron2's writers keep
    only a scalar's latest value, so a value logged between two writes would be lost."""
    return -(-int(period) // WRITER_PERIOD) * WRITER_PERIOD if period else 0


def build(cfg, period: int | None, images: int = 16, full_period: int = 0):
    """The hook for ``cfg`` (its ``DATASETS.TEST[0]`` is the val split), or ``None`` when
    there is no val split or both periods are 0; ``period`` ``None`` = ``default_period``."""
    period = written_period(default_period(cfg.SOLVER.MAX_ITER) if period is None else period)
    from detectron2.engine import HookBase

    if not cfg.DATASETS.TEST or (not period and not full_period):
        return None

    class ValidationLoss(HookBase):
        def __init__(self):
            self.cfg = cfg
            self.period, self.full_period, self.images = int(period or 0), int(full_period or 0), int(images)
            self._subset = None  # mapped inputs of the fixed subset, made on first use
            self.seconds = 0.0  # time spent, mapping the pictures included (TrainResult.validation_loss_seconds)

        def after_step(self):
            iteration = self.trainer.iter + 1
            last = iteration == self.trainer.max_iter
            started = time.perf_counter()
            if self.full_period and (iteration % self.full_period == 0 or last):
                self._log(self._whole_split())
            elif self.period and (iteration % self.period == 0 or last):
                self._log(self._fixed_subset())
            else:
                return
            self.seconds += time.perf_counter() - started

        def _log(self, losses: dict) -> None:
            if losses:
                self.trainer.storage.put_scalars(**{PREFIX + k: v for k, v in losses.items()}, smoothing_hint=False)

        def _fixed_subset(self) -> dict:
            if self._subset is None:
                dicts = _dataset_dicts(self.cfg)
                step = max(1, len(dicts) // max(1, self.images))
                chosen = dicts[::step][: self.images]  # spread over the split, the same every time
                mapper = _mapper(self.cfg)
                self._subset = [mapper(d) for d in _my_share(chosen)]
            return self._losses(self._subset)

        def _whole_split(self) -> dict:
            mapper = _mapper(self.cfg)
            return self._losses(mapper(d) for d in _my_share(_dataset_dicts(self.cfg)))

        def _losses(self, inputs) -> dict:
            model = self.trainer.model
            batch = max(1, int(self.cfg.SOLVER.IMS_PER_BATCH) // _world_size())
            totals, count = {}, 0
            with torch.no_grad(), _kept_as_found(model), _autocast(self.cfg):
                chunk = []
                for item in inputs:
                    chunk.append(item)
                    if len(chunk) == batch:
                        count += _add(totals, model(chunk), len(chunk))
                        chunk = []
                if chunk:
                    count += _add(totals, model(chunk), len(chunk))
            return _averaged(totals, count)

    return ValidationLoss()


def _add(totals: dict, losses: dict, weight: int) -> int:
    for key, value in losses.items():
        totals[key] = totals.get(key, 0.0) + float(value) * weight
    return weight


def _averaged(totals: dict, count: int) -> dict:
    """Per-term means over every process's pictures, plus ``total_loss`` (their sum, as
    detectron2's trainer logs it)."""
    from detectron2.utils import comm

    keys = sorted(totals)
    values = torch.tensor([totals[k] for k in keys] + [float(count)], dtype=torch.float64)
    if comm.get_world_size() > 1:
        gathered = comm.all_gather(values)
        values = torch.stack(gathered).sum(0)
    count = float(values[-1])
    if not count:
        return {}
    means = {k: float(v) / count for k, v in zip(keys, values[:-1])}
    means["total_loss"] = sum(means.values())
    return means


def _world_size() -> int:
    from detectron2.utils import comm

    return comm.get_world_size()


def _my_share(dicts: list) -> list:
    """This process's pictures; every process gets as many (batch norm sync needs that)."""
    from detectron2.utils import comm

    world, rank = comm.get_world_size(), comm.get_rank()
    usable = len(dicts) - len(dicts) % world if len(dicts) >= world else len(dicts)
    return dicts[:usable][rank::world] if world > 1 else dicts


def _dataset_dicts(cfg) -> list:
    from detectron2.data import DatasetCatalog

    return [d for d in DatasetCatalog.get(cfg.DATASETS.TEST[0]) if d.get("annotations")]


def _mapper(cfg):
    """Val pictures with their annotations, resized as at test time, never flipped."""
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T

    return DatasetMapper(
        is_train=True,  # keep the annotations: the losses need them
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT, use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT, use_keypoint=cfg.MODEL.KEYPOINT_ON,
        recompute_boxes=False)


@contextlib.contextmanager
def _autocast(cfg):
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield


@contextlib.contextmanager
def _kept_as_found(model):
    """Training mode on; batch-norm statistics and every random generator restored after."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    saved = [(m.running_mean.clone() if m.running_mean is not None else None,
              m.running_var.clone() if m.running_var is not None else None,
              m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    states = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
              np.random.get_state(), random.getstate())
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        for m, (mean, var, tracked) in zip(norms, saved):
            if mean is not None:
                m.running_mean.copy_(mean)
            if var is not None:
                m.running_var.copy_(var)
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state_all(states[1])
        np.random.set_state(states[2])
        random.setstate(states[3])

"""Fast mode (``fast=True`` on a GPU): speed-ups that keep the model and its loss curve.

``apply_fast_mode`` sets them in the config when ``build_config`` makes it; the trainer reads
them back: ``enable_tf32`` before training, ``clip_per_parameter_foreach`` when it builds the
optimizer, ``d2nb.batched_heads.use_batched_heads`` when it builds the model,
``share_tensors_by_file_name`` when it builds the training loader, and
``d2nb.train.fast_step.FastStepTrainer`` (with a fused SGD) as its step. benchmarks/RESULTS.md
has the measurements behind each choice.
"""

from __future__ import annotations

import os

FAST_MODE_WORKERS = 8  # the lent H100 has 16 cores; detectron2's configs ask for 4


def apply_fast_mode(cfg) -> None:
    """GPU speed-ups that leave the model and its loss curve as they are: mixed precision
    (``SOLVER.AMP``), TF32 matrix products, more data-loading workers, mask targets read
    as bitmasks (``INPUT.MASK_FORMAT bitmask``), and the RPN's and ROI heads' per-picture
    loops run for the whole batch at once (``D2NB_BATCHED_HEADS``, ``d2nb.batched_heads``:
    the same proposals and labels, sampled with other random numbers), and loader workers
    handing tensors over by shared-memory file name (``D2NB_FILE_SYSTEM_SHARING``), and a step
    that never waits for the GPU outside the model (``D2NB_FAST_STEP``, ``d2nb.train.fast_step``:
    batches pinned and copied ahead, losses read behind an event, a fused SGD).

    Measured on the lent H100 (benchmarks/RESULTS.md): a Mask R-CNN step there is bound by the
    main process's CPU, not the GPU (the GPU was busy 0.22 s of a 0.6 s step), and rasterising
    polygon targets per sampled box was its largest share; bitmasks are decoded in the loader
    workers and cropped on the GPU instead. cuDNN autotuning (also only around the backbone,
    whose input sizes repeat) and channels-last memory were slower there, so neither is used.
    """
    cfg.SOLVER.AMP.ENABLED = True
    cfg.DATALOADER.NUM_WORKERS = max(cfg.DATALOADER.NUM_WORKERS, min(FAST_MODE_WORKERS, os.cpu_count() or 1))
    if cfg.MODEL.MASK_ON:
        cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.set_new_allowed(True)
    cfg.D2NB_TF32 = True
    cfg.D2NB_FOREACH_CLIP = True
    cfg.D2NB_BATCHED_HEADS = True
    cfg.D2NB_FILE_SYSTEM_SHARING = True
    cfg.D2NB_FAST_STEP = True
    cfg.set_new_allowed(False)


def clip_per_parameter_foreach(optimizer, max_norm: float, norm_type: float = 2.0):
    """Per-parameter gradient-norm clipping as detectron2's ``SOLVER.CLIP_GRADIENTS`` (type
    ``norm``) does it, every gradient scaled by ``min(1, max_norm / (|g| + 1e-6))``, in four
    batched operations instead of a ``clip_grad_norm_`` call per parameter (a few hundred
    small kernel launches a step, which a GPU step bound by the CPU feels)."""
    import torch

    base = type(optimizer)

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads, norm_type))
            scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, list(scales.unbind()))
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "WithGradientClip", (base,), {"step": step})
    return optimizer


def share_tensors_by_file_name() -> None:
    """Loader workers hand their tensors to the training process by shared-memory file name
    (torch's ``file_system`` sharing strategy, for this process and the workers it starts).
    torch's default passes each tensor's file descriptor over a new socket connection to the
    worker, with an authentication handshake each: four tensors a picture (image, boxes,
    classes, masks), 64 round trips a 16-picture step, each waiting for the busy worker's
    Python to answer. On the H200 the training process waited 45 ms a step for its data that
    way with 8 workers, and 39 ms with 14 (benchmarks/results/NOTES.md)."""
    import torch.multiprocessing

    torch.multiprocessing.set_sharing_strategy("file_system")


def enable_tf32(cfg) -> None:
    """TF32 matrix products and convolutions, where fast mode asked for them (``D2NB_TF32``)."""
    import torch

    if cfg.MODEL.DEVICE == "cuda" and cfg.get("D2NB_TF32", False):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

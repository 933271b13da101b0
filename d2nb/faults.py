"""What stops a training run midway, and the message that says why and what to change.

``train`` turns detectron2's ``FloatingPointError`` (a NaN or infinite loss, or boxes that
became NaN) and CUDA's out-of-memory error into a ``D2nbError`` built here; the checkpoints
already written stay as they are, so nothing trained so far is lost.
"""

from __future__ import annotations

import os
import re

from d2nb.errors import D2nbError


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA's out-of-memory error (and the older RuntimeError spelling of it)."""
    import torch

    out_of_memory = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, out_of_memory) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def diverged(cfg, iteration: int, error: BaseException, last_checkpoint: str | None) -> D2nbError:
    """The message for a loss that became NaN or infinite at ``iteration``."""
    lr = cfg.SOLVER.BASE_LR
    text = str(error).strip()
    detail = (text.splitlines() or [""])[0]
    # detectron2 lists the losses after its first line: name which of them diverged
    bad = re.findall(r"'(\w+)': (?:np\.float\d+\()?(-?inf|nan)", text)
    if bad:
        detail += " " + ", ".join(f"{name} = {value}" for name, value in bad)
    keep = (f"; to keep what was learned before, also pass weights={last_checkpoint!r} (saved before the loss "
            "diverged; resume=True would bring back the old learning rate)" if last_checkpoint else "")
    amp = " or float16 overflow with amp=True," if cfg.SOLVER.AMP.ENABLED else ""
    return D2nbError(
        f"training diverged at iteration {iteration}: the loss became NaN or infinite ({detail}). The usual "
        f"cause is a learning rate too high for the batch (base_lr={lr:g} with ims_per_batch="
        f"{cfg.SOLVER.IMS_PER_BATCH}); boxes of zero size or outside their image,{amp} or a model trained "
        "from scratch with frozen BatchNorm can cause it too",
        f"lower base_lr, e.g. base_lr={lr / 10:g}, and run again{keep}; check the dataset with "
        "d2nb.data.validate.validate_coco(...)")


def out_of_memory(cfg, iteration: int, saved: str | None) -> D2nbError:
    """The message for CUDA running out of memory at ``iteration``; ``saved`` is the
    checkpoint written with the steps completed before it."""
    ims = cfg.SOLVER.IMS_PER_BATCH
    sizes = tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    # three quarters of the image side, about half the memory; multiples of 32 suit the FPN strides
    shorter = max(32, round(max(sizes) * 0.75 / 32) * 32)
    longer = max(shorter, round(cfg.INPUT.MAX_SIZE_TRAIN * 0.75))
    remedies = [f"lower ims_per_batch (e.g. ims_per_batch={ims // 2}; base_lr follows it unless you set it)"] \
        if ims > 1 else []
    remedies.append(f"lower the image size with opts=['INPUT.MIN_SIZE_TRAIN', '({shorter},)', "
                    f"'INPUT.MAX_SIZE_TRAIN', '{longer}']")
    if not cfg.SOLVER.AMP.ENABLED:
        remedies.append("turn on amp=True (float16 activations take half the memory)")
    then = f"; then run again with resume=True to continue from {os.path.basename(saved)}" if saved else ""
    return D2nbError(
        f"the GPU ran out of memory at iteration {iteration}, with ims_per_batch={ims} and training images "
        f"resized to {'-'.join(map(str, sorted({min(sizes), max(sizes)})))} px on the shorter side (at most "
        f"{cfg.INPUT.MAX_SIZE_TRAIN} px on the longer)"
        + (f"; the steps done so far are saved in {os.path.basename(saved)}" if saved else ""),
        ", or ".join(remedies) + then)

"""What an interrupted or failed run keeps: the steps completed before it stopped.

``train`` calls these when the training loop ends early: Ctrl-C or the notebook's stop button
(``KeyboardInterrupt``), or CUDA running out of memory. The checkpoint is saved as
``PeriodicCheckpointer`` names it, with ``last_checkpoint`` pointing at it, so that
``resume=True`` continues on the same LR schedule.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("d2nb.train")


def save_completed_steps(trainer) -> str | None:
    """Save the steps completed before the one in progress (redone on resume); return the
    file's path, or ``None`` when no step completed or this is not the main process."""
    from detectron2.utils import comm

    completed = trainer.iter  # the step in progress is redone on resume
    scheduler = getattr(trainer, "scheduler", None)
    if scheduler is not None:
        # A Ctrl-C may land in the hooks that end a step, after the LR scheduler moved on: count
        # the steps by the scheduler, or the saved schedule runs one ahead of the saved iteration
        # and resume overruns it at the last step ("where in ParamScheduler must be in [0, 1]").
        completed = min(trainer.iter + 1, scheduler.last_epoch)
    if completed <= trainer.start_iter or not comm.is_main_process():
        return None
    trainer.iter = completed - 1
    trainer.checkpointer.save(f"model_{completed - 1:07d}", iteration=completed - 1)  # as PeriodicCheckpointer
    return os.path.join(trainer.cfg.OUTPUT_DIR, f"model_{completed - 1:07d}.pth")


def save_after_out_of_memory(trainer) -> str | None:
    """Free what the failed step held, then save the completed steps; return the file or ``None``."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the failed step held; saving copies tensors to the CPU
    return save_completed_steps(trainer)


def save_after_interrupt(trainer) -> None:
    """Save the completed steps and say how to resume from them."""
    if save_completed_steps(trainer) is None:
        logger.warning("Training interrupted before any step completed; nothing saved.")
        return
    completed = trainer.iter + 1
    logger.warning(
        f"Training interrupted at iteration {completed}. Saved model_{completed - 1:07d}.pth "
        f"and last_checkpoint in {trainer.cfg.OUTPUT_DIR}. Run again with resume=True to "
        f"continue from iteration {completed} on the same LR schedule.")

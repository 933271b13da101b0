"""Which GPUs a run uses: one place that checks the ``gpus`` parameter."""

from __future__ import annotations

from d2nb.errors import D2nbError


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_gpus(gpus=None) -> int:
    """``None`` means every GPU there is (0 without CUDA); 0 means the CPU.

    Accepts ints and whole-number strings (papermill's ``-p gpus 1`` may arrive as text).
    Raises ``D2nbError`` for anything else, or for more GPUs than this machine has.
    """
    available = available_gpus()
    if gpus is None or gpus == "auto":
        return available
    if isinstance(gpus, bool) or not str(gpus).strip().isdigit():
        raise D2nbError(f"gpus must be a whole number (0 for the CPU), got {gpus!r}",
                        "pass e.g. gpus=1, or '-p gpus 1' to papermill; gpus=0 trains on the CPU")
    gpus = int(str(gpus).strip())
    if gpus > available:
        raise D2nbError(
            f"gpus={gpus} asked for, but this machine has {available} CUDA GPU(s)",
            f"pass gpus={available}" + (" (the CPU)" if available == 0 else "")
            + ", or leave gpus unset to use every GPU there is")
    return gpus

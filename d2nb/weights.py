"""Checkpoints by path or URL: one download function for training, inference and evaluation.

A URL (the model zoo's, or any other) is fetched once into detectron2's cache (iopath's
``~/.torch/iopath_cache``, or ``$FVCORE_CACHE``) and read from there afterwards, offline too.
A download that cannot happen (no network, a firewall, a dead URL) fails within seconds with
a ``D2nbError`` that says how to go on, never a urllib traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from d2nb.errors import D2nbError

DOWNLOAD_TIMEOUT_S = 15  # per socket operation: an unreachable host fails fast, a slow download still runs
OFFLINE_FIX = "connect to the internet, pass weights='none' to train from scratch, or a local .pth path"
OFFLINE_FIX_PREDICT = ("connect to the internet, or pass a local .pth path as weights (weights= in 01, 04 and 05; "
                       "--weights on the command line)")


def local_weights(weights: str, config_name: str | None = None, training: bool = True) -> str:
    """A local path for ``weights``, downloading a URL into detectron2's cache first.

    ``config_name`` (the model-zoo config the URL belongs to) and ``training`` (False for
    inference and evaluation, where random weights are no way out) only word the error. Raises
    ``D2nbError`` for a missing file or a download that fails.
    """
    if "://" not in weights:
        if not Path(weights).is_file():
            raise D2nbError(f"weights file {weights!r} does not exist", "pass an existing .pth/.pkl path")
        return weights
    from detectron2.utils.file_io import PathManager

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return PathManager.get_local_path(weights)
    except Exception as error:  # iopath raises whatever urllib raised
        reason = getattr(error, "reason", None) or error
        what = f"the model-zoo checkpoint for {config_name}" if config_name else f"the checkpoint {weights!r}"
        raise D2nbError(f"could not download {what} ({reason})", OFFLINE_FIX if training else OFFLINE_FIX_PREDICT) from None
    finally:
        socket.setdefaulttimeout(previous)


def available_cores() -> int:
    """CPU cores this process may use (a container's or taskset's share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)

"""How ``Predictor.predict`` feeds the model: pictures checked and keyed, resized ahead in
threads, and batches run in order, several at once on a GPU, each in its own CUDA stream.

While one batch waits for the GPU (detectron2's post-processing synchronises often), the
next runs its Python; ``run_batches`` still hands the results back in order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from d2nb.errors import D2nbError
from d2nb.images import LoadedImage

_POOL = None


def resize_pool():
    """The threads that resize pictures (and hash them) while batches run: one pool per process."""
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="d2nb-resize")
    return _POOL


def run_batches(run, count: int, in_flight: int, device: str):
    """``run(0)``, ``run(1)``... in order; with ``in_flight`` > 1, that many at once, each
    worker thread in its own CUDA stream when ``device`` is a GPU."""
    if in_flight == 1:
        yield from (run(n) for n in range(count))
        return
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    local = threading.local()
    device = torch.device(device)

    def in_stream(n):
        if device.type != "cuda":
            return run(n)
        if not hasattr(local, "stream"):
            local.stream = torch.cuda.Stream(device=device)
        with torch.cuda.stream(local.stream):
            return run(n)

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="d2nb-batch") as workers:
        futures = {n: workers.submit(in_stream, n) for n in range(min(in_flight, count))}
        for n in range(count):
            predictions = futures.pop(n).result()
            if n + in_flight < count:
                futures[n + in_flight] = workers.submit(in_stream, n + in_flight)
            yield predictions


def as_loaded(image, index: int) -> LoadedImage:
    """``image`` as a ``LoadedImage``: one already is; a plain array must be RGB uint8."""
    if isinstance(image, LoadedImage):
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise D2nbError(f"image {index} is an array of shape {array.shape} and type {array.dtype}",
                        "pass RGB uint8 arrays (H x W x 3), or use d2nb.images.load_images")
    return LoadedImage(f"image_{index:04d}.png", "array", array, original_size=array.shape[:2])


def image_key(image: np.ndarray) -> str:
    """The predictor's cache key of a picture: a hash of its pixels and shape."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


def progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predicting", unit="image", disable=not enabled or total == 0)

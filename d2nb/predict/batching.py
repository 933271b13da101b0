"""How ``Predictor.predict`` feeds the model: pictures checked and keyed, resized ahead in
threads (on a GPU: copied there as they are and resized there, ``resize_on_gpu``), and batches
run in order, several at once on a GPU, each in its own CUDA stream.

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


def gpu_resizes(resize) -> bool:
    """Whether ``resize_on_gpu`` does what ``resize`` (a detectron2 ``ResizeShortestEdge`` of a
    test config: one size) does: bilinear, as every detectron2 config has it."""
    from PIL import Image

    sizes = set(resize.short_edge_length)
    return len(sizes) == 1 and getattr(resize, "interp", Image.BILINEAR) == Image.BILINEAR


def resize_on_gpu(image, resize):
    """A CxHxW uint8 tensor (on the GPU) resized as detectron2's ``ResizeShortestEdge`` ``resize``
    does it with PIL (bilinear, antialiased when shrinking, rounded to whole levels), as float:
    the same pixels within one level (PIL's fixed-point weights), without the CPU's work, the
    larger share of a batch's time on a GPU (benchmarks/profile_inference.py)."""
    import torch.nn.functional as F
    from detectron2.data import transforms as T

    height, width = image.shape[1:]
    short = resize.short_edge_length[0]
    size = T.ResizeShortestEdge.get_output_shape(height, width, short, resize.max_size) if short else (height, width)
    if tuple(size) == (height, width):
        return image.float()
    resized = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    return resized.round_().clamp_(0, 255)


def run_batches(run, count: int, in_flight: int, device: str):
    """``run(0)``, ``run(1)``... in order; with ``in_flight`` > 1, that many at once, each
    worker thread in its own CUDA stream when ``device`` is a GPU."""
    import torch

    device = torch.device(device)
    streams = _streams(device, in_flight) if device.type == "cuda" else None
    if in_flight == 1:  # on a GPU in a stream of d2nb's own too: the backbone's graphs need one
        for n in range(count):
            if streams is None:
                yield run(n)
                continue
            streams[0].wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(streams[0]):
                found = run(n)
            yield found
        return
    from concurrent.futures import ThreadPoolExecutor

    def in_stream(n):  # batches n and n + in_flight never run at once: they share a stream
        if streams is None:
            return run(n)
        with torch.cuda.stream(streams[n % in_flight]):
            return run(n)

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="d2nb-batch") as workers:
        futures = {n: workers.submit(in_stream, n) for n in range(min(in_flight, count))}
        for n in range(count):
            predictions = futures.pop(n).result()
            if n + in_flight < count:
                futures[n + in_flight] = workers.submit(in_stream, n + in_flight)
            yield predictions


_STREAMS = {}


def _streams(device, count: int) -> list:
    """``count`` CUDA streams of ``device``, the same from call to call (the backbone's CUDA
    graphs are kept per stream)."""
    import torch

    found = _STREAMS.setdefault(str(device), [])
    while len(found) < count:
        found.append(torch.cuda.Stream(device=device))
    return found[:count]


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

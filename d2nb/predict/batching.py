"""How ``Predictor.predict`` feeds the model: pictures checked and keyed, resized ahead in
threads (on a GPU: copied there as they are and resized there, ``resize_on_gpu``), and batches
run in order, several at once on a GPU, each in its own CUDA stream.

While one batch waits for the GPU (detectron2's post-processing synchronises often), the
next runs its Python; ``run_batches`` still hands the results back in order.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

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
    does it with PIL, as float: PIL's own bilinear resampling (``pil_bilinear``), the same
    pixels to the level, without the CPU's work, the larger share of a batch's time on a GPU
    (benchmarks/profile_inference.py). An NxCxHxW stack of pictures of one size is resized
    together (the same pixels, a few dozen kernel launches for the stack instead of a picture)."""
    from detectron2.data import transforms as T

    height, width = image.shape[-2:]
    short = resize.short_edge_length[0]
    size = T.ResizeShortestEdge.get_output_shape(height, width, short, resize.max_size) if short else (height, width)
    return pil_bilinear(image, *size).float()


# PIL's fixed point for 8-bit resampling (libImaging/Resample.c): weights in 22 fractional bits
_PRECISION_BITS = 32 - 8 - 2


def pil_bilinear(image, height: int, width: int):
    """``image`` (CxHxW or NxCxHxW uint8 tensor, any device) resized to ``height`` x ``width`` exactly as
    ``PIL.Image.resize(..., Image.BILINEAR)`` resizes it, which is what detectron2's
    ``ResizeTransform`` does to uint8 pictures: a horizontal then a vertical pass, each a
    weighted sum of neighbours (a triangle filter widened by the scale when shrinking) with
    PIL's integer weights, rounded to uint8 after each pass."""
    if image.shape[-1] != width:
        image = _resample(image, image.dim() - 1, width)
    if image.shape[-2] != height:
        image = _resample(image, image.dim() - 2, height)
    return image


def _resample(image, dim: int, size: int):
    import torch

    index, weight = _pil_weights(image.shape[dim], size, str(image.device))
    total = torch.full((*image.shape[:dim], size, *image.shape[dim + 1:]), 1 << (_PRECISION_BITS - 1),
                       dtype=torch.int32, device=image.device)
    view = (-1, 1) if dim == image.dim() - 2 else (-1,)
    for tap in range(index.shape[1]):
        total += image.index_select(dim, index[:, tap]).int() * weight[:, tap].view(view)
    return (total >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


@lru_cache(maxsize=32)
def _pil_weights(in_size: int, out_size: int, device: str):
    """PIL's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` for the bilinear filter,
    operation for operation in float64: the input index and the int32 weight of every tap of
    every output pixel (taps past a pixel's last one weigh 0)."""
    import torch

    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    taps = np.arange(ksize)
    x = ((first[:, None] + taps[None, :]) - center[:, None] + 0.5) * (1.0 / filterscale)
    weight = np.where(taps[None, :] < count[:, None], np.maximum(1.0 - np.abs(x), 0.0), 0.0)
    total = np.cumsum(weight, axis=1)[:, -1:]  # summed in order, as PIL does
    weight = np.where(total != 0.0, weight / np.where(total != 0.0, total, 1.0), weight)
    fixed = np.trunc(0.5 + weight * (1 << _PRECISION_BITS)).astype(np.int32)
    index = np.minimum(first[:, None] + taps[None, :], in_size - 1)
    return (torch.from_numpy(index).to(device), torch.from_numpy(fixed).to(device))


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

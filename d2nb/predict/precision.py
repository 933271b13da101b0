"""A faster backbone on a GPU: CUDA graphs, and mixed precision that keeps detectron2's results.

``half_precision_backbone(model)`` is what ``Predictor(amp=True)`` does on a GPU. The
backbone's convolutions (with their frozen or eval-mode norms folded in) run in float16,
channels-last; the RPN and ROI heads, which make the boxes and the scores, stay in float32.
Autocast would re-cast every weight on every call and run the heads in float16 too.

``graphed_backbone(model)`` is what ``Predictor()`` (float32) does on a GPU: the same
backbone, the same kernels, launched as CUDA graphs (see ``GraphedBackbone``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger("d2nb.predict")
# one capture at a time in the process: torch.cuda.graph synchronises the whole device and
# empties the allocator's cache before it captures, which breaks a capture under way beside it
# (seen on the H200 with two batches in flight: cudaErrorStreamCaptureUnsupported)
_CAPTURE_LOCK = threading.Lock()


def fold_norms(module: nn.Module) -> int:
    """Fold every frozen or eval-mode batch norm that follows a detectron2 ``Conv2d`` into the
    convolution's weight and bias (the same affine map, one kernel less); return how many."""
    from detectron2.layers import Conv2d, FrozenBatchNorm2d

    folded = 0
    for conv in module.modules():
        norm = getattr(conv, "norm", None)
        if not isinstance(conv, Conv2d) or norm is None:
            continue
        if isinstance(norm, FrozenBatchNorm2d) or (isinstance(norm, nn.BatchNorm2d) and not norm.training
                                                   and norm.track_running_stats):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            with torch.no_grad():
                bias = conv.bias * scale + shift if conv.bias is not None else shift
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            conv.norm = None
            folded += 1
    return folded


class GraphedBackbone(nn.Module):
    """A detectron2 backbone, with ``half`` run in float16 (channels-last) handing float32
    features on, and with ``cuda_graphs`` launched as CUDA graphs.

    With ``cuda_graphs`` (``Predictor`` on a GPU, without test-time augmentation),
    each input shape met on a CUDA stream other than the default one (the predictor runs its
    batches in streams of its own) is captured once as a CUDA graph and replayed after:
    the backbone's hundred-odd kernels are launched by one call instead of one Python call
    each (launching them took longer than running them: ``benchmarks/profile_inference.py``).
    At most ``MAX_GRAPHS`` are kept (pictures of many sizes run as before past that); the
    features a replay returns are the graph's own tensors, valid until the next replay on the
    same stream, which the predictor's batches never overlap. Captures run one at a time
    (``_CAPTURE_LOCK``); one that fails turns the graphs off, with a warning, and the backbone
    runs as before.
    """

    MAX_GRAPHS = 4

    def __init__(self, backbone, half: bool = True, channels_last: bool = True, cuda_graphs: bool = False):
        super().__init__()
        self.body = backbone
        self.half = half
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self._graphs = {}  # (stream, shape): (graph, its input, its outputs)

    @property
    def size_divisibility(self):
        return self.body.size_divisibility

    @property
    def padding_constraints(self):
        return self.body.padding_constraints

    def output_shape(self):
        return self.body.output_shape()

    def forward(self, images):
        if self.cuda_graphs and images.is_cuda and not torch.is_grad_enabled():
            features = self._replay(images)
            if features is not None:
                return features
        return self._run(images)

    def _run(self, images):
        if self.half:
            images = images.half()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.body(images)
        if not self.half and not self.channels_last:
            return dict(features)
        return {name: feature.float().contiguous() for name, feature in features.items()}

    def _replay(self, images):
        stream = torch.cuda.current_stream(images.device)
        if stream == torch.cuda.default_stream(images.device):
            return None  # CUDA refuses captures beside the default stream: run as before
        key = (stream.cuda_stream, tuple(images.shape), images.dtype, torch.is_autocast_enabled("cuda"))
        entry = self._graphs.get(key)
        if entry is None:
            with _CAPTURE_LOCK:
                entry = self._graphs.get(key)
                if entry is None:
                    if len(self._graphs) >= self.MAX_GRAPHS or not self.cuda_graphs:
                        return None
                    entry = self._capture(images, stream)
                    if entry is None:
                        return None
                    self._graphs[key] = entry
        graph, static_input, static_features = entry
        static_input.copy_(images)
        graph.replay()
        return dict(static_features)

    def _capture(self, images, stream):
        try:
            static_input = images.clone()
            self._run(static_input)  # warm-up on this stream: cuDNN chooses its kernels
            graph = torch.cuda.CUDAGraph()
            capture = torch.cuda.Stream(images.device)
            capture.wait_stream(stream)
            # thread_local: the predictor's other batch thread may synchronise meanwhile
            with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
                static_features = self._run(static_input)
            stream.wait_stream(capture)
            return graph, static_input, static_features
        except RuntimeError as error:
            logger.warning("the backbone could not be captured as a CUDA graph (%s); it runs without", error)
            self.cuda_graphs = False
            self._graphs.clear()
            return None


@contextmanager
def tf32_matmul(enabled: bool):
    """TF32 matrix products (the heads' linear layers; cuDNN's convolutions use TF32 already)
    while the block runs, when ``enabled`` (``Predictor(amp=True)``); the setting is put back."""
    before = torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def half_precision_backbone(model: nn.Module, channels_last: bool = True, cuda_graphs: bool = False) -> nn.Module:
    """Put ``model.backbone`` (an eval-mode detectron2 model's) into float16 as described
    above (``cuda_graphs``: see ``HalfPrecisionBackbone``); the model is changed in place and
    returned."""
    backbone = model.backbone
    fold_norms(backbone)
    backbone.half()
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    model.backbone = GraphedBackbone(backbone, half=True, channels_last=channels_last, cuda_graphs=cuda_graphs)
    return model


def graphed_backbone(model: nn.Module) -> nn.Module:
    """Launch ``model.backbone`` (an eval-mode detectron2 model's, float32) as CUDA graphs, one
    per stream and input shape (``GraphedBackbone``): the same weights and kernels, so the
    same features; the model is changed in place and returned."""
    model.backbone = GraphedBackbone(model.backbone, half=False, channels_last=False, cuda_graphs=True)
    return model

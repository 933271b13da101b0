"""Mixed precision that keeps detectron2's results: the backbone in float16, the heads in float32.

``half_precision_backbone(model)`` is what ``Predictor(amp=True)`` does on a GPU. The
backbone's convolutions (with their frozen or eval-mode norms folded in) run in float16,
channels-last; the RPN and ROI heads, which make the boxes and the scores, stay in float32.
Autocast would re-cast every weight on every call and run the heads in float16 too.
"""

from __future__ import annotations

import torch
from torch import nn


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


class HalfPrecisionBackbone(nn.Module):
    """A detectron2 backbone run in float16 (channels-last) that hands float32 features on."""

    def __init__(self, backbone, channels_last: bool = True):
        super().__init__()
        self.body = backbone
        self.channels_last = channels_last

    @property
    def size_divisibility(self):
        return self.body.size_divisibility

    @property
    def padding_constraints(self):
        return self.body.padding_constraints

    def output_shape(self):
        return self.body.output_shape()

    def forward(self, images):
        images = images.half()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return {name: feature.float().contiguous() for name, feature in self.body(images).items()}


def half_precision_backbone(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Put ``model.backbone`` (an eval-mode detectron2 model's) into float16 as described
    above; the model is changed in place and returned."""
    backbone = model.backbone
    fold_norms(backbone)
    backbone.half()
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    model.backbone = HalfPrecisionBackbone(backbone, channels_last)
    return model

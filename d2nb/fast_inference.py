"""Inference speed-ups that keep detectron2's results: used by ``d2nb.predict.Predictor``.

- ``half_precision_backbone(model)``: mixed precision without autocast. The backbone's
  convolutions (with their frozen or eval-mode norms folded in) run in float16, channels-last;
  the RPN and ROI heads, which make the boxes and the scores, stay in float32. Autocast would
  re-cast every weight on every call and run the heads in float16 too.
- ``paste_crops(...)``: each instance's mask pasted only inside its box (plus a pixel), all
  instances of a batch in one ``grid_sample`` and one copy off the GPU, with the arithmetic of
  detectron2's ``paste_masks_in_image``; detectron2 pastes every mask at the size of the
  picture, which for 100 instances on a 12-megapixel photo is over a gigabyte.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Elements of one grid_sample canvas (instances x crop height x crop width): 32 M floats.
CANVAS_LIMIT = 1 << 25


# --------------------------------------------------------------------------- precision


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


# --------------------------------------------------------------------------- masks


def crop_windows(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, 4)`` int windows ``left, top, right, bottom`` (right/bottom exclusive): each box
    and a pixel of margin, inside the picture. No pixel outside it can reach the 0.5 mask
    threshold in detectron2's paste (bilinear weights past a box edge stay under one half)."""
    if not len(boxes):
        return np.zeros((0, 4), np.int64)
    left = np.maximum(0, boxes[:, 0].astype(np.int64) - 1)
    top = np.maximum(0, boxes[:, 1].astype(np.int64) - 1)
    right = np.minimum(width, np.ceil(boxes[:, 2]).astype(np.int64) + 1)
    bottom = np.minimum(height, np.ceil(boxes[:, 3]).astype(np.int64) + 1)
    return np.stack([left, top, np.maximum(left, right), np.maximum(top, bottom)], axis=1)


def paste_in_windows(mask_probs, boxes, windows: np.ndarray, threshold: float = 0.5):
    """``mask_probs`` ``(N, M, M)`` and ``boxes`` ``(N, 4)`` (tensors on one device) pasted into
    their ``windows``: one boolean tensor ``(N, max height, max width)`` whose ``[i, :h_i, :w_i]``
    is instance ``i``'s crop, with detectron2's grid (pixel centres at +0.5, box edges at -1 and 1,
    ``align_corners=False``)."""
    device = mask_probs.device
    sizes = windows[:, 2:] - windows[:, :2]
    out_h, out_w = int(sizes[:, 1].max(initial=0)), int(sizes[:, 0].max(initial=0))
    origin = torch.as_tensor(windows[:, :2], dtype=torch.float32).to(device, non_blocking=True)
    boxes = boxes.to(torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    ys = torch.arange(out_h, device=device, dtype=torch.float32)[None, :] + origin[:, 1:2] + 0.5
    xs = torch.arange(out_w, device=device, dtype=torch.float32)[None, :] + origin[:, 0:1] + 0.5
    ys = (ys - y0[:, None]) / (y1 - y0)[:, None] * 2 - 1
    xs = (xs - x0[:, None]) / (x1 - x0)[:, None] * 2 - 1
    n = len(boxes)
    grid = torch.stack([xs[:, None, :].expand(n, out_h, out_w), ys[:, :, None].expand(n, out_h, out_w)], dim=3)
    pasted = F.grid_sample(mask_probs[:, None].float(), grid, align_corners=False)[:, 0]
    return pasted >= threshold


def paste_crops(mask_probs, boxes, windows: np.ndarray, threshold: float = 0.5) -> list:
    """``[(left, top, bool crop)]`` per instance: ``mask_probs`` ``(N, M, M)`` and their ``boxes``
    ``(N, 4)`` (tensors on the model's device) pasted into ``windows`` (``crop_windows``), in
    picture coordinates. Instances are pasted in groups of similar size, so that no canvas
    passes ``CANVAS_LIMIT``; each group comes off the device in one copy."""
    if not len(windows):
        return []
    heights, widths = windows[:, 3] - windows[:, 1], windows[:, 2] - windows[:, 0]
    order = np.argsort(heights * widths, kind="stable")
    crops = [None] * len(windows)
    start = 0
    while start < len(order):
        stop = start + 1  # sorted by area: grow the group while its canvas fits
        while stop < len(order) and ((stop + 1 - start) * heights[order[start:stop + 1]].max()
                                     * widths[order[start:stop + 1]].max()) <= CANVAS_LIMIT:
            stop += 1
        index = order[start:stop]
        selected = torch.as_tensor(index).to(mask_probs.device)
        pasted = paste_in_windows(mask_probs[selected], boxes[selected], windows[index], threshold).cpu().numpy()
        for row, i in enumerate(index):
            left, top, right, bottom = (int(v) for v in windows[i])
            crops[i] = (left, top, pasted[row, :bottom - top, :right - left].copy())
        start = stop
    return crops

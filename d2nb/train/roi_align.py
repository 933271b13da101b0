"""ROIAlign for training on the CPU, written as two matrix products.

torchvision's CPU ``roi_align`` backward is one serial loop scattering into the feature map;
on two cores it was a quarter of a CPU-recipe training step. Bilinear sampling is separable:
for every RoI and output bin the average over the sampling grid is the product of a weight
over feature rows and one over feature columns, so

    out[r, c, i, j] = sum_h sum_w Ay[r, i, h] * features[image(r), c, h, w] * Ax[r, j, w]

with the same sampling points, grid sizes and border rules as torchvision (``aligned``
included). Both directions are then dense matrix products, which run on every core and which
autograd differentiates by itself. ``ROIAlign`` below is a drop-in for detectron2's
``detectron2.layers.ROIAlign``; ``use_separable_roi_align(model)`` swaps it into a model's
poolers, and the swap changes nothing but the speed (tests compare both to 1e-5).
"""

from __future__ import annotations

import torch
from torch import nn


def _axis_weights(start, length, bins: int, size: int, sampling_ratio: int):
    """``(R, bins, size)``: how much feature row (or column) ``h`` adds to bin ``i`` of RoI ``r``,
    averaged over that bin's samples along this axis, as torchvision's bilinear_interpolate."""
    bin_size = length / bins
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        grid = torch.ceil(length / bins)
    samples = max(int(grid.max().item()) if grid.numel() else 0, 1)
    s = torch.arange(samples, dtype=length.dtype, device=length.device)
    i = torch.arange(bins, dtype=length.dtype, device=length.device)
    grid_ = grid[:, None, None]
    coord = (start[:, None, None] + i[None, :, None] * bin_size[:, None, None]
             + (s[None, None, :] + 0.5) * bin_size[:, None, None] / grid_.clamp(min=1))
    valid = (s[None, None, :] < grid_) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    coord = torch.where(at_end, low.to(coord.dtype), coord)
    fraction = coord - low.to(coord.dtype)
    scale = valid.to(coord.dtype) / grid_.clamp(min=1)
    weights = torch.zeros(start.shape[0], bins, size, dtype=coord.dtype, device=coord.device)
    weights.scatter_add_(2, low, (1 - fraction) * scale)
    weights.scatter_add_(2, high, fraction * scale)
    return weights


def separable_roi_align(features, rois, output_size, spatial_scale: float, sampling_ratio: int,
                        aligned: bool = True):
    """What ``torchvision.ops.roi_align`` returns, for ``features`` NCHW and ``rois`` Kx5
    (image index, x0, y0, x1, y1), computed as matrix products (see the module docstring)."""
    pooled_h, pooled_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, height, width = features.shape
    if not len(rois):  # a pyramid level no RoI was assigned to: nothing to pool, nothing to learn
        return features.new_zeros(0, c, pooled_h, pooled_w)
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x0, rois[:, 4] * spatial_scale - offset - y0
    if not aligned:  # the legacy mode forces RoIs to at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    with torch.no_grad():  # sampling weights depend on the boxes only, which get no gradient here
        rows = _axis_weights(y0, roi_h, pooled_h, height, sampling_ratio)
        columns = _axis_weights(x0, roi_w, pooled_w, width, sampling_ratio)
    images = rois[:, 0].long()
    parts, order = [], []
    for image in torch.unique(images).tolist():
        index = torch.nonzero(images == image).squeeze(1)
        # rows first: (R*ph, H) @ (H, C*W), then each RoI's columns: (R, C*ph, W) @ (R, W, pw)
        by_rows = rows[index].reshape(-1, height) @ features[image].permute(1, 0, 2).reshape(height, c * width)
        by_rows = by_rows.reshape(len(index), pooled_h, c, width).permute(0, 2, 1, 3).reshape(len(index), c * pooled_h, width)
        parts.append(torch.bmm(by_rows, columns[index].transpose(1, 2)).reshape(len(index), c, pooled_h, pooled_w))
        order.append(index)
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


class ROIAlign(nn.Module):
    """detectron2's ``ROIAlign`` (same arguments and results) using ``separable_roi_align``
    where a gradient is needed on the CPU, and torchvision's kernel everywhere else (its
    forward alone is fast, and on a GPU its backward too)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input, rois):
        if input.device.type == "cpu" and input.requires_grad and torch.is_grad_enabled():
            return separable_roi_align(input, rois, self.output_size, self.spatial_scale,
                                       self.sampling_ratio, self.aligned)
        from torchvision.ops import roi_align

        return roi_align(input, rois.to(dtype=input.dtype), self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, separable on CPU")


def use_separable_roi_align(model: nn.Module) -> int:
    """Replace every detectron2 ``ROIAlign`` inside ``model`` by ``ROIAlign`` above; return
    how many were replaced."""
    from detectron2.layers import ROIAlign as Detectron2ROIAlign

    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is Detectron2ROIAlign:
                setattr(module, name, ROIAlign(child.output_size, child.spatial_scale,
                                               child.sampling_ratio, child.aligned))
                replaced += 1
    return replaced

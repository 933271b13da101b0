"""From the model's outputs to ``Prediction``: boxes, scores and classes copied off the GPU
once per batch, and each mask pasted only inside its box.

detectron2 pastes every mask at the size of the picture, which for 100 instances on a
12-megapixel photo is over a gigabyte. Here each instance's mask is pasted inside its box (plus
a pixel), all instances of a batch in one ``grid_sample`` and one copy off the GPU, with the
arithmetic of detectron2's ``paste_masks_in_image``: the same pixels, kept as crops
(``Prediction.masks``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from d2nb.images import LoadedImage
from d2nb.prediction import Labels, Prediction

# Elements of one grid_sample canvas (instances x crop height x crop width): 32 M floats.
CANVAS_LIMIT = 1 << 25


def pastes_masks(model) -> bool:
    """Whether d2nb pastes this model's masks itself (inside each box, see
    ``paste_crops``): R-CNN models with a mask head."""
    from detectron2.modeling import GeneralizedRCNN

    return isinstance(model, GeneralizedRCNN) and bool(getattr(model.roi_heads, "mask_on", False))


def scaled_keeping_mask_probs(instances, height: int, width: int):
    """detectron2's ``detector_postprocess`` (boxes scaled to the picture, clipped, empty ones
    dropped) with the mask probabilities kept unpasted, as ``mask_probs`` ``(N, M, M)``."""
    from detectron2.modeling.postprocessing import detector_postprocess

    fields = instances.get_fields()
    if "pred_masks" in fields:
        fields["mask_probs"] = fields.pop("pred_masks")[:, 0]
    return detector_postprocess(instances, height, width)


def scaled_batch(raw: list, sizes: list) -> list:
    """``scaled_keeping_mask_probs`` for a batch: every picture's boxes scaled, clipped and
    checked for emptiness together, one host synchronisation where ``detector_postprocess``
    makes two a picture. ``sizes``: each picture's ``(height, width)``. Outputs holding other
    fields than boxes, scores, classes and masks go through detectron2's own code."""
    from detectron2.structures import Boxes, Instances

    plain = {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    if not raw or any(not x.has("pred_boxes") or set(x.get_fields()) - plain for x in raw):
        return [scaled_keeping_mask_probs(x, h, w) for x, (h, w) in zip(raw, sizes)]
    counts = [len(x) for x in raw]
    boxes = torch.cat([x.pred_boxes.tensor for x in raw])
    device, dtype = boxes.device, boxes.dtype
    # detector_postprocess's factors (Python floats, which the multiplication rounds to the boxes' dtype)
    factors = torch.tensor([[w / x.image_size[1], h / x.image_size[0]] * 2 for x, (h, w) in zip(raw, sizes)],
                           dtype=dtype, device=device)
    limits = torch.tensor([[w, h] * 2 for h, w in sizes], dtype=dtype, device=device)
    owner = torch.repeat_interleave(torch.arange(len(raw), device=device), torch.tensor(counts, device=device),
                                    output_size=len(boxes))
    boxes = torch.minimum((boxes * factors[owner]).clamp(min=0), limits[owner])
    nonempty = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    whole = bool(nonempty.all()) if len(boxes) else True  # the one synchronisation
    results = []
    for x, (h, w), b, keep in zip(raw, sizes, boxes.split(counts), nonempty.split(counts)):
        fields = {"pred_boxes": Boxes(b), "scores": x.scores, "pred_classes": x.pred_classes}
        if x.has("pred_masks"):
            fields["mask_probs"] = x.pred_masks[:, 0]
        result = Instances((h, w), **fields)
        results.append(result if whole else result[keep])
    return results


def to_predictions(outputs: list, items: list, labels: Labels) -> list:
    """``Prediction`` per picture of a batch; boxes, scores and classes of the whole batch come
    off the GPU in one copy, and so do the masks (pasted inside their boxes)."""
    columns = []
    for output in outputs:
        instances = output.get("instances")
        if instances is None or not instances.has("pred_boxes"):
            columns.append(None)
            continue
        columns.append(torch.cat([instances.pred_boxes.tensor.float(), instances.scores.float()[:, None],
                                  instances.pred_classes.float()[:, None]], dim=1))
    present = [c for c in columns if c is not None]
    table = torch.cat(present).cpu().numpy() if present else np.zeros((0, 6), np.float32)
    counts = [0 if c is None else len(c) for c in columns]
    rows = np.split(table, np.cumsum(counts)[:-1])
    pasted = _paste_batch(outputs, rows, items)
    return [_to_prediction(output, item, labels, row, masks)
            for output, item, row, masks in zip(outputs, items, rows, pasted)]


def _paste_batch(outputs: list, rows: list, items: list) -> list:
    """Mask crops per picture for outputs holding ``mask_probs``: every instance of the batch
    pasted together (``paste_crops``); ``None`` for the other outputs."""
    holding = [o.get("instances") is not None and o["instances"].has("mask_probs") for o in outputs]
    pasted = [[] if has else None for has in holding]
    probs, boxes, windows, owners = [], [], [], []
    for n, (has, output, row, item) in enumerate(zip(holding, outputs, rows, items)):
        if has and len(row):
            probs.append(output["instances"].mask_probs)
            boxes.append(output["instances"].pred_boxes.tensor)
            windows.append(crop_windows(row[:, :4], *item.image.shape[:2]))
            owners += [n] * len(row)
    if probs:
        for owner, crop in zip(owners, paste_crops(torch.cat(probs), torch.cat(boxes), np.concatenate(windows))):
            pasted[owner].append(crop)
    return pasted


def _to_prediction(output: dict, item: LoadedImage, labels: Labels, row: np.ndarray, pasted) -> Prediction:
    height, width = item.image.shape[:2]
    boxes, scores, classes = row[:, :4].copy(), row[:, 4].copy(), row[:, 5].astype(np.int64)
    masks, keypoints = pasted, None
    if "instances" in output:
        instances = output["instances"]
        if masks is None and instances.has("pred_masks"):
            masks = _mask_crops(instances.pred_masks, boxes, height, width)
        if instances.has("pred_keypoints"):
            keypoints = instances.pred_keypoints.float().cpu().numpy()
    segments = None
    if "panoptic_seg" in output:
        panoptic, infos = output["panoptic_seg"]
        panoptic = panoptic.cpu().numpy()
        segments = np.full(panoptic.shape, -1, np.int32)
        for info in infos:
            if not info["isthing"]:
                segments[panoptic == info["id"]] = info["category_id"]
    elif "sem_seg" in output:
        segments = output["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int32)
    return Prediction(item.name, item.image, boxes, scores, classes, labels, masks, keypoints,
                      segments, item.source, item.scale)


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


def pack_bits(mask):
    """A boolean tensor ``(..., W)`` as ``uint8`` ``(..., ceil(W / 8))`` on its device, eight
    pixels a byte in ``numpy.packbits``'s order (the first pixel in the highest bit)."""
    pad = -mask.shape[-1] % 8
    if pad:
        mask = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], pad)], dim=-1)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=mask.device)
    return (mask.unflatten(-1, (-1, 8)).to(torch.uint8) * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: np.ndarray, width: int) -> np.ndarray:
    """``pack_bits``'s bytes, copied to the host, back as the boolean array ``(..., width)``."""
    return np.unpackbits(packed, axis=-1, count=width).view(bool)


def bool_to_host(mask) -> np.ndarray:
    """A boolean tensor as a numpy array. From a GPU it comes packed eight pixels a byte into
    pinned memory: an eighth of the bytes, and no staging copy (the profile of a batch of 16 had
    a fifth of its GPU time in copies of pasted masks to pageable memory)."""
    if mask.device.type != "cuda":
        return mask.cpu().numpy()
    packed = pack_bits(mask)
    host = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(packed, non_blocking=True)
    torch.cuda.current_stream(mask.device).synchronize()
    return unpack_bits(host.numpy(), mask.shape[-1])


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
        pasted = bool_to_host(paste_in_windows(mask_probs[selected], boxes[selected], windows[index], threshold))
        for row, i in enumerate(index):
            left, top, right, bottom = (int(v) for v in windows[i])
            crops[i] = (left, top, pasted[row, :bottom - top, :right - left].copy())
        start = stop
    return crops


def _mask_crops(pred_masks, boxes: np.ndarray, height: int, width: int) -> list:
    """Each instance's full-size mask (pasted by detectron2: panoptic models) cropped to its
    box and a pixel of margin, copied off the GPU in one transfer rather than one per instance."""
    windows = crop_windows(boxes, height, width)
    if not len(windows):
        return []
    flat = torch.cat([mask[top:bottom, left:right].reshape(-1)
                      for mask, (left, top, right, bottom) in zip(pred_masks, windows)])
    flat = flat.cpu().numpy().astype(bool)
    crops, start = [], 0
    for left, top, right, bottom in windows:
        size = (bottom - top) * (right - left)
        crops.append((int(left), int(top), flat[start:start + size].reshape(bottom - top, right - left)))
        start += size
    return crops


def prediction_from_arrays(image: np.ndarray, boxes, scores, classes, class_names, masks=None,
                           name: str = "image.png") -> Prediction:
    """A ``Prediction`` from plain arrays: XYXY ``boxes`` (N x 4), ``scores``, class indices
    into ``class_names`` and, optionally, full-size boolean ``masks`` (N x H x W). For drawing
    and saving detections that did not come from a ``Predictor`` (ground truth, another tool);
    class ``i`` is saved as COCO category id ``i + 1``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = None
    if masks is not None:
        height, width = image.shape[:2]
        crops = _mask_crops(torch.as_tensor(np.asarray(masks, bool)), boxes, height, width)
    labels = Labels(list(class_names), list(range(1, len(class_names) + 1)))
    return Prediction(name, image, boxes, np.asarray(scores, np.float32), np.asarray(classes, np.int64),
                      labels, crops)

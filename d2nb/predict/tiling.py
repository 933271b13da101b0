"""Tiled inference for large pictures: overlapping tiles at full resolution, merged back.

A model resizes every picture to its test size (800 px for the model zoo, 128 px for the CPU
recipe), so a 20 px object on a 4000 px picture shrinks to 4 px and is lost. Tiling runs the
model on overlapping ``tile`` x ``tile`` windows at the picture's own resolution (in batches,
through the predictor's usual path), plus the whole picture once so that objects larger than a
tile stay whole, then maps every detection back to the picture and merges the detections of
one object that several tiles saw:

    predictions = predict_tiled(predictor, images, tile=512, overlap=0.25)

Merging is greedy by score within each class: the best remaining detection takes every other
whose box overlaps it by ``match_threshold`` of the smaller box (intersection over smaller,
``"ios"``: a shape cut by a tile border is a small box inside the whole one) or of the union
(``"iou"``); with ``merge="nms"`` (the default) the leader stays and the others are dropped,
with ``merge="greedy"`` the group becomes one detection (union of boxes and masks, the best
score: SAHI's default). Measured on the large synthetic split (CPU recipe, tiles of 128 px,
overlap 0.35), the union lets a large, confident box from the whole-picture pass swallow the
small shapes inside it: bbox AP 15.6 against 46.4 for ``nms``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from d2nb.errors import D2nbError

DEFAULT_OVERLAP = 0.25
MATCH_THRESHOLD = 0.5
MERGES = ("greedy", "nms")
METRICS = ("ios", "iou")


def tiling_on(tile) -> bool:
    """Whether ``tile`` asks for tiles: ``None``, ``""`` and 0 mean whole-picture inference."""
    return tile not in (None, "", 0)


def check_tiling(tile, overlap) -> tuple:
    """``(tile, overlap)`` as numbers, or a ``D2nbError`` naming the bad value and the fix."""
    try:
        tile_number = float(tile)
    except (TypeError, ValueError):
        tile_number = math.nan
    if not (math.isfinite(tile_number) and tile_number.is_integer() and tile_number >= 32):
        raise D2nbError(f"tile={tile!r} is not a tile size in pixels (a whole number, at least 32)",
                        "pass e.g. tile=512 (--tile 512), or tile=None for whole-picture inference")
    try:
        overlap_number = float(overlap)
    except (TypeError, ValueError):
        overlap_number = math.nan
    if not 0.0 <= overlap_number < 1.0:
        raise D2nbError(f"tile_overlap={overlap!r} is outside [0, 1): it is the fraction of a tile that "
                        "its neighbour covers again",
                        "pass e.g. tile_overlap=0.25 (--tile-overlap 0.25); at least the size of the largest "
                        "object over the tile size keeps every object whole in one tile")
    return int(tile_number), overlap_number


def tile_windows(height: int, width: int, tile: int, overlap: float, name: str = "the picture") -> list:
    """``(x0, y0, x1, y1)`` windows of ``tile`` pixels covering the picture, neighbours
    sharing ``overlap`` of a tile, the last row and column flush with the picture's edges."""
    tile, overlap = check_tiling(tile, overlap)
    if tile > max(height, width):
        raise D2nbError(f"tile={tile} is larger than {name} ({width} x {height} px): there is nothing to tile",
                        f"pass a tile smaller than {max(height, width)} px, e.g. tile={_suggest(height, width)}, "
                        "or tile=None for whole-picture inference")
    stride = max(1, int(round(tile * (1 - overlap))))

    def starts(length):
        if length <= tile:
            return [0]
        positions = list(range(0, length - tile, stride)) + [length - tile]
        return sorted(set(positions))

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def _suggest(height: int, width: int) -> int:
    return max(32, 2 ** int(math.log2(max(32, max(height, width) // 2))))


def predict_tiled(predictor, images, tile: int, overlap: float = DEFAULT_OVERLAP, batch_size: int = 4,
                  progress: bool = True, whole_picture: bool = True, match_threshold: float = MATCH_THRESHOLD,
                  metric: str = "ios", merge: str = "nms") -> list:
    """One merged ``Prediction`` per picture that loaded (as ``Predictor.predict`` returns),
    from its tiles run in batches of ``batch_size`` (and the whole picture, downscaled by the
    model as usual, when ``whole_picture``)."""
    from d2nb.predict.batching import as_loaded

    tile, overlap = check_tiling(tile, overlap)
    _check_merge(metric, merge, match_threshold)
    items = [as_loaded(image, i) for i, image in enumerate(images)]
    items = [item for item in items if item.ok]
    crops, owners = [], []  # every tile of every picture, so that batches fill across pictures
    for n, item in enumerate(items):
        height, width = item.image.shape[:2]
        for window in tile_windows(height, width, tile, overlap, repr(item.name)):
            x0, y0, x1, y1 = window
            crops.append(np.ascontiguousarray(item.image[y0:y1, x0:x1]))
            owners.append((n, x0, y0))
        if whole_picture:
            crops.append(item.image)
            owners.append((n, 0, 0))
    parts = predictor.predict(crops, batch_size=batch_size, progress=progress) if crops else []
    by_picture = [[] for _ in items]
    for (n, x0, y0), part in zip(owners, parts):
        by_picture[n].append((part, x0, y0))
    return [merge_parts(item, found, match_threshold, metric, merge) for item, found in zip(items, by_picture)]


def _check_merge(metric: str, merge: str, match_threshold: float) -> None:
    if metric not in METRICS:
        raise D2nbError(f"tile match metric {metric!r} is not one of {list(METRICS)}", "pass 'ios' or 'iou'")
    if merge not in MERGES:
        raise D2nbError(f"tile merge {merge!r} is not one of {list(MERGES)}", "pass 'greedy' or 'nms'")
    if not 0.0 < float(match_threshold) <= 1.0:
        raise D2nbError(f"match_threshold={match_threshold!r} is outside (0, 1]", "pass e.g. 0.5")


def merge_parts(item, parts: list, match_threshold: float = MATCH_THRESHOLD, metric: str = "ios",
                merge: str = "nms"):
    """One ``Prediction`` for the picture ``item`` (a ``LoadedImage``) from ``[(tile
    prediction, x0, y0)]``: detections moved to picture pixels, then merged by class."""
    if not parts:
        raise D2nbError(f"no tile of {item.name!r} was predicted", "pass a picture that loads")
    first = parts[0][0]
    if any(p.segments is not None for p, _, _ in parts):
        raise D2nbError("tiled inference merges instances; this model predicts panoptic or semantic segments",
                        "pass tile=None for a panoptic or semantic model")
    boxes = np.concatenate([p.boxes.reshape(-1, 4) + [x0, y0, x0, y0] for p, x0, y0 in parts]).astype(np.float32)
    scores = np.concatenate([p.scores for p, _, _ in parts]).astype(np.float32)
    classes = np.concatenate([p.classes for p, _, _ in parts]).astype(np.int64)
    has_masks = first.masks is not None
    masks = [(x0 + mx, y0 + my, crop) for p, x0, y0 in parts for mx, my, crop in (p.masks or [])] if has_masks else None
    has_keypoints = first.keypoints is not None
    keypoints = (np.concatenate([p.keypoints + [x0, y0, 0] for p, x0, y0 in parts]) if has_keypoints else None)
    groups = group_detections(boxes, scores, classes, match_threshold, metric)
    if merge == "nms":
        keep = [group[0] for group in groups]
        merged_boxes = boxes[keep]
        merged_masks = [masks[i] for i in keep] if has_masks else None
    else:
        keep = [group[0] for group in groups]
        merged_boxes = np.array([np.r_[boxes[g, :2].min(0), boxes[g, 2:].max(0)] for g in groups],
                                np.float32).reshape(-1, 4)
        merged_masks = [union_of_crops([masks[i] for i in g]) for g in groups] if has_masks else None
    return replace(first, name=item.name, image=item.image, boxes=merged_boxes, scores=scores[keep],
                   classes=classes[keep], masks=merged_masks,
                   keypoints=keypoints[keep] if has_keypoints else None, source=item.source, scale=item.scale)


def group_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                     match_threshold: float = MATCH_THRESHOLD, metric: str = "ios") -> list:
    """Greedy groups of detections of one object: ``[[leader, member, ...], ...]`` in the
    order of the leaders' scores; a member overlaps its leader by ``match_threshold`` (IoS or
    IoU of the boxes) and has its class."""
    order = np.argsort(-scores, kind="stable")
    taken = np.zeros(len(scores), bool)
    groups = []
    for c in np.unique(classes):
        members = order[classes[order] == c]
        overlap = _box_overlap(boxes[members], boxes[members], metric)
        for position, index in enumerate(members):
            if taken[index]:
                continue
            joins = (overlap[position] >= match_threshold) & ~taken[members]
            joins[position] = True
            group = [int(index)] + [int(m) for m in members[joins] if m != index]
            taken[members[joins]] = True
            groups.append(group)
    groups.sort(key=lambda g: (-scores[g[0]], g[0]))
    return groups


def _box_overlap(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    if metric == "ios":
        base = np.minimum(area_a[:, None], area_b[None, :])
    else:
        base = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, base, out=np.zeros_like(inter), where=base > 0)


def union_of_crops(crops: list) -> tuple:
    """One ``(x0, y0, bool crop)`` covering every crop of ``crops``, the union of their pixels."""
    if len(crops) == 1:
        return crops[0]
    left = min(x for x, _, _ in crops)
    top = min(y for _, y, _ in crops)
    right = max(x + c.shape[1] for x, _, c in crops)
    bottom = max(y + c.shape[0] for _, y, c in crops)
    union = np.zeros((bottom - top, right - left), bool)
    for x, y, crop in crops:
        union[y - top:y - top + crop.shape[0], x - left:x - left + crop.shape[1]] |= crop
    return left, top, union

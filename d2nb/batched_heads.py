"""detectron2's per-picture loops in the RPN and the ROI heads, run for all of a batch's pictures at once.

detectron2 finds each picture's proposals (top-k, clip, NMS per feature level), labels each
picture's anchors and samples each picture's ROI-head proposals in a Python loop, with host
synchronisations in every pass (NMS's output size, ``nonzero``, ``.item()``). On a GPU that
loop, not the arithmetic, sets the pace of a 16-picture training step and of batched
inference (benchmarks/results/NOTES.md has the profile). Here the same steps run as a few
tensor operations over the whole batch, with one host synchronisation each:

- ``find_top_proposals``: detectron2's ``find_top_rpn_proposals``, the same boxes in the same
  order. Its NMS (``nms_groups``) is exact greedy NMS for every (picture, level) group at once:
  the greedy result is the fixed point of "a box is kept unless a kept box of higher score
  overlaps it by more than the threshold", which a few batched passes over the groups'
  overlap matrices reach (Cluster-NMS, Zheng et al. 2020); it loops until nothing changes.
- ``label_and_sample_anchors`` and ``label_and_sample_proposals``: the RPN's and the ROI
  heads' matching (the same labels and matched boxes as detectron2's ``Matcher``) and random
  sampling (the same numbers of positives and negatives, each a uniform random subset, drawn
  from other random numbers than detectron2's ``randperm``).

``use_batched_heads(model)`` puts them on a built model's RPN and ROI heads (on the instances,
not the classes); it leaves subclasses that override these methods, and options it does not
cover (``RPN.BOUNDARY_THRESH``), on detectron2's own code. Fast mode and the GPU predictor
use it.
"""

from __future__ import annotations

import logging
import math
import types

import torch

logger = logging.getLogger("d2nb.batched_heads")

# torchvision's batched_nms offsets each level's boxes (which changes their IoUs' rounding)
# up to this many coordinates, and runs NMS level by level above it; d2nb does the same.
_COORDINATE_TRICK_LIMIT = {"cpu": 4000, "cuda": 100_000}
_IOU_CHUNK = 1 << 25  # overlap-matrix entries computed at a time (a bound on temporary memory)
_NMS_MATRIX_LIMIT = 1 << 28  # above it (pictures x candidates^2), detectron2's NMS picture by picture


def nms_groups(boxes, valid, threshold: float, offsets=None, max_passes: int = 1000, check_every: int = 8):
    """Greedy NMS in every group at once: ``boxes`` (G, N, 4), each group's boxes sorted by
    descending score; ``valid`` (G, N) marks the boxes taking part. Returns the kept boxes as
    a (G, N) bool mask, the same boxes torchvision's ``nms`` keeps in each group. ``offsets``
    (G, 1) is added to a group's coordinates first (torchvision's batched_nms does so).

    Each pass keeps the boxes no kept box of higher score suppresses; a group whose kept set
    did not change in a pass is at the fixed point (greedy NMS's result) and leaves the batch.
    The host looks every ``check_every`` passes (one synchronisation each), so a group with a
    long chain of suppressions (a box kept only because its suppressor was suppressed, and so
    on) costs a few passes over its own matrix, not passes over every group's."""
    groups, n = valid.shape
    if n == 0 or groups == 0:
        return valid.clone()
    if offsets is not None:
        boxes = boxes + offsets[:, :, None]
    weights = _suppression_matrix(boxes, valid, threshold)  # (G, N, N): i (higher score) suppresses j
    weights = weights.to(torch.float16 if boxes.is_cuda else torch.float32)
    result = valid.clone()
    active = torch.arange(groups, device=valid.device)
    keep, passes = valid, 0
    while passes < max_passes:
        for _ in range(check_every):
            before = keep
            keep = valid & ~(torch.bmm(keep[:, None, :].to(weights.dtype), weights)[:, 0] > 0)
        passes += check_every
        moving = (keep != before).any(dim=1)
        settled = ~moving
        result[active[settled]] = keep[settled]
        still = moving.nonzero()[:, 0]  # the host synchronisation of this round
        if len(still) == 0:
            return result
        if len(still) < 0.75 * len(active):  # copying the matrices costs about two passes over them
            active, weights, valid, keep = active[still], weights[still], valid[still], keep[still]
    raise RuntimeError(f"NMS did not settle in {max_passes} passes")  # cannot happen: each pass fixes one more box


def _suppression_matrix(boxes, valid, threshold):
    groups, n = valid.shape
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    later = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu_(1)
    out = torch.empty(groups, n, n, dtype=torch.bool, device=boxes.device)
    step = max(1, _IOU_CHUNK // (n * n))
    for start in range(0, groups, step):
        b, a = boxes[start:start + step], area[start:start + step]
        # torchvision's arithmetic, in its order: inter / (area_i + area_j - inter) > threshold
        width = (torch.min(b[:, :, None, 2], b[:, None, :, 2]) - torch.max(b[:, :, None, 0], b[:, None, :, 0])).clamp_(min=0)
        height = (torch.min(b[:, :, None, 3], b[:, None, :, 3]) - torch.max(b[:, :, None, 1], b[:, None, :, 1])).clamp_(min=0)
        inter = width.mul_(height)
        union = (a[:, :, None] + a[:, None, :]).sub_(inter)
        v = valid[start:start + step]
        out[start:start + step] = inter.div_(union).gt_(threshold).bool() & later & v[:, :, None] & v[:, None, :]
    return out


def find_top_proposals(proposals, pred_objectness_logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk,
                       min_box_size, training):
    """detectron2's ``find_top_rpn_proposals`` (same arguments, same result) for all pictures at once."""
    from detectron2.structures import Boxes, Instances

    num_images, device = len(image_sizes), proposals[0].device
    per_level = [min(logits.shape[1], pre_nms_topk) for logits in pred_objectness_logits]
    width = max(per_level)
    batch = torch.arange(num_images, device=device)[:, None]
    boxes = proposals[0].new_zeros(num_images, len(per_level), width, 4)
    scores = pred_objectness_logits[0].new_full((num_images, len(per_level), width), -math.inf)
    present = torch.zeros(num_images, len(per_level), width, dtype=torch.bool, device=device)
    for level, (boxes_i, logits_i, k) in enumerate(zip(proposals, pred_objectness_logits, per_level)):
        top, index = logits_i.topk(k, dim=1)
        boxes[:, level, :k], scores[:, level, :k], present[:, level, :k] = boxes_i[batch, index], top, True
    finite = torch.isfinite(boxes).all(dim=-1) & torch.isfinite(scores)
    valid = present & finite
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)  # (h, w) per picture
    high = sizes[:, [1, 0, 1, 0]][:, None, None, :]
    boxes = torch.where(valid[..., None], torch.minimum(boxes.clamp(min=0), high), torch.zeros_like(boxes))
    valid &= ((boxes[..., 2] - boxes[..., 0]) > min_box_size) & ((boxes[..., 3] - boxes[..., 1]) > min_box_size)
    offsets = _level_offsets(boxes, valid)
    levels = len(per_level)
    keep = nms_groups(boxes.flatten(0, 1), valid.flatten(0, 1), nms_thresh,
                      offsets=None if offsets is None else offsets.flatten(0, 1)).view_as(valid)
    kept_scores = torch.where(keep, scores, torch.full_like(scores, -math.inf)).flatten(1)
    count = min(post_nms_topk, levels * width)
    top_scores, order = kept_scores.topk(count, dim=1)
    top_boxes = boxes.flatten(1, 2)[batch, order]
    counts = keep.flatten(1).sum(dim=1).clamp(max=count)
    *counts, all_finite = torch.cat([counts, (finite | ~present).all()[None]]).tolist()  # the one synchronisation
    if training and not all_finite:
        raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.")
    results = []
    for n, image_size in enumerate(image_sizes):
        res = Instances(image_size)
        res.proposal_boxes = Boxes(top_boxes[n, :counts[n]])
        res.objectness_logits = top_scores[n, :counts[n]]
        results.append(res)
    return results


def _level_offsets(boxes, valid):
    """torchvision's batched_nms shifts a picture's levels apart (level * (largest coordinate + 1))
    when the picture has at most a limit of coordinates; the shift changes the IoUs' rounding."""
    limit = _COORDINATE_TRICK_LIMIT.get(boxes.device.type)
    if limit is None:
        return None
    largest = torch.where(valid[..., None], boxes, torch.zeros_like(boxes)).flatten(1).max(dim=1).values  # clipped: >= 0
    shifted = (valid.flatten(1).sum(dim=1) * 4) <= limit
    levels = torch.arange(boxes.shape[1], device=boxes.device, dtype=boxes.dtype)
    offsets = levels[None, :] * (largest[:, None] + 1)
    return torch.where(shifted[:, None], offsets, torch.zeros_like(offsets))[..., None]


def pairwise_iou(boxes1, boxes2):
    """detectron2's ``pairwise_iou`` for a batch: (B, M, 4) and (B, N, 4) boxes -> (B, M, N)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    width_height = torch.min(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:]) - torch.max(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    inter = width_height.clamp_(min=0).prod(dim=3)
    return torch.where(inter > 0, inter / (area1[:, :, None] + area2[:, None, :] - inter), torch.zeros(1, dtype=inter.dtype, device=inter.device))


def match(matcher, quality, gt_valid):
    """detectron2's ``Matcher`` on a batch: ``quality`` (B, M, N) with padded ground-truth rows
    (``gt_valid`` False) -> matches (B, N) int64, labels (B, N) int8. A picture without ground
    truth gets matches 0 and the first label, as the Matcher gives it."""
    quality = torch.where(gt_valid[:, :, None], quality, torch.full_like(quality, -1.0))
    if quality.shape[1] == 0:
        shape = (quality.shape[0], quality.shape[2])
        return (torch.zeros(shape, dtype=torch.int64, device=quality.device),
                torch.full(shape, matcher.labels[0], dtype=torch.int8, device=quality.device))
    values, matches = quality.max(dim=1)
    labels = torch.ones_like(matches, dtype=torch.int8)
    for label, low, high in zip(matcher.labels, matcher.thresholds[:-1], matcher.thresholds[1:]):
        labels.masked_fill_((values >= low) & (values < high), label)
    if matcher.allow_low_quality_matches:
        best = quality.max(dim=2, keepdim=True).values  # per ground-truth box
        labels.masked_fill_(((quality == best) & gt_valid[:, :, None]).any(dim=1), 1)
    matches = torch.where(gt_valid.any(dim=1, keepdim=True), matches, torch.zeros_like(matches))
    return matches, labels


def sample(labels, num_samples: int, positive_fraction: float, bg_label: int):
    """detectron2's ``subsample_labels`` for a batch of label rows (B, N): per row, up to
    ``int(num_samples * positive_fraction)`` positives and the rest negatives, each a uniform
    random subset. Returns (positive indices (B, P), their count per row, negative indices
    (B, Q), their count per row); a row's first ``count`` indices are its sample."""
    positive = (labels != -1) & (labels != bg_label)
    negative = labels == bg_label
    max_positive = min(int(num_samples * positive_fraction), labels.shape[1])
    num_positive = positive.sum(dim=1).clamp(max=int(num_samples * positive_fraction))
    num_negative = torch.minimum(negative.sum(dim=1), num_samples - num_positive)
    keys = torch.rand(labels.shape, device=labels.device)
    minus_one = torch.full_like(keys, -1.0)
    positives = torch.where(positive, keys, minus_one).topk(max_positive, dim=1).indices
    negatives = torch.where(negative, keys, minus_one).topk(min(num_samples, labels.shape[1]), dim=1).indices
    return positives, num_positive, negatives, num_negative


def _padded(tensors, length, fill=0.0):
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), fill)
    for i, t in enumerate(tensors):
        out[i, :len(t)] = t
    return out


def _gt_padded(targets, device):
    from detectron2.structures import Boxes

    boxes = [t.gt_boxes.tensor if isinstance(t.gt_boxes, Boxes) else t.gt_boxes for t in targets]
    most = max(len(b) for b in boxes)
    padded = _padded([b.to(device) for b in boxes], most) if boxes else None
    valid = torch.arange(most, device=device)[None, :] < torch.tensor([len(b) for b in boxes], device=device)[:, None]
    return padded, valid


@torch.no_grad()
def label_and_sample_anchors(self, anchors, gt_instances):
    """``RPN.label_and_sample_anchors`` for all pictures at once (bound to an RPN by ``use_batched_heads``)."""
    from detectron2.structures import Boxes

    anchors = Boxes.cat(anchors).tensor
    gt_boxes, gt_valid = _gt_padded(gt_instances, anchors.device)
    quality = pairwise_iou(gt_boxes, anchors[None].expand(len(gt_instances), -1, -1))
    matches, labels = match(self.anchor_matcher, quality, gt_valid)
    del quality
    positives, num_positive, negatives, num_negative = sample(labels, self.batch_size_per_image, self.positive_fraction, 0)
    sampled = torch.full_like(labels, -1)
    rank_p = torch.arange(positives.shape[1], device=labels.device)[None, :] < num_positive[:, None]
    rank_n = torch.arange(negatives.shape[1], device=labels.device)[None, :] < num_negative[:, None]
    # an unsampled index is written with the label it already has (-1) by pointing it at a sentinel column
    sentinel = labels.shape[1]
    sampled = torch.cat([sampled, sampled.new_full((len(labels), 1), -1)], dim=1)
    sampled.scatter_(1, torch.where(rank_p, positives, sentinel), torch.where(rank_p, 1, -1).to(sampled.dtype))
    sampled.scatter_(1, torch.where(rank_n, negatives, sentinel), torch.where(rank_n, 0, -1).to(sampled.dtype))
    sampled = sampled[:, :sentinel]
    matched = torch.gather(gt_boxes, 1, matches[..., None].expand(-1, -1, 4)) if gt_boxes.shape[1] else \
        torch.zeros(len(labels), anchors.shape[0], 4, dtype=anchors.dtype, device=anchors.device)
    return list(sampled.unbind(0)), list(matched.unbind(0))


@torch.no_grad()
def label_and_sample_proposals(self, proposals, targets):
    """``ROIHeads.label_and_sample_proposals`` for all pictures at once (bound by ``use_batched_heads``)."""
    from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
    from detectron2.utils.events import get_event_storage

    if self.proposal_append_gt:
        proposals = add_ground_truth_to_proposals(targets, proposals)
    device = proposals[0].proposal_boxes.tensor.device
    lengths = [len(p) for p in proposals]
    boxes = _padded([p.proposal_boxes.tensor for p in proposals], max(lengths))
    present = torch.arange(max(lengths), device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    gt_boxes, gt_valid = _gt_padded(targets, device)
    matches, labels = match(self.proposal_matcher, pairwise_iou(gt_boxes, boxes), gt_valid)
    gt_classes = _padded([t.gt_classes.to(device) for t in targets], gt_boxes.shape[1]) if gt_boxes.shape[1] else None
    classes = torch.gather(gt_classes, 1, matches) if gt_classes is not None else torch.zeros_like(matches)
    classes = torch.where(labels == 0, self.num_classes, classes)
    classes = torch.where(labels == -1, -1, classes)
    classes = torch.where(gt_valid.any(dim=1, keepdim=True), classes, self.num_classes)
    classes = torch.where(present, classes, -1)
    positives, num_positive, negatives, num_negative = sample(classes, self.batch_size_per_image, self.positive_fraction,
                                                              self.num_classes)
    counts = torch.stack([num_positive, num_negative]).tolist()  # the one host synchronisation
    results = []
    for n, (proposals_n, targets_n) in enumerate(zip(proposals, targets)):
        index = torch.cat([positives[n, :counts[0][n]], negatives[n, :counts[1][n]]])
        sampled = proposals_n[index]
        sampled.gt_classes = classes[n, index]
        if len(targets_n) > 0:
            sampled_targets = matches[n, index]
            for name, value in targets_n.get_fields().items():
                if name.startswith("gt_") and not sampled.has(name):
                    sampled.set(name, value[sampled_targets])
        sampled._d2nb_num_fg = counts[0][n]  # its first samples are its foreground ones
        results.append(sampled)
    storage = get_event_storage()
    storage.put_scalar("roi_head/num_fg_samples", sum(counts[0]) / len(counts[0]))
    storage.put_scalar("roi_head/num_bg_samples", sum(counts[1]) / len(counts[1]))
    return results


def rpn_losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
    """``RPN.losses`` (smooth L1, ``Box2BoxTransform``) for all pictures at once: the regression
    targets in one ``get_deltas`` call instead of one per picture (each with a host
    synchronisation), the sums over the sampled anchors as masked sums instead of boolean
    indexing. The same losses up to the order of the sums. Bound by ``use_batched_heads``."""
    import torch.nn.functional as F
    from detectron2.structures import Boxes
    from detectron2.utils.events import get_event_storage
    from fvcore.nn import smooth_l1_loss

    num_images = len(gt_labels)
    gt_labels = torch.stack(gt_labels)
    positive, valid = gt_labels == 1, gt_labels >= 0
    anchors = Boxes.cat(anchors).tensor if isinstance(anchors[0], Boxes) else torch.cat(anchors)
    num_positive, num_negative = torch.stack([positive.sum(), (gt_labels == 0).sum()]).tolist()
    storage = get_event_storage()
    storage.put_scalar("rpn/num_pos_anchors", num_positive / num_images)
    storage.put_scalar("rpn/num_neg_anchors", num_negative / num_images)
    targets = self.box2box_transform.get_deltas(anchors.repeat(num_images, 1), torch.cat(gt_boxes)).view(num_images, -1, 4)
    predicted = torch.cat(pred_anchor_deltas, dim=1)
    targets = torch.where(positive[..., None], targets, predicted.detach().to(targets.dtype))  # no inf off the positives
    per_anchor = smooth_l1_loss(predicted, targets, beta=self.smooth_l1_beta, reduction="none")
    localization_loss = torch.where(positive[..., None], per_anchor, 0).sum()
    logits = torch.cat(pred_objectness_logits, dim=1)
    per_logit = F.binary_cross_entropy_with_logits(logits, gt_labels.to(torch.float32).clamp(min=0), reduction="none")
    objectness_loss = torch.where(valid, per_logit, 0).sum()
    normalizer = self.batch_size_per_image * num_images
    losses = {"loss_rpn_cls": objectness_loss / normalizer, "loss_rpn_loc": localization_loss / normalizer}
    return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}


def _forward_mask(self, features, instances):
    """``StandardROIHeads._forward_mask`` taking each picture's foreground samples as the first
    ones (``label_and_sample_proposals`` above samples them first and counts them), instead of
    ``select_foreground_proposals``' ``nonzero`` per picture. Bound by ``use_batched_heads``."""
    from detectron2.modeling.roi_heads.roi_heads import StandardROIHeads

    if not (self.mask_on and self.training and all(hasattr(x, "_d2nb_num_fg") for x in instances)):
        return StandardROIHeads._forward_mask(self, features, instances)
    instances = [x[:x._d2nb_num_fg] for x in instances]
    if self.mask_pooler is not None:
        features = self.mask_pooler([features[f] for f in self.mask_in_features], [x.proposal_boxes for x in instances])
    else:
        features = {f: features[f] for f in self.mask_in_features}
    return self.mask_head(features, instances)


def _predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
    with torch.no_grad():
        pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
        return find_top_proposals(pred_proposals, pred_objectness_logits, image_sizes, self.nms_thresh,
                                  self.pre_nms_topk[self.training], self.post_nms_topk[self.training],
                                  self.min_box_size, self.training)


def box_inference(self, predictions, proposals):
    """``FastRCNNOutputLayers.inference`` with detectron2's picture-by-picture
    ``fast_rcnn_inference`` replaced by ``fast_rcnn_inference`` below. Bound by ``use_batched_heads``."""
    if not proposals:
        return [], []
    boxes = self.predict_boxes(predictions, proposals)
    scores = self.predict_probs(predictions, proposals)
    return fast_rcnn_inference(boxes, scores, [x.image_size for x in proposals], self.test_score_thresh,
                               self.test_nms_thresh, self.test_topk_per_image)


def fast_rcnn_inference(boxes, scores, image_shapes, score_thresh: float, nms_thresh: float, topk_per_image: int):
    """detectron2's ``fast_rcnn_inference`` (same arguments; the same instances in the same order
    and the same kept indices) for every picture at once: four or five host synchronisations a
    batch where detectron2 makes several a picture. As torchvision's ``batched_nms`` does picture
    by picture, a picture's classes are shifted apart (class * (largest coordinate + 1)) and
    suppressed as one NMS group up to a number of coordinates, and class by class above it."""
    from detectron2.modeling.roi_heads import fast_rcnn
    from detectron2.structures import Boxes, Instances

    device, pictures, counts = boxes[0].device, len(image_shapes), [len(b) for b in boxes]
    detectron2s = (boxes, scores, image_shapes, score_thresh, nms_thresh, topk_per_image)
    boxes, scores = torch.cat(boxes), torch.cat(scores)[:, :-1]
    rows, classes = scores.shape
    regressed = boxes.shape[1] // 4
    picture = torch.repeat_interleave(torch.arange(pictures, device=device), torch.tensor(counts, device=device),
                                      output_size=rows)
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    high = torch.tensor(image_shapes, dtype=boxes.dtype, device=device)[:, [1, 0, 1, 0]][picture][:, None, :]
    boxes = torch.minimum(boxes.view(rows, regressed, 4).clamp(min=0), high)  # Boxes.clip's arithmetic
    candidates = ((scores > score_thresh) & finite[:, None]).nonzero()  # (row, class): detectron2's order
    row, label = candidates[:, 0], candidates[:, 1]
    owner = picture[row]
    tally = torch.zeros(pictures + 1, dtype=torch.long, device=device)
    tally[:pictures].index_add_(0, owner, torch.ones_like(owner))
    tally[pictures] = (~finite).sum()
    *found, non_finite = tally.tolist()
    widest = max(found, default=0)
    if non_finite or pictures * widest * widest > _NMS_MATRIX_LIMIT:
        # non-finite rows: detectron2 drops them first, which renumbers its kept indices
        return fast_rcnn.fast_rcnn_inference(*detectron2s)
    kept_boxes = boxes[row, 0 if regressed == 1 else label]
    kept_scores = scores[row, label]
    if widest:
        selected = _suppress_by_picture(kept_boxes.float(), kept_scores, label, owner, found, nms_thresh,
                                        topk_per_image)
        row, label, kept_boxes, kept_scores = row[selected], label[selected], kept_boxes[selected], kept_scores[selected]
        shown = torch.bincount(owner[selected], minlength=pictures).tolist()
    else:
        shown = found
    indices = row - torch.repeat_interleave(_starts(counts, device), torch.tensor(shown, device=device),
                                            output_size=len(row))
    results = []
    for shape, b, s, c in zip(image_shapes, kept_boxes.split(shown), kept_scores.split(shown), label.split(shown)):
        result = Instances(shape)
        result.pred_boxes, result.scores, result.pred_classes = Boxes(b), s, c
        results.append(result)
    return results, list(indices.split(shown))


def _suppress_by_picture(boxes, scores, label, owner, found: list, threshold: float, topk: int):
    """Indices of the candidates ``fast_rcnn_inference`` keeps, picture by picture, each
    picture's by descending score (the order torchvision's NMS returns them in)."""
    device = boxes.device
    limit = _COORDINATE_TRICK_LIMIT.get(device.type, 0)
    shifts = [4 * n <= limit for n in found]  # torchvision's choice, picture by picture
    shifted = torch.tensor(shifts, device=device)[owner]
    largest = torch.zeros(len(found), dtype=boxes.dtype, device=device).scatter_reduce_(
        0, owner, boxes.amax(dim=1), "amax", include_self=False)[owner]
    boxes = boxes + torch.where(shifted, label.to(boxes) * (largest + 1), torch.zeros_like(largest))[:, None]
    if all(shifts):
        group, sizes = owner, found  # one group a picture (the usual case)
    else:  # some picture's classes one by one (torchvision's loop over classes)
        key = owner * (label.max() + 2) + torch.where(shifted, -1, label) + 1
        _, group, sizes = torch.unique(key, return_inverse=True, return_counts=True)
        sizes = sizes.tolist()
    order = scores.sort(descending=True, stable=True).indices
    order = order[group[order].sort(stable=True).indices]  # by group, by descending score within
    slot = torch.arange(len(order), device=device) - _starts(sizes, device)[group[order]]
    padded = boxes.new_zeros(len(sizes), max(sizes), 4)
    valid = torch.zeros(len(sizes), max(sizes), dtype=torch.bool, device=device)
    padded[group[order], slot], valid[group[order], slot] = boxes[order], True
    kept = nms_groups(padded, valid, threshold)[group[order], slot]
    # each picture's kept candidates first, by descending score, the rest after them
    ranked = torch.where(kept, scores[order], torch.full_like(scores[order], -math.inf))
    by_score = ranked.sort(descending=True, stable=True).indices
    by_picture = by_score[owner[order][by_score].sort(stable=True).indices]
    rank = torch.arange(len(order), device=device) - _starts(found, device)[owner[order][by_picture]]
    chosen = kept[by_picture] & ((rank < topk) if topk >= 0 else True)
    return order[by_picture][chosen]


def _starts(counts: list, device):
    """Where each of consecutive blocks of ``counts`` elements starts."""
    return torch.tensor([0, *counts[:-1]], dtype=torch.long, device=device).cumsum(0)


def use_batched_heads(model) -> list:
    """Run ``model``'s RPN and ROI-head loops batched (see the module's docstring). Returns the
    names of the methods replaced: none where the model's parts are not detectron2's ``RPN``
    and ``ROIHeads`` methods (a subclass's own override is kept)."""
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.proposal_generator.rpn import RPN
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.modeling.roi_heads.roi_heads import ROIHeads, StandardROIHeads

    replaced = []
    rpn = getattr(model, "proposal_generator", None)
    if isinstance(rpn, RPN):
        if type(rpn).predict_proposals is RPN.predict_proposals:
            rpn.predict_proposals = types.MethodType(_predict_proposals, rpn)
            replaced.append("RPN.predict_proposals")
        if type(rpn).label_and_sample_anchors is RPN.label_and_sample_anchors and rpn.anchor_boundary_thresh < 0:
            rpn.label_and_sample_anchors = types.MethodType(label_and_sample_anchors, rpn)
            replaced.append("RPN.label_and_sample_anchors")
        if (type(rpn).losses is RPN.losses and rpn.box_reg_loss_type == "smooth_l1"
                and type(rpn.box2box_transform) is Box2BoxTransform):
            rpn.losses = types.MethodType(rpn_losses, rpn)
            replaced.append("RPN.losses")
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, ROIHeads) and type(heads).label_and_sample_proposals is ROIHeads.label_and_sample_proposals:
        heads.label_and_sample_proposals = types.MethodType(label_and_sample_proposals, heads)
        replaced.append("ROIHeads.label_and_sample_proposals")
        if isinstance(heads, StandardROIHeads) and type(heads)._forward_mask is StandardROIHeads._forward_mask:
            heads._forward_mask = types.MethodType(_forward_mask, heads)
            replaced.append("StandardROIHeads._forward_mask")
    predictor = getattr(heads, "box_predictor", None)
    if isinstance(predictor, FastRCNNOutputLayers) and type(predictor).inference is FastRCNNOutputLayers.inference:
        predictor.inference = types.MethodType(box_inference, predictor)
        replaced.append("FastRCNNOutputLayers.inference")
    logger.debug("batched heads: %s", ", ".join(replaced) or "none")
    return replaced

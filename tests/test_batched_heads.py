"""d2nb.batched_heads: detectron2's per-picture RPN and ROI-head loops, batched, against detectron2's own code."""

import pytest
import torch
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import nms

from d2nb.batched_heads import find_top_proposals, label_and_sample_anchors, label_and_sample_proposals, match, \
    nms_groups, rpn_losses, sample, use_batched_heads


def clustered_boxes(generator, shape, height=480, width=640, cluster=40.0):
    """Boxes around a grid of centres, so that many overlap and NMS has chains to follow."""
    centres = torch.rand(*shape, 2, generator=generator) * torch.tensor([width, height])
    centres = (centres / cluster).round() * cluster + torch.randn(*shape, 2, generator=generator) * 4
    sizes = torch.rand(*shape, 2, generator=generator) * 120 + 2
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)


def distinct_scores(generator, shape):
    """Scores without ties (tied scores may come out of NMS in either order)."""
    return (torch.randperm(int(torch.tensor(shape).prod()), generator=generator).float() / 1000 - 5).view(shape)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_in_every_group_at_once_keeps_what_torchvision_keeps(threshold):
    generator = torch.Generator().manual_seed(1)
    boxes = clustered_boxes(generator, (6, 300), cluster=25.0)
    scores = distinct_scores(generator, (6, 300)).sort(dim=1, descending=True).values
    valid = torch.rand(6, 300, generator=generator) > 0.1
    keep = nms_groups(boxes, valid, threshold)
    for g in range(6):
        index = valid[g].nonzero()[:, 0]
        expected = torch.zeros(300, dtype=torch.bool)
        expected[index[nms(boxes[g, index], scores[g, index], threshold)]] = True
        assert torch.equal(keep[g], expected)


def test_nms_follows_a_long_chain_of_suppressions():
    # each box overlaps the next by IoU 0.8: greedy keeps every second one; one batched pass would keep only the first
    boxes = torch.tensor([[float(i), 0.0, i + 9.0, 10.0] for i in range(40)])[None]
    keep = nms_groups(boxes, torch.ones(1, 40, dtype=torch.bool), 0.7)
    assert keep[0].tolist() == [i % 2 == 0 for i in range(40)]


def rpn_inputs(generator, images, anchors_per_level):
    proposals = [clustered_boxes(generator, (images, n)) for n in anchors_per_level]
    logits = list(distinct_scores(generator, (images, sum(anchors_per_level))).split(anchors_per_level, dim=1))
    proposals[0][0, :50, 2] = proposals[0][0, :50, 0]  # empty boxes, removed before NMS
    return proposals, logits


@pytest.mark.parametrize("anchors_per_level, pre_nms_topk, post_nms_topk, training", [
    ([3000, 800, 200, 50], 400, 200, True),     # under 4000 coordinates a picture: torchvision shifts the levels apart
    ([5000, 2000, 600, 150, 40], 1000, 1000, False),  # above: torchvision runs NMS level by level
    ([900, 300, 80], 300, 1000, False),          # fewer proposals than post_nms_topk
])
def test_the_batched_proposals_are_detectron2s_box_for_box(anchors_per_level, pre_nms_topk, post_nms_topk, training):
    generator = torch.Generator().manual_seed(2)
    proposals, logits = rpn_inputs(generator, 3, anchors_per_level)
    if not training:  # non-finite predictions are dropped in inference
        proposals[1][0, 5] = float("nan")
        logits[0][1, 7] = float("inf")
    image_sizes = [(480, 640), (400, 600), (480, 500)]
    expected = find_top_rpn_proposals(proposals, logits, image_sizes, 0.7, pre_nms_topk, post_nms_topk, 0.0, training)
    got = find_top_proposals(proposals, logits, image_sizes, 0.7, pre_nms_topk, post_nms_topk, 0.0, training)
    for e, g in zip(expected, got):
        assert g.image_size == e.image_size
        assert torch.equal(g.proposal_boxes.tensor, e.proposal_boxes.tensor)
        assert torch.equal(g.objectness_logits, e.objectness_logits)


def test_batched_proposals_stop_training_on_non_finite_predictions_as_detectron2_does():
    generator = torch.Generator().manual_seed(3)
    proposals, logits = rpn_inputs(generator, 2, [500, 100])
    proposals[0][1, 3, 0] = float("inf")
    logits[0][1, 3] = 100.0  # among the top-k, where detectron2 looks
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_proposals(proposals, logits, [(480, 640)] * 2, 0.7, 200, 100, 0.0, True)


def r50_model():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN",
                         "MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.RESNETS.DEPTH", "50"])
    torch.manual_seed(0)
    return build_model(cfg)


def targets(generator, counts, height=128, width=160):
    out = []
    for n in counts:
        t = Instances((height, width))
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([width - 40, height - 40])
        t.gt_boxes = Boxes(torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=generator) * 30], dim=1))
        t.gt_classes = torch.randint(0, 4, (n,), generator=generator)
        t.gt_masks = BitMasks(torch.rand(n, height, width, generator=generator) > 0.5)
        out.append(t)
    return out


def test_anchor_labels_are_detectron2s_matches_sampled_in_its_proportions():
    from detectron2.structures import pairwise_iou

    model = r50_model()
    rpn = model.proposal_generator
    features = [torch.zeros(3, 256, 128 // s, 160 // s) for s in (4, 8, 16, 32, 64)]
    anchors = rpn.anchor_generator(features)
    gt = targets(torch.Generator().manual_seed(4), [5, 0, 12])
    labels, matched = label_and_sample_anchors(rpn, anchors, gt)
    all_anchors = Boxes.cat(anchors)
    for t, labels_n, matched_n in zip(gt, labels, matched):
        assert labels_n.dtype == torch.int8 and labels_n.shape == (len(all_anchors),)
        matches, expected = rpn.anchor_matcher(pairwise_iou(t.gt_boxes, all_anchors))
        positives, negatives = int((expected == 1).sum()), int((expected == 0).sum())
        assert int((labels_n == 1).sum()) == min(positives, 128)
        assert int((labels_n == 0).sum()) == min(negatives, 256 - min(positives, 128))
        assert bool((expected[labels_n == 1] == 1).all()) and bool((expected[labels_n == 0] == 0).all())
        wanted = t.gt_boxes.tensor[matches] if len(t) else torch.zeros_like(all_anchors.tensor)
        assert torch.equal(matched_n, wanted)


def test_the_batched_matcher_is_detectron2s_matcher_with_low_quality_matches():
    from detectron2.modeling.matcher import Matcher

    generator = torch.Generator().manual_seed(5)
    quality = torch.rand(3, 6, 400, generator=generator) ** 4
    quality[1, :, :] = 0.0
    gt_valid = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    for matcher in (Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True), Matcher([0.5], [0, 1])):
        matches, labels = match(matcher, quality, gt_valid)
        for n in range(3):
            expected_matches, expected_labels = matcher(quality[n, gt_valid[n]])
            assert torch.equal(labels[n], expected_labels)
            assert torch.equal(matches[n], expected_matches)


def test_sampling_draws_every_candidate_equally_often():
    labels = torch.tensor([[1] * 10 + [0] * 20 + [-1] * 5])
    picked = torch.zeros(35)
    torch.manual_seed(6)
    for _ in range(2000):
        positives, num_positive, negatives, num_negative = sample(labels, 8, 0.25, 0)
        assert int(num_positive) == 2 and int(num_negative) == 6
        picked[positives[0, :2]] += 1
        picked[negatives[0, :6]] += 1
    assert picked[30:].sum() == 0
    assert (picked[:10] / 2000 - 0.2).abs().max() < 0.05   # 2 of 10 positives each time
    assert (picked[10:30] / 2000 - 0.3).abs().max() < 0.05  # 6 of 20 negatives


def test_roi_samples_carry_detectron2s_labels_boxes_and_masks():
    from detectron2.structures import pairwise_iou

    model = r50_model()
    heads = model.roi_heads
    generator = torch.Generator().manual_seed(7)
    gt = targets(generator, [4, 0, 9])
    proposals = []
    for n in (300, 120, 1000):
        p = Instances((128, 160))
        p.proposal_boxes = Boxes(clustered_boxes(generator, (n,), 128, 160, cluster=20.0).clamp(min=0))
        p.objectness_logits = torch.randn(n, generator=generator)
        proposals.append(p)
    with EventStorage(0) as storage:
        got = label_and_sample_proposals(heads, proposals, gt)
        batched_fg = storage.latest()["roi_head/num_fg_samples"][0]
        expected = heads.label_and_sample_proposals(proposals, gt)
        assert storage.latest()["roi_head/num_fg_samples"][0] == batched_fg
    for g, e, t in zip(got, expected, gt):
        assert len(g) == len(e)
        assert int((g.gt_classes == 4).sum()) == int((e.gt_classes == 4).sum())
        assert set(g.get_fields()) == set(e.get_fields())
        if len(t):  # each sample's class, box and mask are those of the ground truth detectron2 matches it with
            matches, labels = heads.proposal_matcher(pairwise_iou(t.gt_boxes, g.proposal_boxes))
            assert torch.equal(g.gt_classes, torch.where(labels == 1, t.gt_classes[matches], 4))
            assert torch.equal(g.gt_boxes.tensor, t.gt_boxes.tensor[matches])
            assert torch.equal(g.gt_masks.tensor, t.gt_masks.tensor[matches])


def test_a_model_with_batched_heads_detects_the_same_and_trains():
    model = r50_model().eval()
    images = [{"image": torch.rand(3, 128, 160) * 255, "height": 128, "width": 160},
              {"image": torch.rand(3, 96, 144) * 255, "height": 96, "width": 144}]
    with torch.no_grad():
        expected = model(images)
        assert use_batched_heads(model) == ["RPN.predict_proposals", "RPN.label_and_sample_anchors", "RPN.losses",
                                            "ROIHeads.label_and_sample_proposals", "StandardROIHeads._forward_mask",
                                            "FastRCNNOutputLayers.inference"]
        got = model(images)
    for e, g in zip(expected, got):
        assert torch.equal(g["instances"].pred_boxes.tensor, e["instances"].pred_boxes.tensor)
        assert torch.equal(g["instances"].scores, e["instances"].scores)
    gt = targets(torch.Generator().manual_seed(8), [3, 2], 128, 160)
    gt[1]._image_size = (96, 144)
    for image, t in zip(images, gt):
        image["instances"] = t
    model.train()
    with EventStorage(0):
        losses = model(images)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_batched_heads_leave_a_subclass_own_override_alone():
    from detectron2.modeling.roi_heads import StandardROIHeads

    class Own(StandardROIHeads):
        def label_and_sample_proposals(self, proposals, targets):
            return proposals

    model = r50_model()
    model.roi_heads.__class__ = Own
    assert "ROIHeads.label_and_sample_proposals" not in use_batched_heads(model)


def test_the_batched_rpn_losses_are_detectron2s_losses():
    model = r50_model()
    rpn = model.proposal_generator
    features = [torch.zeros(3, 256, 128 // s, 160 // s) for s in (4, 8, 16, 32, 64)]
    anchors = rpn.anchor_generator(features)
    generator = torch.Generator().manual_seed(11)
    gt = targets(generator, [6, 0, 3])
    with EventStorage(0):
        labels, matched = label_and_sample_anchors(rpn, anchors, gt)
    counts = [len(a) for a in anchors]
    logits = [torch.randn(3, n, generator=generator, requires_grad=True) for n in counts]
    deltas = [torch.randn(3, n, 4, generator=generator, requires_grad=True) for n in counts]
    with EventStorage(0) as storage:
        expected = rpn.losses(anchors, logits, labels, deltas, matched)
        expected_counts = storage.latest()["rpn/num_pos_anchors"][0], storage.latest()["rpn/num_neg_anchors"][0]
        got = rpn_losses(rpn, anchors, logits, labels, deltas, matched)
        assert (storage.latest()["rpn/num_pos_anchors"][0], storage.latest()["rpn/num_neg_anchors"][0]) == expected_counts
    assert set(got) == set(expected) == {"loss_rpn_cls", "loss_rpn_loc"}
    for name in expected:
        assert torch.isfinite(got[name]) and torch.allclose(got[name], expected[name], rtol=1e-5), name
        expected_grads = torch.autograd.grad(expected[name], logits + deltas, allow_unused=True, retain_graph=True)
        got_grads = torch.autograd.grad(got[name], logits + deltas, allow_unused=True, retain_graph=True)
        for e, g in zip(expected_grads, got_grads):
            if e is None:  # this loss does not depend on that input
                assert g is None or not g.any()
            else:
                assert torch.isfinite(g).all() and torch.allclose(g, e, atol=1e-7)


def test_the_mask_head_trains_on_the_foreground_samples_detectron2_selects():
    from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals

    model = r50_model().train()
    heads = model.roi_heads
    use_batched_heads(model)
    generator = torch.Generator().manual_seed(12)
    gt = targets(generator, [4, 7])
    proposals = []
    for n in (300, 500):
        p = Instances((128, 160))
        p.proposal_boxes = Boxes(clustered_boxes(generator, (n,), 128, 160, cluster=20.0).clamp(min=0))
        p.objectness_logits = torch.randn(n, generator=generator)
        proposals.append(p)
    features = {f: torch.randn(2, 256, 128 // s, 160 // s, generator=generator)
                for f, s in zip(["p2", "p3", "p4", "p5"], (4, 8, 16, 32))}
    with EventStorage(0) as storage:
        sampled = heads.label_and_sample_proposals(proposals, gt)
        selected, _ = select_foreground_proposals(sampled, heads.num_classes)
        assert [len(x) for x in selected] == [x._d2nb_num_fg for x in sampled]
        for x, fg in zip(sampled, selected):  # the foreground samples come first
            assert torch.equal(x[:len(fg)].proposal_boxes.tensor, fg.proposal_boxes.tensor)
        torch.manual_seed(3)
        got = heads._forward_mask(features, sampled)["loss_mask"]
        got_accuracy = storage.latest()["mask_rcnn/accuracy"][0]
        torch.manual_seed(3)
        expected = type(heads)._forward_mask(heads, features, sampled)["loss_mask"]
        assert storage.latest()["mask_rcnn/accuracy"][0] == got_accuracy
    assert torch.equal(got, expected)


def box_head_outputs(generator, counts, classes, regressed):
    """Per-picture predicted boxes (several near each grid point, so NMS has work) and class
    probabilities, as ``FastRCNNOutputLayers.predict_boxes`` and ``predict_probs`` give them."""
    boxes, scores = [], []
    for n in counts:
        centres = (torch.rand(n, 1, 2, generator=generator) * torch.tensor([640.0, 480.0]) / 30).round() * 30
        sizes = torch.rand(n, regressed, 2, generator=generator) * 100 + 2
        centres = centres + torch.randn(n, regressed, 2, generator=generator) * 5
        boxes.append(torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1).view(n, regressed * 4))
        scores.append((torch.randn(n, classes + 1, generator=generator) * 3).softmax(dim=-1))
    return boxes, scores


@pytest.mark.parametrize("counts, classes, regressed, score_thresh, topk", [
    ([300, 200, 0, 50], 4, 1, 0.05, 100),   # class-agnostic boxes; a picture without proposals
    ([300, 200, 10, 50], 4, 4, 0.05, 100),  # a box per class
    ([1000, 30], 4, 1, 0.05, -1),           # 4000 coordinates: torchvision's NMS class by class on the CPU
    ([1000, 1000], 80, 80, 0.05, 100),      # COCO's classes, top 100
    ([100, 100], 4, 1, 0.99, 100),          # next to nothing above the threshold
    ([0, 0], 4, 1, 0.05, 100),
])
def test_batched_box_inference_is_detectron2s_picture_by_picture(counts, classes, regressed, score_thresh, topk):
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference as detectron2s

    from d2nb.batched_heads import fast_rcnn_inference

    boxes, scores = box_head_outputs(torch.Generator().manual_seed(len(counts) * classes), counts, classes, regressed)
    shapes = [(480, 640), (300, 200), (480, 640), (64, 640)][:len(counts)]
    expected, expected_rows = detectron2s(boxes, scores, shapes, score_thresh, 0.5, topk)
    got, got_rows = fast_rcnn_inference(boxes, scores, shapes, score_thresh, 0.5, topk)
    assert sum(map(len, expected)) > 0 or sum(counts) == 0 or score_thresh > 0.9
    for e, g, e_rows, g_rows in zip(expected, got, expected_rows, got_rows):
        assert g.image_size == e.image_size
        assert torch.equal(g.pred_boxes.tensor, e.pred_boxes.tensor)
        assert torch.equal(g.scores, e.scores) and torch.equal(g.pred_classes, e.pred_classes)
        assert torch.equal(g_rows, e_rows)


def test_batched_box_inference_leaves_non_finite_predictions_to_detectron2():
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference as detectron2s

    from d2nb.batched_heads import fast_rcnn_inference

    boxes, scores = box_head_outputs(torch.Generator().manual_seed(3), [50, 40], 4, 1)
    boxes[0][7, 2] = float("inf")  # detectron2 drops the row, which renumbers the kept rows after it
    expected, expected_rows = detectron2s(boxes, scores, [(480, 640)] * 2, 0.05, 0.5, 100)
    got, got_rows = fast_rcnn_inference(boxes, scores, [(480, 640)] * 2, 0.05, 0.5, 100)
    for e, g, e_rows, g_rows in zip(expected, got, expected_rows, got_rows):
        assert torch.equal(g.pred_boxes.tensor, e.pred_boxes.tensor) and torch.equal(g_rows, e_rows)

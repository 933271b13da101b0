"""d2nb's batched RPN and ROI-head steps against detectron2's per-picture loops, on this machine's GPU.

On one batch of synthetic pictures through an R-50 Mask R-CNN (a trained run's, or random
weights): the box head's inference (``fast_rcnn_inference``) and ``detector_postprocess``, the RPN's proposals (training and inference settings) found by
``d2nb.batched_heads.find_top_proposals`` and by detectron2's ``find_top_rpn_proposals``, picture
by picture (identical boxes and scores, or how many differ), and the time each takes
(synchronised, median of ``--repeats``); then the anchor labelling and the ROI-head sampling,
timed the same way. The tests check the same on the CPU; this is the check on a GPU, where
float arithmetic and kernels differ.

    python benchmarks/check_batched_heads.py --ims 16 --size 480x640
    python benchmarks/check_batched_heads.py --config /tmp/d2nb-bench-train/fast --out benchmarks/results/batched_heads_h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(function, repeats: int) -> tuple:
    result = function()
    seconds = []
    for _ in range(repeats):
        _sync()
        started = time.perf_counter()
        result = function()
        _sync()
        seconds.append(time.perf_counter() - started)
    return result, 1000 * statistics.median(seconds)


def build(args):
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.set_new_allowed(True)
    if args.config:
        path = Path(args.config)
        cfg.merge_from_file(str(path / "config.yaml" if path.is_dir() else path))
    else:
        cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
        cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.ROI_HEADS.NUM_CLASSES", "4"])
    cfg.MODEL.DEVICE = DEVICE
    model = build_model(cfg)
    if args.config and Path(args.config).is_dir():
        DetectionCheckpointer(model).load(str(Path(args.config) / "model_final.pth"))
    return cfg, model


def batch(cfg, ims: int, size: str):
    from detectron2.data import DatasetCatalog, DatasetMapper

    from d2nb.data import SyntheticSpec, register_synthetic

    height, width = map(int, size.split("x"))
    data = register_synthetic(SyntheticSpec(height=height, width=width))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MASK_FORMAT = "bitmask"
    mapper = DatasetMapper(cfg, is_train=True)
    items = []
    for record in DatasetCatalog.get(data.train)[:ims]:
        item = mapper(record)
        item["image"], item["instances"] = item["image"].to(DEVICE), item["instances"].to(DEVICE)
        items.append(item)
    return items


def same(a, b) -> bool:
    return len(a) == len(b) and torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor) and \
        torch.equal(a.objectness_logits, b.objectness_logits)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="a trained run's folder or a yaml (default: R-50, random weights)")
    parser.add_argument("--ims", type=int, default=16)
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
    from detectron2.utils.events import EventStorage

    import d2nb.batched_heads as batched
    import d2nb.modeling

    d2nb.modeling.register()
    cfg, model = build(args)
    items = batch(cfg, args.ims, args.size)
    rpn, heads = model.proposal_generator, model.roi_heads
    report = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/check_batched_heads.py " +
              " ".join(sys.argv[1:] if argv is None else argv), "ims": args.ims, "size": args.size}
    with torch.no_grad(), EventStorage(0):
        images = model.preprocess_image(items)
        features = model.backbone(images.tensor)
        features_rpn = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(features_rpn)
        logits, deltas = rpn.rpn_head(features_rpn)
        logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
        deltas = [x.view(x.shape[0], -1, rpn.anchor_generator.box_dim, x.shape[-2], x.shape[-1])
                  .permute(0, 3, 4, 1, 2).flatten(1, -2) for x in deltas]
        proposals = rpn._decode_proposals(anchors, deltas)
        ok = True
        for training in (True, False):
            arguments = (proposals, logits, images.image_sizes, rpn.nms_thresh, rpn.pre_nms_topk[training],
                         rpn.post_nms_topk[training], rpn.min_box_size, training)
            expected, detectron2_ms = timed(lambda: find_top_rpn_proposals(*arguments), args.repeats)
            got, d2nb_ms = timed(lambda: batched.find_top_proposals(*arguments), args.repeats)
            identical = sum(same(e, g) for e, g in zip(expected, got))
            kept = [len(set(map(tuple, e.proposal_boxes.tensor.tolist())) & set(map(tuple, g.proposal_boxes.tensor.tolist())))
                    / max(1, len(e)) for e, g in zip(expected, got)]
            name = "proposals_training" if training else "proposals_inference"
            report[name] = {"pre_nms_topk": rpn.pre_nms_topk[training], "identical_pictures": identical,
                            "pictures": len(expected), "shared_boxes_min": min(kept),
                            "detectron2_ms": round(detectron2_ms, 2), "d2nb_ms": round(d2nb_ms, 2),
                            "speed_up": round(detectron2_ms / d2nb_ms, 2)}
            print(f"{name}: {identical}/{len(expected)} pictures identical (boxes shared, least: {min(kept):.4f}); "
                  f"detectron2 {detectron2_ms:.1f} ms, d2nb {d2nb_ms:.1f} ms (x{detectron2_ms / d2nb_ms:.2f})", flush=True)
            ok &= min(kept) > 0.99
        # the box head's inference (filter, clip, per-class NMS, top-k) and detector_postprocess
        from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
        from detectron2.structures import Boxes, Instances

        from d2nb.predict.postprocess import scaled_batch, scaled_keeping_mask_probs

        found = batched.find_top_proposals(proposals, logits, images.image_sizes, rpn.nms_thresh,
                                           rpn.pre_nms_topk[False], rpn.post_nms_topk[False], rpn.min_box_size, False)
        head_features = [features[f] for f in heads.box_in_features]
        predictions = heads.box_predictor(heads.box_head(heads.box_pooler(head_features, [x.proposal_boxes for x in found])))
        predictor = heads.box_predictor
        arguments = (predictor.predict_boxes(predictions, found), predictor.predict_probs(predictions, found),
                     [x.image_size for x in found], 0.05, predictor.test_nms_thresh, predictor.test_topk_per_image)
        (expected, expected_rows), detectron2_ms = timed(lambda: fast_rcnn_inference(*arguments), args.repeats)
        (got, got_rows), d2nb_ms = timed(lambda: batched.fast_rcnn_inference(*arguments), args.repeats)
        identical = sum(torch.equal(e.pred_boxes.tensor, g.pred_boxes.tensor) and torch.equal(e.scores, g.scores)
                        and torch.equal(e.pred_classes, g.pred_classes) and torch.equal(er, gr)
                        for e, g, er, gr in zip(expected, got, expected_rows, got_rows))
        report["box_inference"] = {"identical_pictures": identical, "pictures": len(expected),
                                   "instances": sum(map(len, expected)), "detectron2_ms": round(detectron2_ms, 2),
                                   "d2nb_ms": round(d2nb_ms, 2), "speed_up": round(detectron2_ms / d2nb_ms, 2)}
        print(f"box_inference (score floor 0.05): {identical}/{len(expected)} pictures identical, "
              f"{sum(map(len, expected))} instances; detectron2 {detectron2_ms:.1f} ms, d2nb {d2nb_ms:.1f} ms "
              f"(x{detectron2_ms / d2nb_ms:.2f})", flush=True)
        ok &= identical == len(expected)
        sizes = [(item["height"], item["width"]) if "height" in item else item["image"].shape[1:] for item in items]
        def fresh():  # detector_postprocess scales the boxes in place
            return [Instances(x.image_size, **{k: v.clone() if torch.is_tensor(v) else Boxes(v.tensor.clone())
                                                for k, v in x.get_fields().items()}) for x in got]

        theirs, detectron2_ms = timed(lambda: [scaled_keeping_mask_probs(x, h, w) for x, (h, w) in zip(fresh(), sizes)],
                                      args.repeats)
        ours, d2nb_ms = timed(lambda: scaled_batch(fresh(), sizes), args.repeats)
        identical = sum(torch.equal(e.pred_boxes.tensor, g.pred_boxes.tensor) for e, g in zip(theirs, ours))
        report["postprocess"] = {"identical_pictures": identical, "pictures": len(ours),
                                 "detectron2_ms": round(detectron2_ms, 2), "d2nb_ms": round(d2nb_ms, 2),
                                 "speed_up": round(detectron2_ms / d2nb_ms, 2)}
        print(f"postprocess: {identical}/{len(ours)} pictures identical; detectron2's detector_postprocess "
              f"{detectron2_ms:.1f} ms, d2nb {d2nb_ms:.1f} ms (x{detectron2_ms / d2nb_ms:.2f})", flush=True)
        ok &= identical == len(ours)
        gt = [item["instances"] for item in items]
        from detectron2.modeling.proposal_generator.rpn import RPN
        from detectron2.modeling.roi_heads.roi_heads import ROIHeads

        for name, plain, ours, inputs in [
                ("anchor_labels", RPN.label_and_sample_anchors, batched.label_and_sample_anchors, (anchors, gt)),
                ("roi_sampling", ROIHeads.label_and_sample_proposals, batched.label_and_sample_proposals,
                 (batched.find_top_proposals(proposals, logits, images.image_sizes, rpn.nms_thresh, rpn.pre_nms_topk[True],
                                             rpn.post_nms_topk[True], rpn.min_box_size, True), gt))]:
            owner = rpn if name == "anchor_labels" else heads
            _, detectron2_ms = timed(lambda: plain(owner, *inputs), args.repeats)
            _, d2nb_ms = timed(lambda: ours(owner, *inputs), args.repeats)
            report[name] = {"detectron2_ms": round(detectron2_ms, 2), "d2nb_ms": round(d2nb_ms, 2),
                            "speed_up": round(detectron2_ms / d2nb_ms, 2)}
            print(f"{name}: detectron2 {detectron2_ms:.1f} ms, d2nb {d2nb_ms:.1f} ms (x{detectron2_ms / d2nb_ms:.2f})",
                  flush=True)
    report["ok"] = bool(ok)
    print("OK" if ok else "DIFFERENT", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    np.random.seed(0)
    raise SystemExit(main())

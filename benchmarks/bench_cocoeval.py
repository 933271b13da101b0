"""COCO evaluation speed: detectron2's C++ ``COCOeval_opt`` against pycocotools' ``COCOeval``.

Both score the same results of ``--images`` pictures (default 5,000, the size of COCO
val2017) in this process: ground truth with COCO's mix of object sizes and 80 categories,
and detections made from it (shifted boxes with scores, some of another class, some on empty
background) so that every branch of the matching runs. Times ``evaluate()`` plus
``accumulate()``, the part that differs, and checks that both give the same 12 AP/AR numbers.

    python benchmarks/bench_cocoeval.py --out benchmarks/results/cocoeval.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def make_coco(images: int, per_image: float, detections: int, seed: int = 0):
    """Ground truth as a COCO dict and detections as a results list."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": f"class{i + 1}"} for i in range(80)]
    gt_images, annotations, results = [], [], []
    for image_id in range(1, images + 1):
        width, height = 640, 480
        gt_images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        count = rng.poisson(per_image)
        sides = np.exp(rng.uniform(np.log(8), np.log(400), size=count))  # small, medium and large
        boxes = []
        for side in sides:
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, max(1, width - w)), rng.uniform(0, max(1, height - h))
            category = int(rng.integers(1, 81))
            boxes.append((x, y, w, h, category))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.01)})
        for _ in range(detections):
            if boxes and rng.random() < 0.7:  # a found object: shifted, sometimes labelled wrong
                x, y, w, h, category = boxes[rng.integers(len(boxes))]
                jitter = rng.normal(0, 0.1, size=4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
                if rng.random() < 0.1:
                    category = int(rng.integers(1, 81))
            else:  # background
                w, h = rng.uniform(8, 200, size=2)
                box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
                category = int(rng.integers(1, 81))
            results.append({"image_id": image_id, "category_id": category, "bbox": [float(v) for v in box],
                            "score": float(rng.random())})
    return {"images": gt_images, "annotations": annotations, "categories": categories}, results


def time_eval(evaluator_class, gt_dict: dict, results: list) -> tuple:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = evaluator_class(gt, dt, "bbox")
        started = time.perf_counter()
        evaluator.evaluate()
        evaluator.accumulate()
        seconds = time.perf_counter() - started
        evaluator.summarize()
    return seconds, [float(v) for v in evaluator.stats]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--objects", type=float, default=7.3, help="mean ground-truth objects per picture (COCO: 7.3)")
    parser.add_argument("--detections", type=int, default=100, help="detections per picture (COCO's limit: 100)")
    parser.add_argument("--out", default=None, help="write the results as json here")
    args = parser.parse_args(argv)
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.cocoeval import COCOeval

    gt_dict, results = make_coco(args.images, args.objects, args.detections)
    print(f"{args.images} pictures, {len(gt_dict['annotations'])} ground-truth boxes, {len(results)} detections",
          flush=True)
    theirs, their_stats = time_eval(COCOeval, gt_dict, results)
    print(f"pycocotools COCOeval: {theirs:.1f} s", flush=True)
    ours, our_stats = time_eval(COCOeval_opt, gt_dict, results)
    same = bool(np.allclose(our_stats, their_stats, atol=1e-6, equal_nan=True))
    print(f"detectron2 COCOeval_opt: {ours:.1f} s (x{theirs / ours:.1f} faster); "
          f"same AP/AR: {same} (AP {our_stats[0]:.4f} vs {their_stats[0]:.4f})")
    if args.out:
        import detectron2

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "command": " ".join(["python", *sys.argv]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "detectron2": detectron2.__version__, "date": time.strftime("%Y-%m-%d")},
            "images": args.images, "ground_truth_boxes": len(gt_dict["annotations"]), "detections": len(results),
            "pycocotools_seconds": theirs, "cocoeval_opt_seconds": ours, "speedup": theirs / ours,
            "same_stats": same, "pycocotools_stats": their_stats, "cocoeval_opt_stats": our_stats}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiled inference on large pictures: accuracy and speed against whole-picture inference,
and against SAHI's sliced prediction of the same model (when ``sahi`` is installed).

The pictures are the large synthetic split (``d2nb.data.LargeSpec``: 2048 x 2048, shapes of
10-40 px, the default classes); the model is a training run of the CPU recipe (03_train's
output_dir). For each way of predicting, in this process: the median seconds per picture
over ``--repeats`` passes, images/s, and COCO AP, AP_small and the recall of objects at
score >= 0.5 on the split (pycocotools).

    python benchmarks/bench_tiling.py --run runs/train --device cpu --images 2 --out benchmarks/results/tiling_cpu.json
    python benchmarks/bench_tiling.py --run runs/train --device cuda --images 8 --out benchmarks/results/tiling_h200.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def coco_results(predictions, image_ids, threshold=0.05) -> list:
    results = []
    for prediction, image_id in zip(predictions, image_ids):
        for k in prediction.kept(threshold):
            x0, y0, x1, y1 = (float(v) for v in prediction.boxes[k])
            results.append({"image_id": image_id, "category_id": int(prediction.classes[k]) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(prediction.scores[k])})
    return results


def score(gt: dict, results: list) -> dict:
    from d2nb import analysis

    matches = analysis.match_detections(gt, results, score_threshold=0.5)
    found = sum(int(m.found.sum()) for m in matches)
    objects = sum(len(m.gt_classes) for m in matches)
    stats = analysis.run_cocoeval(gt, results, "bbox").stats if results else [0.0] * 12
    return {"AP": round(100 * float(stats[0]), 2), "AP_small": round(100 * max(0.0, float(stats[3])), 2),
            "recall_at_0.5": round(found / max(1, objects), 3), "detections": len(results)}


def timed(run, repeats: int) -> tuple:
    seconds, output = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        output = run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), output


def sahi_predict(run_dir: Path, device: str, images, tile: int, overlap: float):
    """SAHI 0.12's sliced prediction with its Detectron2 wrapper (DefaultPredictor per slice)."""
    from sahi.models.detectron2 import Detectron2DetectionModel
    from sahi.predict import get_sliced_prediction

    import d2nb.modeling

    d2nb.modeling.register()  # the recipe's backbone and ROI heads
    model = Detectron2DetectionModel(config_path=str(run_dir / "config.yaml"),
                                     model_path=str(run_dir / "model_final.pth"), device=device,
                                     confidence_threshold=0.05, load_at_init=True)

    def run():
        return [get_sliced_prediction(image.image, model, slice_height=tile, slice_width=tile,
                                      overlap_height_ratio=overlap, overlap_width_ratio=overlap,
                                      perform_standard_pred=True, postprocess_type="GREEDYNMM",
                                      postprocess_match_metric="IOS", postprocess_match_threshold=0.5,
                                      verbose=0)
                for image in images]

    return run


def sahi_results(outputs, image_ids) -> list:
    results = []
    for output, image_id in zip(outputs, image_ids):
        for p in output.object_prediction_list:
            x0, y0, x1, y1 = p.bbox.to_xyxy()
            results.append({"image_id": image_id, "category_id": int(p.category.id) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(p.score.value)})
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a 03_train output_dir (config.yaml, model_final.pth)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.35)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sahi", action="store_true")
    parser.add_argument("--datasets", default="/tmp/d2nb-bench-tiling")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from d2nb.data.synthetic import LargeSpec, make_large_dataset
    from d2nb.images import load_images
    from d2nb.predict import Predictor

    json_file, image_dir = make_large_dataset(LargeSpec(num_images=args.images, size=args.size), args.datasets)
    gt = json.loads(Path(json_file).read_text())
    ids = [image["id"] for image in sorted(gt["images"], key=lambda i: i["file_name"])]
    images = load_images(image_dir, max_side=max(8192, args.size))
    predictor = Predictor(args.run, device=args.device)
    predictor.set_score_floor(0.05)
    rows = {}

    def record(name, seconds, results):
        rows[name] = {"s_per_picture": round(seconds / len(images), 3),
                      "pictures_per_s": round(len(images) / seconds, 3), **score(gt, results)}
        print(name, rows[name], flush=True)

    predictor.predict(images[:1], progress=False)  # warm-up
    predictor._cache.clear()

    def whole():
        predictor._cache.clear()
        return predictor.predict(images, batch_size=args.batch_size, progress=False)

    seconds, output = timed(whole, args.repeats)
    record("whole picture", seconds, coco_results(output, ids))

    def tiled():
        predictor._cache.clear()
        return predictor.predict(images, batch_size=args.batch_size, progress=False, tile=args.tile,
                                 tile_overlap=args.overlap)

    seconds, output = timed(tiled, args.repeats)
    record(f"d2nb tiled {args.tile} px, overlap {args.overlap} (merge nms, the default)", seconds,
           coco_results(output, ids))

    from d2nb.predict.tiling import predict_tiled

    started = time.perf_counter()  # the same tiles merged as SAHI's GREEDYNMM does: union of each group
    output = predict_tiled(predictor, images, args.tile, args.overlap, batch_size=args.batch_size, progress=False,
                           merge="greedy")
    record(f"d2nb tiled {args.tile} px, overlap {args.overlap} (merge greedy: union of boxes and masks)",
           time.perf_counter() - started, coco_results(output, ids))

    if not args.no_sahi:
        try:
            run = sahi_predict(Path(args.run), args.device, images, args.tile, args.overlap)
        except ImportError as error:
            print(f"sahi not measured: {error}")
        else:
            seconds, output = timed(run, max(1, args.repeats // 2))
            record(f"sahi 0.12 sliced {args.tile} px, overlap {args.overlap}", seconds, sahi_results(output, ids))

    base = rows["whole picture"]["pictures_per_s"]
    for row in rows.values():
        row["speed_vs_whole"] = round(row["pictures_per_s"] / base, 3)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    report = {"benchmark": "tiled inference on the large synthetic split", "device": device,
              "torch": torch.__version__, "pictures": len(images), "size": args.size, "run": args.run, "rows": rows}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

"""Threshold explorer speed: one slider move against re-matching at the new threshold.

The evaluation of ``--images`` pictures (default 5,000) with ``--detections`` results (default
50,000) and COCO's 80 categories, made by ``bench_cocoeval.make_coco``. Times, in this process:

- building the explorer (the one matching, ``ThresholdTable``, and the first drawing);
- one slider move of ``ThresholdMetricsExplorer`` (precision/recall/F1 table, confusion
  matrix, precision-recall curves redrawn), median over ``--moves`` values;
- the baseline for the same move: ``analysis.match_detections`` at the new threshold and
  ``analysis.confusion_matrix``, what a viewer without the cache does (the matrix only);

and checks that the explorer's matrix equals the baseline's at every threshold it timed.

    python benchmarks/bench_thresholds.py --out benchmarks/results/thresholds.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_cocoeval import make_coco  # noqa: E402

from d2nb import analysis  # noqa: E402
from d2nb.thresholds import ThresholdTable  # noqa: E402
from d2nb.widgets.thresholds import ThresholdMetricsExplorer  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=50000)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--baseline-moves", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    gt, results = make_coco(args.images, 7.3, max(1, args.detections // args.images))
    names = [c["name"] for c in gt["categories"]]
    coco = analysis.load_ground_truth(gt)
    start = time.perf_counter()
    table = ThresholdTable.from_files(coco, results, names)
    explorer = ThresholdMetricsExplorer(table, 0.5)
    build = time.perf_counter() - start

    thresholds = [round(0.05 + 0.9 * i / max(1, args.moves - 1), 2) for i in range(args.moves)]
    move_times = []
    for t in thresholds:
        start = time.perf_counter()
        explorer.score_threshold.value = t  # observe() redraws synchronously
        move_times.append(time.perf_counter() - start)

    baseline_times = []
    for t in thresholds[:: max(1, len(thresholds) // args.baseline_moves)][: args.baseline_moves]:
        start = time.perf_counter()
        matrix = analysis.confusion_matrix(analysis.match_detections(coco, results, score_threshold=t), names, t)
        baseline_times.append(time.perf_counter() - start)
        assert (matrix.matrix == table.confusion(t).matrix).all(), f"matrices differ at {t}"

    move, baseline = statistics.median(move_times), statistics.median(baseline_times)
    report = {
        "benchmark": "threshold explorer slider move",
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "images": args.images, "detections": len(results), "classes": len(names),
        "images_replayed_per_move": len(table._confusable),
        "build_s": round(build, 2),
        "slider_move_ms_median": round(1000 * move, 1),
        "slider_move_ms_max": round(1000 * max(move_times), 1),
        "rematch_ms_median": round(1000 * baseline, 1),
        "speedup_x": round(baseline / move, 1),
        "target_ms": 100,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

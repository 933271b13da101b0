"""On a GPU: the predictor's CUDA-graphed backbone gives what its eager backbone gives.

For the AMP predictor and the float32 one: one call with a single batch (one batch in flight,
d2nb's own stream), then several batches (two in flight), against the same predictor with the
graphs off; prints the graphs captured and the largest differences. Random weights of the
zoo's R-50 Mask R-CNN: no download.

    python benchmarks/check_cuda_graphs.py
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def main() -> int:
    from d2nb.data.synthetic import draw_scene
    from d2nb.predict import Predictor

    rng = np.random.default_rng(0)
    pictures = [draw_scene(rng, 480, 640, 5)[0] for _ in range(10)]
    failures = 0
    for amp in (True, False):
        torch.manual_seed(0)
        predictor = Predictor("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "none", device="cuda", amp=amp,
                              score_floor=0.0)
        failures += check(predictor, pictures, "AMP" if amp else "float32")
    print("OK" if not failures else "FAILED")
    return failures


def check(predictor, pictures, name) -> int:
    failures = 0
    for label, chosen, batch in (("one batch", pictures[:3], 4), ("several batches", pictures, 4)):
        for _ in range(2):  # the first call captures, the second replays
            predictor.clear_cache()
            graphed = predictor.predict(chosen, batch_size=batch, progress=False)
        captured = len(predictor.model.backbone._graphs)
        predictor.model.backbone.cuda_graphs, saved = False, predictor.model.backbone._graphs
        predictor.clear_cache()
        eager = predictor.predict(chosen, batch_size=batch, progress=False)
        predictor.model.backbone.cuda_graphs, predictor.model.backbone._graphs = True, saved
        score_gap = max(float(np.abs(a.scores - b.scores).max(initial=0)) for a, b in zip(graphed, eager) if len(a) == len(b))
        same_counts = all(len(a) == len(b) for a, b in zip(graphed, eager))
        print(f"{name}, {label}: {captured} graphs kept, same counts {same_counts}, largest score gap {score_gap:.2e}")
        failures += int(not captured or not same_counts or score_gap > 1e-3)
    return failures


if __name__ == "__main__":
    sys.exit(main())

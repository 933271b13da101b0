"""``d2nb evaluate``: tools/train_net.py --eval-only, running the evaluation notebook's code.

    d2nb evaluate --config-file runs/train/config.yaml --dataset synthetic --output runs/evaluate \\
        MODEL.WEIGHTS runs/train/model_final.pth
    d2nb evaluate --config-file runs/train --dataset synthetic_large --tile 128 --output runs/evaluate_tiles

Trailing ``KEY VALUE`` pairs are config options applied last; ``MODEL.WEIGHTS`` among them
names the checkpoint, as train_net.py takes it (``--weights`` does the same). The AP tables
are logged as detectron2 logs them; what each nan means is printed after them. ``--tta`` and
``--tile`` score the model a second time (test-time augmentation; large pictures in overlapping
tiles at full resolution) and print that AP beside the plain AP.
"""

from __future__ import annotations

import argparse

from d2nb.cli import key_value_opts


def add_parser(sub) -> argparse.ArgumentParser:
    from d2nb.evaluate import EvaluationSettings

    defaults = EvaluationSettings()
    p = sub.add_parser("evaluate", help="evaluate a checkpoint with COCO AP (train_net.py --eval-only)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="a training run's folder or config.yaml, a model-zoo name, a d2nb recipe or a "
                        "yaml path (default: the newest run under runs/)")
    p.add_argument("--weights", default=None, help="a .pth/.pkl path, a URL or 'zoo' (or MODEL.WEIGHTS PATH)")
    p.add_argument("--dataset", default=defaults.dataset,
                   help="'synthetic' (its val split), 'synthetic_large' (2048 px pictures of small shapes, for "
                        "--tile), a registered name, a COCO json or a Roboflow folder")
    p.add_argument("--image-root", default=None, help="image folder of a COCO json (default: its folder)")
    p.add_argument("--output", "--output-dir", dest="output_dir", default=defaults.output_dir,
                   help=f"folder for the results (default: {defaults.output_dir})")
    p.add_argument("--num-gpus", type=int, default=None, help="0 = CPU (default: a GPU if there is one)")
    p.add_argument("--tta", action="store_true",
                   help="also score with test-time augmentation (TEST.AUG.*), its AP beside the plain AP")
    p.add_argument("--tile", type=int, default=defaults.tile, metavar="SIZE",
                   help="also score the pictures at full resolution in overlapping SIZE x SIZE tiles plus the "
                        "whole picture, merged (as d2nb demo --tile), its AP beside the plain AP")
    p.add_argument("--tile-overlap", type=float, default=defaults.tile_overlap, metavar="FRACTION",
                   help=f"fraction of a tile its neighbour covers again (default {defaults.tile_overlap})")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="the threshold --save-thresholds writes for every class (default: 0.5)")
    p.add_argument("--save-thresholds", default=None, metavar="CHOICE",
                   help="write OUTPUT/thresholds.json for d2nb demo --thresholds: 'score_threshold' "
                        "(--score-threshold for every class) or 'best_f1' (each class's best-F1 threshold)")
    p.add_argument("--eval-only", action="store_true", help="accepted for train_net.py parity; always on")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config options, applied last, as train_net.py takes them")
    return p


def settings_from_args(args):
    """Turn parsed ``d2nb evaluate`` arguments into ``EvaluationSettings``."""
    from d2nb.evaluate import EvaluationSettings

    opts = key_value_opts(args.opts, "MODEL.WEIGHTS runs/train/model_final.pth TEST.DETECTIONS_PER_IMAGE 50")
    pairs = dict(zip(opts[::2], opts[1::2]))
    weights = args.weights or pairs.get("MODEL.WEIGHTS")
    output_dir = pairs.get("OUTPUT_DIR", args.output_dir)
    opts = [item for key, value in zip(opts[::2], opts[1::2]) if key not in ("MODEL.WEIGHTS", "OUTPUT_DIR")
            for item in (key, value)]
    return EvaluationSettings(config=args.config_file, weights=weights, dataset=args.dataset,
                              image_root=args.image_root, output_dir=output_dir, gpus=args.num_gpus, opts=opts,
                              tta=args.tta, tile=args.tile, tile_overlap=args.tile_overlap)


def run(args) -> int:
    from d2nb.evaluate import evaluate, format_tiled_comparison, format_tta_comparison

    from d2nb.thresholds import choose_thresholds, save_thresholds

    if args.save_thresholds:
        choose_thresholds(None, args.save_thresholds, args.score_threshold)  # a misspelt choice fails before the model runs
    result = evaluate(settings_from_args(args))
    print(f"results and metrics.json in {result.output_dir}; scored against {result.gt_json}")
    if result.tta_metrics:
        print(format_tta_comparison(result))
    if result.tiled_metrics:
        print(format_tiled_comparison(result))
    for note in result.notes:
        print(f"note: {note}")
    if args.save_thresholds:
        print(f"thresholds: {save_thresholds(result, args.save_thresholds, args.score_threshold)}")
    return 0

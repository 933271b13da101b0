"""``d2nb demo``: detectron2's demo/demo.py flags, running the inference notebook's code.

    d2nb demo --config-file COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \\
        --input 'photos/*.jpg' --output runs/inference --confidence-threshold 0.6
    d2nb demo --config-file runs/train/config.yaml --input img.png --output out.png \\
        --opts MODEL.WEIGHTS runs/train/model_final.pth
    d2nb demo --config-file runs/train --video-input clip.mp4 --output runs/inference
    d2nb demo --config-file runs/train --input slide.tif --tile 512 --tile-overlap 0.25 --thresholds runs/evaluate

``--config-file`` takes what the notebook's ``config`` takes (a model-zoo name, a training
output folder, a yaml path); ``MODEL.WEIGHTS`` in ``--opts`` (or ``--weights``) chooses the
checkpoint, as with demo.py; left out, the model zoo's checkpoint or the run's
model_final.pth is used. Without ``--output``, a line per picture says what was found.
"""

from __future__ import annotations

import argparse

from d2nb.prediction import DEFAULT_SCORE_THRESHOLD
from d2nb.predict.tiling import DEFAULT_OVERLAP


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run a model on pictures, a video or a camera, like demo/demo.py",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="model-zoo name, training output folder or yaml path "
                        "(default: the newest run under runs/, else mask_rcnn_R_50_FPN_3x)")
    p.add_argument("--webcam", action="store_true", help="take frames from this machine's camera")
    p.add_argument("--video-input", help="path to a video file")
    p.add_argument("--input", nargs="+", help="pictures: paths, folders, 'dir/*.jpg' globs, URLs or 'samples'")
    p.add_argument("--output", help="a file or folder for the drawn pictures (or video) and predictions.json")
    p.add_argument("--confidence-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                   help="minimum score for instance predictions to be shown; with --thresholds, a value "
                        "other than the default replaces the file's threshold for classes without their own")
    p.add_argument("--thresholds", default=None, metavar="DIR",
                   help="an evaluation's output folder (or its thresholds.json, written by 04_evaluate or "
                        "d2nb evaluate --save-thresholds): its per-class thresholds")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="run large pictures as overlapping SIZE x SIZE tiles at full resolution, merged back")
    p.add_argument("--tile-overlap", type=float, default=DEFAULT_OVERLAP, metavar="FRACTION",
                   help=f"fraction of a tile its neighbour covers again (default {DEFAULT_OVERLAP})")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (several sizes and a flip, merged)")
    p.add_argument("--weights", default=None, help="checkpoint path or URL (same as --opts MODEL.WEIGHTS ...)")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is one), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="pictures per forward pass")
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    p.add_argument("--max-frames", type=int, default=None, help="stop a video or camera after N frames")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                   help="modify config options using the command-line 'KEY VALUE' pairs")
    return p


def split_weights(opts, weights=None) -> tuple:
    """Take ``MODEL.WEIGHTS`` out of demo.py-style opts: the predictor resolves it (URLs,
    run folders) rather than detectron2's config. Returns ``(weights, other opts)``."""
    opts = list(opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    keys = opts[0::2]
    if "MODEL.WEIGHTS" in keys and 2 * keys.index("MODEL.WEIGHTS") + 1 < len(opts):
        at = 2 * keys.index("MODEL.WEIGHTS")
        weights = weights or opts[at + 1]
        opts = opts[:at] + opts[at + 2:]
    return weights, opts


def run(args) -> int:
    from d2nb.errors import D2nbError
    from d2nb.images import load_images, max_side_for
    from d2nb.predict import Predictor, save_outputs
    from d2nb.predict.tiling import check_tiling
    from d2nb.thresholds import default_thresholds
    from d2nb.video import predict_camera, predict_video

    sources = [bool(args.input), bool(args.video_input), bool(args.webcam)]
    if sum(sources) != 1:
        raise D2nbError("pass exactly one of --input, --video-input and --webcam",
                        "e.g. d2nb demo --config-file CONFIG --input 'photos/*.jpg' --output out/")
    confidence = args.confidence_threshold
    if args.thresholds and confidence == DEFAULT_SCORE_THRESHOLD:
        confidence = None  # the file's
    threshold = default_thresholds(confidence, args.thresholds)  # bad values fail before the model loads
    if args.tile:
        check_tiling(args.tile, args.tile_overlap)
    images = load_images(args.input, max_side_for(args.tile)) if args.input else []  # a mistyped glob too
    weights, opts = split_weights(args.opts, args.weights)
    predictor = Predictor(args.config_file, weights, device=args.device, amp=args.amp, opts=opts, tta=args.tta)
    print(predictor.describe())
    if threshold is not None and getattr(threshold, "per_class", None):
        print(f"thresholds: {threshold}")
    if args.video_input or args.webcam:
        if not args.output:
            raise D2nbError("a video or camera needs --output (this command opens no window)",
                            "pass --output a folder or a file name ending in .mp4")
        result = (predict_video(predictor, args.video_input, args.output, threshold, args.batch_size, args.max_frames)
                  if args.video_input else predict_camera(predictor, args.output, threshold, args.max_frames))
        print(f"{result.frames} frames -> {result.output}")
        return 0
    for image in images:
        if not image.ok:
            print(f"skipped: {image.error}")
    predictions = predictor.predict(images, batch_size=args.batch_size, tile=args.tile, tile_overlap=args.tile_overlap)
    for prediction in predictions:
        counts = prediction.counts(threshold)
        found = ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"
        print(f"{prediction.name}: {found}")
    if args.output:
        written = save_outputs(predictions, args.output, threshold)
        print(f"{len(written['images'])} pictures and {written['json']} written")
    return 0 if predictions else 1

"""``d2nb export``: detectron2's tools/deploy/export_model.py flags, running the export notebook's code.

    d2nb export --config-file runs/train --format onnx --output runs/export
    d2nb export --config-file runs/train --format torchscript --export-method scripting \\
        --output runs/export_ts
    d2nb export --config-file COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \\
        --format torchscript --sample-image 'photos/*.jpg' --output runs/export MODEL.WEIGHTS model.pkl

``--config-file`` takes what the notebook's ``config`` takes (a training output folder, a
model-zoo name, a yaml path); ``MODEL.WEIGHTS`` in the trailing ``KEY VALUE`` options (or
``--weights``) chooses the checkpoint. Every export is run beside the PyTorch model on the
sample pictures (default: the config's test split) and a table of matches, score and mask
differences and latencies is printed; the command exits with 1 when the export does not match.
"""

from __future__ import annotations

import argparse

from d2nb.cli import key_value_opts


def add_parser(sub) -> argparse.ArgumentParser:
    from d2nb.export import EXPORT_METHODS, FORMATS
    from d2nb.export.export import DEFAULT_OUTPUT_DIR

    p = sub.add_parser("export", help="export a model to TorchScript or ONNX, checked against PyTorch, "
                                      "like tools/deploy/export_model.py",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="training output folder, model-zoo name or yaml path (default: the newest run under runs/)")
    p.add_argument("--format", choices=FORMATS, default="torchscript", help="output format")
    p.add_argument("--export-method", choices=EXPORT_METHODS, default="tracing",
                   help="how the model becomes a graph (scripting: TorchScript only)")
    p.add_argument("--sample-image", action="append", default=None, metavar="PICTURE",
                   help="a picture to trace on and check with: a path, folder, quoted glob or 'samples'; "
                        "repeat for more (default: the config's test split)")
    p.add_argument("--output", default=DEFAULT_OUTPUT_DIR, help="output folder for the exported model")
    p.add_argument("--weights", default=None, help="checkpoint path (same as MODEL.WEIGHTS ...)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config options, as export_model.py takes them")
    return p


def run(args) -> int:
    from d2nb.cli.demo import split_weights
    from d2nb.export import export_model

    opts = key_value_opts(args.opts, "MODEL.WEIGHTS runs/train/model_final.pth")
    weights, opts = split_weights(opts, args.weights)
    result = export_model(args.config_file, weights, format=args.format, export_method=args.export_method,
                          sample_images=args.sample_image, output_dir=args.output, opts=opts)
    print(result.report())
    return 0 if result.ok else 1

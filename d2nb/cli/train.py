"""``d2nb train``: tools/train_net.py's flags, running the training notebook's code.

    d2nb train --config-file CONFIG --num-gpus 1 [--resume | --no-resume] [--eval-only] [KEY VALUE ...]

It takes tools/train_net.py's flags; trailing ``KEY VALUE`` pairs are config
options applied last (``MODEL.WEIGHTS``, ``OUTPUT_DIR``, ``SOLVER.IMS_PER_BATCH`` ...).
It also takes the notebook's parameters as ``--dataset``, ``--output-dir``, ``--max-iter``...

Without ``--resume`` or ``--no-resume``, a run continues output_dir's last_checkpoint when
that is of the same config and dataset (the notebook's ``resume="auto"``), stops saying what
differs when it is not, and starts afresh when there is none.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from d2nb.cli import key_value_opts

# train_net.py flag -> TrainSettings field
_TRAIN_NET_FLAGS = {"config_file": "config", "num_gpus": "gpus"}


def add_parser(sub) -> argparse.ArgumentParser:
    from d2nb.train import TrainSettings

    defaults = TrainSettings()
    p = sub.add_parser("train", help="train (or --eval-only) like tools/train_net.py",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="model-zoo name, d2nb recipe or yaml path (default: d2nb's small recipe for the synthetic "
                        "data, mask_rcnn_R_50_FPN_3x for your own)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs per machine (default: all; 0 = CPU)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=defaults.resume,
                   help="--resume: continue from output_dir's last_checkpoint whatever the config (train_net.py's "
                        "--resume); --no-resume: start again; neither: continue it when it is of the same config "
                        "and dataset (resume='auto')")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or --weights) only")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    for name, kind in (("dataset", str), ("val_dataset", str), ("image_root", str), ("output_dir", str),
                       ("weights", str), ("max_iter", int), ("ims_per_batch", int), ("base_lr", float),
                       ("eval_period", int), ("checkpoint_period", int), ("checkpoint_minutes", float), ("seed", int),
                       ("num_workers", int), ("cpu_processes", int), ("val_loss_period", int), ("val_loss_images", int)):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name))
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    p.add_argument("--fast", action="store_true", help="GPU speed-ups that keep the model (AMP, TF32, batched heads, more workers): about x2 images/s")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config options, applied last, as train_net.py takes them")
    return p


def settings_from_args(args):
    """Turn parsed ``d2nb train`` arguments into ``TrainSettings``."""
    from d2nb.train import TrainSettings

    values = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if hasattr(args, f.name)}
    for flag, field_name in _TRAIN_NET_FLAGS.items():
        values[field_name] = getattr(args, flag)
    opts = key_value_opts(args.opts, "SOLVER.BASE_LR 0.001 MODEL.WEIGHTS model_final.pth")
    # OUTPUT_DIR in the trailing options is where train_net.py users put the output folder
    pairs = dict(zip(opts[::2], opts[1::2]))
    if "OUTPUT_DIR" in pairs:
        values["output_dir"] = pairs["OUTPUT_DIR"]
    values.update(opts=opts, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, monitor=True)
    return TrainSettings(**values)


def run(args) -> int:
    from d2nb import train as training

    settings = settings_from_args(args)
    if args.eval_only:
        metrics = training.evaluate_only(settings)
        print(training.format_metrics(metrics))
        return 0
    result = training.train(settings)
    print(training.format_metrics(result.metrics))
    return 130 if result.interrupted else 0

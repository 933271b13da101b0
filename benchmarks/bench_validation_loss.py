"""Validation-loss overhead: the same training run with the default ``val_loss_period`` and without.

Trains ``--config`` (default: the embedded recipe on the synthetic data) for ``--iters``
iterations twice per repeat, in this process, taking turns: ``val_loss_period=None`` (the
default, ten points a run on ``val_loss_images=16`` val pictures) and ``val_loss_period=0``.
Prints and writes, per repeat and as medians:

- the wall-clock of the training loop (``TrainResult.train_seconds``, the final evaluation on
  the val split included: it is the same in both runs);
- the seconds spent in the validation-loss hook (``TrainResult.validation_loss_seconds``);
- the ratio with / without, and the hook's share of the run (target: at most 5%).

    python benchmarks/bench_validation_loss.py --gpus 0 --iters 1300 --out benchmarks/results/validation_loss_cpu.json
    python benchmarks/bench_validation_loss.py --gpus 1 --config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \\
        --weights none --iters 1000 --size 480x640 --out benchmarks/results/validation_loss_h200.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from d2nb.train import TrainSettings, train


def device_name(gpus: int) -> str:
    if gpus and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads, {platform.platform()})"


def one_run(args, folder: Path, period) -> dict:
    height, width = map(int, args.size.split("x"))
    settings = TrainSettings(gpus=args.gpus, output_dir=str(folder), config=args.config, weights=args.weights,
                             max_iter=args.iters, checkpoint_period=10**6, checkpoint_minutes=0, monitor=False,
                             seed=0, synthetic_size=[height, width], val_loss_period=period)
    result = train(settings)
    rows = [json.loads(line) for line in (folder / "metrics.json").read_text().splitlines()]
    points = [r["iteration"] for r in rows if "validation/total_loss" in r]
    return {"train_seconds": result.train_seconds, "validation_loss_seconds": result.validation_loss_seconds or 0.0,
            "validation_points": points}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--config", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--iters", type=int, default=1300)
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = (("without", 0), ("with", None)) if repeat % 2 == 0 else (("with", None), ("without", 0))
            runs = {name: one_run(args, Path(tmp) / f"{repeat}-{name}", period) for name, period in order}
            runs["ratio"] = runs["with"]["train_seconds"] / runs["without"]["train_seconds"]
            runs["hook_share"] = runs["with"]["validation_loss_seconds"] / runs["with"]["train_seconds"]
            repeats.append(runs)
            print(f"repeat {repeat}: without {runs['without']['train_seconds']:.1f} s, with "
                  f"{runs['with']['train_seconds']:.1f} s (hook {runs['with']['validation_loss_seconds']:.1f} s at "
                  f"iterations {runs['with']['validation_points']}): x{runs['ratio']:.3f}, "
                  f"hook {100 * runs['hook_share']:.1f}% of the run", flush=True)

    ratio = statistics.median(r["ratio"] for r in repeats)
    share = statistics.median(r["hook_share"] for r in repeats)
    data = {
        "device": {"name": device_name(args.gpus), "torch": torch.__version__,
                   "date": datetime.date.today().isoformat()},
        "command": "python benchmarks/bench_validation_loss.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": args.config or "the embedded recipe", "iters": args.iters, "size": args.size,
        "repeats": repeats, "median_ratio": ratio, "median_hook_share": share,
        "target": "validation loss at the defaults costs at most 5% of training time",
        "met": share <= 0.05 and ratio <= 1.05,
    }
    print(f"validation loss at the defaults: x{ratio:.3f} the training time of the same run without it, "
          f"the hook {100 * share:.1f}% of the run (target at most 5%: {'met' if data['met'] else 'NOT met'})")
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()

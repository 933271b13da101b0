"""The CPU recipe's accuracy and time: train it (with changes) and print AP and s/iter.

What 03_train runs with ``-p gpus 0``, without the notebook: ``d2nb.train.train`` on the
synthetic dataset, the recipe's config plus ``--opts``. One JSON line per run is appended to
``--out``; the line printed last is the run's summary. For comparing recipe changes, run
two at a time with ``--threads 1`` (AP does not depend on the thread count; s/iter does, so
time the winner alone with the default threads).

    python benchmarks/cpu_recipe.py --tag baseline
    python benchmarks/cpu_recipe.py --tag no-res5 --threads 1 --opts MODEL.RESNETS.OUT_FEATURES "['res2','res3','res4']"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path


class WeightAverage:
    """An experiment, not the recipe: an exponential moving average of every floating-point weight
    and buffer (decay ramped as ``decay * (1 - exp(-step / 200))``), copied into the model after the
    last step, before detectron2's final evaluation."""

    def __new__(cls, decay):
        import math

        import torch
        from detectron2.engine import HookBase

        class _Hook(HookBase):
            def before_train(self):
                self.values = [v for v in self.trainer.model.state_dict().values() if v.is_floating_point()]
                self.average = [v.detach().clone() for v in self.values]

            @torch.no_grad()
            def after_step(self):
                step = self.trainer.iter + 1
                weight = 1 - decay * (1 - math.exp(-step / 200))
                torch._foreach_lerp_(self.average, self.values, weight)
                if step == self.trainer.max_iter:
                    for value, average in zip(self.values, self.average):
                        value.copy_(average)

        return _Hook()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--max-iter", type=int, default=None)
    parser.add_argument("--ims", type=int, default=None)
    parser.add_argument("--base-lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--num-train", type=int, default=None, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=None, help="synthetic validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-processes", type=int, default=1, help="DDP processes over gloo (one thread each)")
    parser.add_argument("--config", default=None, help="a yaml in place of the recipe (e.g. an edited copy)")
    parser.add_argument("--output-root", default="/tmp/d2nb-cpu-recipe")
    parser.add_argument("--out", default="/tmp/d2nb-cpu-recipe/results.jsonl")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="experiment: evaluate an exponential moving average of the weights (this decay, ramped)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dataclasses import replace

    import d2nb.modeling
    from d2nb.train import TrainSettings, train

    d2nb.modeling.register()

    settings = TrainSettings(gpus=0, output_dir=str(Path(args.output_root) / args.tag), config=args.config,
                             max_iter=args.max_iter,
                             ims_per_batch=args.ims, base_lr=args.base_lr, seed=args.seed, monitor=False,
                             cpu_processes=args.cpu_processes,
                             opts=list(args.opts))
    spec = settings.synthetic
    if args.num_train:
        spec = replace(spec, num_train=args.num_train)
    if args.num_val:
        spec = replace(spec, num_val=args.num_val)
    settings.synthetic = spec
    started = time.perf_counter()
    result = train(settings, [WeightAverage(args.ema)] if args.ema else [])
    seconds = time.perf_counter() - started
    speed = re.findall(r"Overall training speed: .*\(([\d.]+) s / it\)", (Path(settings.output_dir) / "log.txt").read_text())
    row = {"command": "python benchmarks/cpu_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "processor": _processor(),
           "torch": torch.__version__, "seed": args.seed, "tag": args.tag, "num_train": spec.num_train,
           "num_val": spec.num_val, "opts": args.opts, "ema": args.ema, "max_iter": args.max_iter, "ims": args.ims,
           "threads": torch.get_num_threads(),
           "cpu_processes": args.cpu_processes,
           "seconds": round(seconds, 1), "s_per_iter": float(speed[-1]) if speed else None,
           **{f"{task}/{k}": round(v, 2) for task, values in result.metrics.items() for k, v in values.items()
              if isinstance(v, float)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("tag", "seconds", "s_per_iter", "bbox/AP", "segm/AP") if k in row}))
    return 0


def _processor() -> str:
    """The CPU's model name (runs differ by machine)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())

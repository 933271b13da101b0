"""Where a training step spends its time: s/iter and the main process's Python hot spots.

Runs ``--iters`` steps of d2nb's trainer in this process (no evaluation, no checkpoints)
after ``--warmup`` steps, timing each with the GPU synchronised, and prints cProfile's top
functions by own time. For choosing what fast mode should change; the comparisons that count
are in bench_train.py.

    python benchmarks/profile_train.py --fast --ims 16 --size 480x640 --iters 30
    python benchmarks/profile_train.py --fast --torch-profile --opts INPUT.MASK_FORMAT polygon
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    parser.add_argument("--ims", type=int, default=16)
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--torch-profile", action="store_true",
                        help="also print torch.profiler's operators by GPU time over the measured steps")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args(argv)
    import torch
    from detectron2.utils.events import EventStorage

    from d2nb.train import Trainer, TrainSettings, build_config

    height, width = map(int, args.size.split("x"))
    settings = TrainSettings(gpus=args.gpus, output_dir="/tmp/d2nb-profile", config=args.config, weights="none",
                             ims_per_batch=args.ims, max_iter=10_000, fast=args.fast, monitor=False,
                             synthetic_size=[height, width], checkpoint_period=10**9,
                             opts=["DATASETS.TEST", "()", "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
                                   "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0",
                                   *args.opts])
    cfg = build_config(settings)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    with EventStorage(0) as trainer.storage:
        trainer.before_train()
        profile = cProfile.Profile()
        kernels = None
        for i in range(args.warmup + args.iters):
            trainer.iter = i
            if i == args.warmup:
                profile.enable()
                if args.torch_profile:
                    kernels = torch.profiler.profile(activities=_activities(torch))
                    kernels.__enter__()
            sync()
            started = time.perf_counter()
            trainer.before_step()
            trainer.run_step()
            trainer.after_step()
            sync()
            times.append(time.perf_counter() - started)
        profile.disable()
        if kernels is not None:
            kernels.__exit__(None, None, None)
    steps = times[args.warmup:]
    label = " ".join(["fast" if args.fast else "fp32", *args.opts])
    print(f"PROFILE {label}: {statistics.mean(steps):.4f} s/iter (median {statistics.median(steps):.4f}) "
          f"over {len(steps)} steps, {args.ims} images", flush=True)
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    if kernels is not None:
        on_gpu = torch.cuda.is_available()
        key = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        print(kernels.key_averages().table(sort_by=key, row_limit=args.top), flush=True)
    return 0


def _activities(torch):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


if __name__ == "__main__":
    raise SystemExit(main())

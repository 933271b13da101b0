"""Where a training step spends its time: s/iter and the main process's Python hot spots.

Runs ``--iters`` steps of d2nb's trainer in this process (no evaluation, no checkpoints)
after ``--warmup`` steps, timing each with the GPU synchronised, and prints cProfile's top
functions by own time. For choosing what fast mode should change; the comparisons that count
are in bench_train.py.

    python benchmarks/profile_train.py --fast --ims 16 --size 480x640 --iters 30
    python benchmarks/profile_train.py --fast --torch-profile --opts INPUT.MASK_FORMAT polygon
    python benchmarks/profile_train.py --fast --stages 20 --json /tmp/stages.json

``--stages N`` then runs N more steps with the GPU synchronised around each part of the step
(data, backbone, RPN, box head, mask head, backward, metrics, optimizer): a table of where the
step goes. Synchronising stops the CPU running ahead of the GPU, so these steps are slower than
the plain ones; the plain s/iter is printed beside them.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path


# bench_train.py's GPU runs clip gradients (from random weights, lr 0.02 diverges without it); the
# CPU recipe (AdamW) does not, so a CPU profile (--gpus 0) leaves its config as it is.
GPU_CLIPPING = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
                "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0"]


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
    parser.add_argument("--stages", type=int, default=0, help="then this many steps timed part by part")
    parser.add_argument("--no-cprofile", action="store_true", help="time the plain steps without cProfile")
    parser.add_argument("--json", default=None, help="write s/iter, the stage table and the top kernels here")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args(argv)
    import torch
    from detectron2.utils.events import EventStorage

    from bench_train import _device
    from d2nb.train import Trainer, TrainSettings, build_config

    height, width = map(int, args.size.split("x"))
    settings = TrainSettings(gpus=args.gpus, output_dir="/tmp/d2nb-profile", config=args.config, weights="none",
                             ims_per_batch=args.ims, max_iter=10_000, fast=args.fast, monitor=False,
                             synthetic_size=[height, width], checkpoint_period=10**9,
                             opts=["DATASETS.TEST", "()", *(GPU_CLIPPING if args.gpus else []), *args.opts])
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
                if not args.no_cprofile:
                    profile.enable()
                if args.torch_profile:
                    kernels = torch.profiler.profile(activities=_activities(torch))
                    kernels.__enter__()
            times.append(_timed_step(trainer, sync))
        profile.disable()
        if kernels is not None:
            kernels.__exit__(None, None, None)
        waits = [v for v, it in trainer.storage.history("data_time").values() if it >= args.warmup]
        stages = _time_stages(trainer, args.stages, sync) if args.stages else None
    steps = times[args.warmup:]
    label = " ".join(["fast" if args.fast else "fp32", *args.opts])
    report = {"command": "python benchmarks/profile_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": {**_device(), "threads": torch.get_num_threads()}, "config": args.config,
              "label": label, "ims": args.ims, "size": args.size, "s_iter_mean": statistics.mean(steps),
              "s_iter_median": statistics.median(steps), "steps": len(steps), "cprofile": not args.no_cprofile,
              "workers": cfg.DATALOADER.NUM_WORKERS, "data_time_ms_median": 1e3 * statistics.median(waits)}
    print(f"PROFILE {label}: {statistics.mean(steps):.4f} s/iter (median {statistics.median(steps):.4f}) "
          f"over {len(steps)} steps, {args.ims} images; waiting for data {report['data_time_ms_median']:.1f} ms "
          f"a step (median, {cfg.DATALOADER.NUM_WORKERS} loader workers)", flush=True)
    if not args.no_cprofile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    if kernels is not None:
        on_gpu = torch.cuda.is_available()
        key = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        averages = kernels.key_averages()
        print(averages.table(sort_by=key, row_limit=args.top), flush=True)
        if on_gpu:
            rows = sorted(averages, key=lambda e: e.self_device_time_total, reverse=True)
            # kernels and copies only: an operator's row counts its kernels' time again
            gpu_total = sum(e.self_device_time_total for e in averages if e.cpu_time_total == 0) / 1e3 / args.iters
            report["gpu_kernels_ms_per_step"] = gpu_total
            report["top_kernels_ms_per_step"] = {e.key[:90]: e.self_device_time_total / 1e3 / args.iters
                                                 for e in rows[:args.top]}
            syncs = [e for e in averages if "Synchronize" in e.key]
            report["host_waits_ms_per_step"] = {e.key: e.cpu_time_total / 1e3 / args.iters for e in syncs}
            report["host_wait_calls_per_step"] = {e.key: e.count / args.iters for e in syncs}
            print(f"GPU kernels {gpu_total:.1f} ms per step; host waits {report['host_waits_ms_per_step']}, "
                  f"calls {report['host_wait_calls_per_step']}", flush=True)
        else:  # the CPU: operators by their own time, and how many operators a step runs
            rows = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
            report["operators_per_step"] = sum(e.count for e in averages) / args.iters
            report["operators_self_ms_per_step"] = sum(e.self_cpu_time_total for e in averages) / 1e3 / args.iters
            report["top_operators_ms_per_step"] = {e.key[:90]: e.self_cpu_time_total / 1e3 / args.iters
                                                   for e in rows[:args.top]}
            print(f"{report['operators_per_step']:.0f} operators a step, their own time "
                  f"{report['operators_self_ms_per_step']:.1f} ms of {1e3 * statistics.mean(steps):.1f} ms", flush=True)
    if stages is not None:
        report["stages_ms"] = stages
        total = stages["step"]
        print(f"STAGES (GPU synchronised around each, {args.stages} steps, ms per step):")
        for name, ms in stages.items():
            print(f"  {name:<48}{ms:8.1f}  {100 * ms / total:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _timed_step(trainer, sync) -> float:
    """One training step with its hooks, in seconds, the GPU synchronised before and after."""
    sync()
    started = time.perf_counter()
    trainer.before_step()
    trainer.run_step()
    trainer.after_step()
    sync()
    return time.perf_counter() - started


def _time_stages(trainer, steps: int, sync) -> dict:
    """Run ``steps`` more steps with the GPU synchronised around each part; ms per step."""
    import torch

    loop = trainer._trainer
    model = loop.model.module if hasattr(loop.model, "module") else loop.model
    totals = collections.defaultdict(float)

    def timed(name, fn):
        def run(*args, **kwargs):
            sync()
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                totals[name] += time.perf_counter() - started
        return run

    patches = []

    def patch(owner, attr, name):
        if owner is None or not hasattr(owner, attr):
            return
        saved = getattr(owner, attr) if isinstance(owner, type) else owner.__dict__.get(attr)
        patches.append((owner, attr, saved))
        setattr(owner, attr, timed(name, getattr(owner, attr)))

    roi = getattr(model, "roi_heads", None)
    rpn = getattr(model, "proposal_generator", None)
    patch(model, "preprocess_image", "forward: preprocess (to GPU, normalise, pad)")
    patch(model.backbone, "forward", "forward: backbone + FPN")
    patch(rpn, "forward", "forward: RPN (head, proposals, labels, losses)")
    patch(roi, "label_and_sample_proposals", "forward: ROI sampling")
    patch(roi, "_forward_box", "forward: box head + losses")
    patch(roi, "_forward_mask", "forward: mask head + targets + loss")
    patch(loop, "_write_metrics", "metrics (losses to the host)")
    scaler = getattr(loop, "grad_scaler", None)
    patch(scaler if scaler is not None else loop.optimizer, "step", "optimizer (clip, unscale, SGD)")
    if scaler is not None and type(loop).__name__ == "FastStepTrainer":  # it unscales before step
        patch(scaler, "unscale_", "optimizer (clip, unscale, SGD)")
    patch(torch.Tensor, "backward", "backward")
    iterator = loop._data_loader_iter
    loop._data_loader_iter_obj = _TimedIterator(iterator, timed("data (next batch from the loader)", next))
    step_total = 0.0
    try:
        for _ in range(steps):
            trainer.iter += 1
            step_total += _timed_step(trainer, sync)
    finally:
        loop._data_loader_iter_obj = iterator
        for owner, attr, saved in reversed(patches):
            if saved is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, saved)
    table = {name: 1e3 * seconds / steps for name, seconds in totals.items()}
    table["rest (hooks, loss sum, Python between parts)"] = 1e3 * step_total / steps - sum(table.values())
    table["step"] = 1e3 * step_total / steps
    return table


class _TimedIterator:
    def __init__(self, iterator, timed_next):
        self._iterator, self._next = iterator, timed_next

    def __iter__(self):
        return self

    def __next__(self):
        return self._next(self._iterator)


def _activities(torch):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


if __name__ == "__main__":
    raise SystemExit(main())

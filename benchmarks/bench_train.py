"""Training speed: d2nb against plain detectron2, on the same config and data, in one process tree.

Runs, each in its own subprocess (fresh CUDA context), on the synthetic dataset:

- ``baseline``: detectron2's ``DefaultTrainer`` as ``tools/train_net.py`` runs it (fp32);
- ``baseline_seed1``: the baseline with seed 1: its curve's distance from the baseline's is the
  run-to-run noise that "the same loss curve" is judged against;
- ``notebook``: ``notebooks/03_train.ipynb`` under papermill, live monitor on;
- ``fast``: d2nb's fast mode (``fast=True``: AMP, TF32, 8 data-loading workers, bitmask targets,
  the RPN's and ROI heads' loops batched);
- ``fast_loops``: fast mode with detectron2's per-picture RPN and ROI-head loops
  (``D2NB_BATCHED_HEADS False``), to show what batching them gives;
- ``fast_plain_step``: fast mode with detectron2's ``AMPTrainer`` step (``D2NB_FAST_STEP False``),
  to show what ``d2nb.train.fast_step`` gives.

Every run trains ``--iters`` iterations at ``--ims`` images per batch without evaluation and
reports wall-clock s/iter of the whole training loop; the loss curves of ``fast`` and
``baseline`` are compared iteration by iteration (median of 20, as metrics.json logs them).

    python benchmarks/bench_train.py --runs baseline,notebook,fast --iters 300 --ims 16 \\
        --size 480x640 --out benchmarks/results/train_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
# R-50 from random weights at lr 0.02 diverges within 20 iterations (seen on the H100): every
# run clips the gradient norm, which keeps all of them finite and changes no step's cost.
STABLE_OPTS = ["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
               "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0"]


def _schedule_opts(iters: int) -> list:
    # the same schedule d2nb derives for max_iter (steps at 2/3 and 8/9, warmup a tenth)
    # from-scratch weights need batch-statistics BN, which d2nb sets by itself (d2nb.train.config._from_scratch_norm)
    return ["MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0", "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({iters * 60000 // 90000}, {iters * 80000 // 90000})",
            "SOLVER.WARMUP_ITERS", str(max(1, iters // 10)), "SOLVER.CHECKPOINT_PERIOD", "100000",
            "DATASETS.TEST", "()"]


def run_baseline(args, output_dir: Path, seed: int = 0) -> dict:
    """Plain detectron2, as tools/train_net.py: get_cfg, the zoo yaml, DefaultTrainer."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from d2nb.data import SyntheticSpec, register_synthetic

    height, width = map(int, args.size.split("x"))
    data = register_synthetic(SyntheticSpec(height=height, width=width))
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(args.config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "DATASETS.TRAIN", f"('{data.train}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
                         "SOLVER.IMS_PER_BATCH", str(args.ims), "SOLVER.BASE_LR", str(0.02 * args.ims / 16),
                         "MODEL.DEVICE", "cuda" if args.gpus else "cpu",
                         "SEED", str(seed), "OUTPUT_DIR", str(output_dir)] + _schedule_opts(args.iters) + STABLE_OPTS)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(str(output_dir))
    seed_all_rng(cfg.SEED)  # as train_net.py's default_setup: same sample order and scales as d2nb
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    started = time.perf_counter()
    trainer.train()
    return {"train_seconds": time.perf_counter() - started, "iterations_run": args.iters}


def run_baseline_seed1(args, output_dir: Path) -> dict:
    """The baseline again with another seed (sample order, scales, initial weights): how far two
    equally valid runs' loss curves lie apart, the noise that fast mode's curve is held to."""
    return run_baseline(args, output_dir, seed=1)


def run_notebook(args, output_dir: Path) -> dict:
    height, width = map(int, args.size.split("x"))
    params = {"gpus": args.gpus, "output_dir": str(output_dir), "config": args.config, "weights": "none",
              "max_iter": args.iters, "ims_per_batch": args.ims, "checkpoint_period": 100000,
              "synthetic_size": [height, width], "opts": ["DATASETS.TEST", "()"] + STABLE_OPTS}
    command = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "03_train.ipynb"),
               str(output_dir.parent / "03_train.bench.ipynb"), "-k", "python3", "--cwd", str(ROOT),
               "-y", json.dumps(params)]
    subprocess.run(command, check=True)
    return json.loads((output_dir / "d2nb_result.json").read_text())


def run_fast(args, output_dir: Path, extra_opts=()) -> dict:
    from d2nb.train import TrainSettings, train

    height, width = map(int, args.size.split("x"))
    result = train(TrainSettings(gpus=args.gpus, output_dir=str(output_dir), config=args.config, weights="none",
                                 max_iter=args.iters, ims_per_batch=args.ims, checkpoint_period=100000,
                                 synthetic_size=[height, width], fast=True, monitor=False,
                                 opts=["DATASETS.TEST", "()"] + STABLE_OPTS + list(extra_opts)))
    return {"train_seconds": result.train_seconds, "iterations_run": result.iterations_run}


def run_fast_loops(args, output_dir: Path) -> dict:
    return run_fast(args, output_dir, ["D2NB_BATCHED_HEADS", "False"])


def run_fast_plain_step(args, output_dir: Path) -> dict:
    return run_fast(args, output_dir, ["D2NB_FAST_STEP", "False"])


RUNS = {"baseline": run_baseline, "baseline_seed1": run_baseline_seed1, "notebook": run_notebook, "fast": run_fast, "fast_loops": run_fast_loops,
        "fast_plain_step": run_fast_plain_step}


def loss_curve(output_dir: Path, key: str = "total_loss") -> dict:
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    return {r["iteration"]: r[key] for r in rows if key in r}


def loss_curves(output_dir: Path) -> dict:
    """Every loss term's logged curve (loss_rpn_cls, loss_mask, ...): where two runs' totals part."""
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    keys = sorted({k for r in rows for k in r if k.startswith("loss_")})
    return {key: loss_curve(output_dir, key) for key in keys}


def compare_curves(a: dict, b: dict, from_iter: int) -> float:
    """Mean relative difference of two logged loss curves over their common iterations."""
    common = [i for i in sorted(a) if i in b and i >= from_iter]
    return sum(abs(a[i] - b[i]) / a[i] for i in common) / max(1, len(common))


def curve_noise(a: dict, from_iter: int) -> float:
    """A curve's own noise: the mean relative change between consecutive logged points."""
    points = [a[i] for i in sorted(a) if i >= from_iter]
    return sum(abs(x - y) / x for x, y in zip(points, points[1:])) / max(1, len(points) - 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="baseline,notebook,fast")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--gpus", type=int, default=1, help="0 runs the same comparison on the CPU (a smoke test)")
    parser.add_argument("--ims", type=int, default=16)
    parser.add_argument("--size", default="480x640", help="synthetic image size HEIGHTxWIDTH")
    parser.add_argument("--work", default="/tmp/d2nb-bench-train")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one kind in this process
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.one:
        result = RUNS[args.one](args, work / args.one)
        (work / args.one / "bench.json").write_text(json.dumps(result))
        return 0
    results = {}
    for name in args.runs.split(","):
        argv_one = [a for a in (argv or sys.argv[1:])] + ["--one", name]
        subprocess.run([sys.executable, __file__, *argv_one], check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        r = json.loads((work / name / "bench.json").read_text())
        r["seconds_per_iter"] = r["train_seconds"] / r["iterations_run"]
        r["images_per_second"] = args.ims / r["seconds_per_iter"]
        r["loss_curve"] = loss_curve(work / name)
        r["loss_curves"] = loss_curves(work / name)
        results[name] = r
        print(f"{name:>9}: {r['seconds_per_iter']:.4f} s/iter, {r['images_per_second']:.1f} images/s", flush=True)
        # written after every run: a call cut short keeps the runs it finished
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summarise(args, results, verbose=False), indent=1))
    Path(args.out).write_text(json.dumps(summarise(args, results, verbose=True), indent=1))
    return 0


def summarise(args, results: dict, verbose: bool) -> dict:
    """The runs so far, with every run's ratios and loss-curve distance to the baseline."""
    say = print if verbose else (lambda *a, **k: None)
    summary = {"config": args.config, "iters": args.iters, "ims_per_batch": args.ims, "size": args.size,
               "device": _device(), "runs": results}
    if "baseline" not in results:
        return summary
    base = results["baseline"]
    for name, r in results.items():
        if name != "baseline":
            r["s_per_iter_ratio_vs_baseline"] = r["seconds_per_iter"] / base["seconds_per_iter"]
            r["images_per_second_ratio_vs_baseline"] = r["images_per_second"] / base["images_per_second"]
            r["loss_curve_mean_relative_difference"] = compare_curves(base["loss_curve"], r["loss_curve"], 20)
            r["baseline_curve_noise"] = curve_noise(base["loss_curve"], 20)
            say(f"{name:>9} vs baseline: s/iter x{r['s_per_iter_ratio_vs_baseline']:.3f}, images/s "
                f"x{r['images_per_second_ratio_vs_baseline']:.3f}, loss curve differs by "
                f"{100 * r['loss_curve_mean_relative_difference']:.1f}% on average (the baseline's own "
                f"point-to-point noise: {100 * r['baseline_curve_noise']:.1f}%)")
    if "baseline_seed1" in results:
        noise = results["baseline_seed1"]["loss_curve_mean_relative_difference"]
        summary["seed_noise"] = noise
        for name, r in results.items():
            if name not in ("baseline", "baseline_seed1"):
                r["seed_noise"] = noise
                r["loss_curve_within_seed_noise"] = r["loss_curve_mean_relative_difference"] <= noise
                say(f"{name:>9}: loss curve {100 * r['loss_curve_mean_relative_difference']:.1f}% from the "
                    f"baseline's, against {100 * noise:.1f}% between the baseline's seeds 0 and 1: "
                    + ("within" if r["loss_curve_within_seed_noise"] else "outside") + " run-to-run noise")
    return summary


def _device() -> dict:
    import detectron2
    import torch

    return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "detectron2": detectron2.__version__,
            "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    sys.exit(main())

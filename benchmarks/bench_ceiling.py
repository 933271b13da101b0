"""The GPU's ceiling for a model, beside d2nb and detectron2, in one process.

- ``inference``: the model's pure forward pass (eval mode, the pictures already resized and
  normalised on the GPU, float16 autocast, channels-last, backbone + RPN + ROI heads called
  directly, no post-processing), in batches of ``--batches``, in images/s; then, on the same
  pictures and model, ``bench_inference.bench_predict``: d2nb's predictor (one at a time,
  batches, AMP) and detectron2's ``DefaultPredictor``. Ratios: d2nb / DefaultPredictor and
  d2nb / ceiling.
- ``training``: one training step with its batch already on the GPU (bitmask targets, AMP,
  the same optimizer detectron2 builds), repeated: images/s no data pipeline can beat. With
  ``--train-json`` (what ``bench_train.py`` wrote in the same call), the baseline's and fast
  mode's images/s beside it.

    python benchmarks/bench_ceiling.py --config /tmp/d2nb-bench-train/fast --size 480x640 --images 64 \\
        --train-json benchmarks/results/train_h200.json --out benchmarks/results/ceiling_h200.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import bench_inference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only to try the script out
HALF = torch.float16 if DEVICE == "cuda" else torch.bfloat16


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()
from bench_train import CONFIG, STABLE_OPTS, _schedule_opts  # noqa: E402


def _pictures(size: str, count: int) -> list:
    from d2nb.data.synthetic import draw_scene

    height, width = map(int, size.split("x"))
    rng = np.random.default_rng(0)  # the pictures bench_inference.bench_predict makes
    return [draw_scene(rng, height, width, 5)[0] for _ in range(count)]


def _resized_batches(model, predictor, pictures: list, batch: int) -> list:
    import torch.nn.functional as F
    from detectron2.structures import ImageList

    from d2nb.export.runtime import output_size

    short, longest = predictor.resize.short_edge_length[0], predictor.resize.max_size
    tensors = []
    for picture in pictures:
        image = picture[:, :, ::-1] if predictor.input_format == "BGR" else picture
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(DEVICE).permute(2, 0, 1).float()
        height, width = output_size(*picture.shape[:2], short, longest)
        tensor = F.interpolate(tensor[None], (height, width), mode="bilinear", align_corners=False)[0]
        tensors.append((tensor - model.pixel_mean) / model.pixel_std)
    return [ImageList.from_tensors(tensors[i:i + batch], model.backbone.size_divisibility,
                                   padding_constraints=model.backbone.padding_constraints)
            for i in range(0, len(tensors), batch)]


def inference_ceiling(predictor, pictures: list, batches: list, passes: int, batched_heads: bool = False) -> dict:
    from d2nb.batched_heads import use_batched_heads

    model = copy.deepcopy(predictor.model).eval().to(memory_format=torch.channels_last)
    if batched_heads:
        use_batched_heads(model)
    found = {}
    for batch in batches:
        inputs = _resized_batches(model, predictor, pictures, batch)

        def forward(images):
            with torch.inference_mode(), torch.autocast(DEVICE, dtype=HALF):
                features = model.backbone(images.tensor.contiguous(memory_format=torch.channels_last))
                proposals, _ = model.proposal_generator(images, features, None)
                results, _ = model.roi_heads(images, features, proposals, None)
            return results

        for images in inputs[:2]:
            forward(images)
        seconds = []
        for _ in range(passes):
            _sync()
            started = time.perf_counter()
            for images in inputs:
                forward(images)
            _sync()
            seconds.append(time.perf_counter() - started)
        found[f"batch{batch}" + ("_batched_heads" if batched_heads else "")] = {"images_s": len(pictures) / statistics.median(seconds),
                                  "every_pass": [round(len(pictures) / s, 1) for s in seconds],
                                  "padded_input": list(inputs[0].tensor.shape[-2:])}
    return found


def training_ceiling(ims: int, size: str, iters: int, batched_heads: bool = False, d2nb_step: bool = False) -> dict:
    """One step repeated on a batch already on the GPU. ``d2nb_step``: with fast mode's optimizer
    (fused SGD, batched clipping: ``Trainer.build_optimizer``) and no host wait in the step."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    from d2nb.data import SyntheticSpec, register_synthetic

    height, width = map(int, size.split("x"))
    data = register_synthetic(SyntheticSpec(height=height, width=width))
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "4", "SOLVER.IMS_PER_BATCH", str(ims),
                         "SOLVER.BASE_LR", str(0.02 * ims / 16), "INPUT.MASK_FORMAT", "bitmask",
                         "MODEL.DEVICE", DEVICE]
                        + _schedule_opts(300) + STABLE_OPTS)
    model = build_model(cfg).train()
    if batched_heads:
        from d2nb.batched_heads import use_batched_heads

        use_batched_heads(model)
    if d2nb_step:
        from d2nb.train import Trainer

        cfg.D2NB_FAST_STEP = cfg.D2NB_FOREACH_CLIP = True
        optimizer = Trainer.build_optimizer(cfg, model)
    else:
        optimizer = build_optimizer(cfg, model)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = []
    for record in DatasetCatalog.get(data.train)[:ims]:
        item = mapper(record)
        item["image"] = item["image"].to(DEVICE)
        item["instances"] = item["instances"].to(DEVICE)
        batch.append(item)
    scaler = torch.amp.GradScaler(DEVICE, enabled=DEVICE == "cuda")

    def step():
        with torch.autocast(DEVICE, dtype=HALF):
            losses = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses).backward()
        if d2nb_step:
            scaler.unscale_(optimizer)  # as FastStepTrainer: clipping sees unscaled gradients
        scaler.step(optimizer)
        scaler.update()

    from detectron2.utils.events import EventStorage

    with EventStorage(0):  # where the heads log their statistics
        for _ in range(10):
            step()
        _sync()
        started = time.perf_counter()
        for _ in range(iters):
            step()
        _sync()
    seconds = (time.perf_counter() - started) / iters
    return {"seconds_per_iter": seconds, "images_s": ims / seconds, "ims_per_batch": ims, "iters": iters,
            "size": size, "config": CONFIG, "batched_heads": batched_heads, "d2nb_step": d2nb_step}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a trained run (bench_train.py's fast output) or a config")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--batch", type=int, default=8, help="d2nb's batch size")
    parser.add_argument("--amp-batches", default="16", help="d2nb with AMP at these batch sizes too")
    parser.add_argument("--cpu-resize", action="store_true", help="also d2nb resizing on the CPU, as before")
    parser.add_argument("--no-graphs", action="store_true", help="also d2nb (float32 and AMP) without CUDA graphs")
    parser.add_argument("--per-picture-post", action="store_true",
                        help="also d2nb AMP with detectron2's box inference and detector_postprocess picture by picture")
    parser.add_argument("--strict-heads", action="store_true",
                        help="also d2nb AMP with the heads' matrix products in strict float32 (no TF32)")
    parser.add_argument("--dump", default=None, help="every pipeline's detections, as JSON (bench_inference --dump)")
    parser.add_argument("--profile", action="store_true", help="cProfile and torch.profiler over one AMP pass")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--train-ims", type=int, default=16)
    parser.add_argument("--train-iters", type=int, default=50)
    parser.add_argument("--train-json", default=None)
    parser.add_argument("--skip", choices=["inference", "training"], default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import detectron2

    from d2nb.predict import Predictor

    data = {"command": "python benchmarks/bench_ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "cuda": torch.version.cuda,
                        "detectron2": detectron2.__version__, "date": time.strftime("%Y-%m-%d")}}
    if args.skip != "inference":
        predictor = Predictor(args.config, args.weights, device=DEVICE, cuda_graphs=False,
                              batched_heads=False)  # the model as built
        batches = [int(b) for b in args.batches.split(",")]
        ceiling = inference_ceiling(predictor, _pictures(args.size, args.images), batches, args.passes)
        # the same forward pass with d2nb's batched RPN proposals: the ceiling d2nb is measured against is the higher
        ceiling.update(inference_ceiling(predictor, _pictures(args.size, args.images), batches, args.passes,
                                         batched_heads=True))
        del predictor
        if args.out:  # kept if the call is cut short before the pipelines finish
            Path(args.out).write_text(json.dumps({**data, "inference": {"ceiling": ceiling}}, indent=1))
        ours = bench_inference.bench_predict(argparse.Namespace(
            size=args.size, images=args.images, weights=args.weights, config=args.config, device=DEVICE,
            score_floor=0.05, batch=args.batch, threshold=0.5, passes=args.passes, dump=args.dump, profile=args.profile,
            top=30, strict_heads=args.strict_heads,
            amp_batches=args.amp_batches, cpu_resize=args.cpu_resize, no_graphs=args.no_graphs,
            per_picture_post=args.per_picture_post))
        best = max(v["images_s"] for v in ceiling.values())
        data["inference"] = {"ceiling": ceiling, "pipelines": ours,
                             "vs_ceiling": {name: v / best for name, v in ours["images_s"].items()}}
        print(f"inference ceiling ({args.images} pictures {args.size}, resized on the GPU, fp16, channels-last):")
        for name, v in ceiling.items():
            print(f"  {name:>24}: {v['images_s']:7.1f} images/s  (padded {v['padded_input']}, passes {v['every_pass']})")
        for name, v in ours["images_s"].items():
            print(f"  {name:>24}: {v:7.1f} images/s  x{ours['vs_default_predictor'][name]:.2f} DefaultPredictor, "
                  f"{100 * v / best:.0f}% of the ceiling, same detections {ours['same_detections'].get(name, 1):.1%}")
        noise = ours.get("default_predictor_tf32_vs_float32")
        if noise:
            print(f"  DefaultPredictor with TF32 (PyTorch's default) against itself in strict float32: "
                  f"same detections {noise['same_detections']:.1%}")
    if args.skip != "training":
        loops = training_ceiling(args.train_ims, args.size, args.train_iters)
        batched = training_ceiling(args.train_ims, args.size, args.train_iters, batched_heads=True)
        stepped = training_ceiling(args.train_ims, args.size, args.train_iters, batched_heads=True, d2nb_step=True)
        data["training"] = {"ceiling": max(loops, batched, stepped, key=lambda r: r["images_s"]),
                            "ceiling_detectron2_loops": loops, "ceiling_batched_heads": batched,
                            "ceiling_batched_heads_fast_step": stepped}
        ceiling = data["training"]["ceiling"]["images_s"]
        print(f"training ceiling (R-50 FPN, {args.train_ims} images on the GPU, AMP, bitmask targets): "
              f"{loops['images_s']:.1f} images/s with detectron2's per-picture loops, "
              f"{batched['images_s']:.1f} with d2nb's batched heads, "
              f"{stepped['images_s']:.1f} with those and fast mode's optimizer step (fused SGD, no host wait)")
        if args.train_json and Path(args.train_json).is_file():
            runs = json.loads(Path(args.train_json).read_text())["runs"]
            data["training"]["pipelines"] = {name: r["images_per_second"] for name, r in runs.items()}
            for name, r in runs.items():
                print(f"  {name:>9}: {r['images_per_second']:6.1f} images/s, {100 * r['images_per_second'] / ceiling:.0f}% "
                      "of the ceiling" + (f", x{r['images_per_second_ratio_vs_baseline']:.2f} the baseline"
                                           if "images_per_second_ratio_vs_baseline" in r else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()

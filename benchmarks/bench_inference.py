"""Inference speed: the threshold explorer's redraw, and batched against one-at-a-time prediction.

Two measurements, each against a baseline in the same process:

- ``redraw``: one slider move of the threshold explorer on a 1-megapixel picture
  (``draw_predictions`` + JPEG encoding, and the widget's own round trip), against
  detectron2's ``Visualizer.draw_instance_predictions`` on the same instances. The instances
  are the synthetic generator's shapes drawn at 1000 x 1000 px with random scores, so the
  masks have real outlines. Target: at most 50 ms.
- ``predict``: images/s of ``Predictor.predict`` with ``--batch`` pictures per forward pass
  and with one, against detectron2's ``DefaultPredictor`` (what demo.py runs, one picture at
  a time), on the same model and pictures; on a GPU also with AMP.

    python benchmarks/bench_inference.py                       # CPU: the d2nb recipe at 128 px
    python benchmarks/bench_inference.py --config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \\
        --weights none --size 480x640 --images 64 --batch 8 --out benchmarks/results/inference_h100.json

``--weights none`` times a randomly initialised model (no download); ``--config`` may be a
training output folder for a trained one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def timed(function, repeats: int) -> float:
    """Median wall-clock milliseconds of ``repeats`` calls, after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def megapixel_prediction(instances: int, seed: int = 0):
    """A 1000 x 1000 synthetic scene whose shapes become ``instances`` predictions."""
    import cv2

    from d2nb.data.synthetic import CLASS_NAMES, draw_scene
    from d2nb.predict import prediction_from_arrays

    rng = np.random.default_rng(seed)
    image, boxes, masks, classes = None, [], [], []
    while len(boxes) < instances:
        scene, shapes = draw_scene(rng, 1000, 1000, 8)
        image = scene if image is None else image
        for category_id, polygons, (x, y, w, h), _ in shapes[: instances - len(boxes)]:
            mask = np.zeros((1000, 1000), np.uint8)
            cv2.fillPoly(mask, [np.round(np.array(p).reshape(-1, 2)).astype(np.int32) for p in polygons], 1)
            boxes.append((x, y, x + w, y + h))
            masks.append(mask.astype(bool))
            classes.append(category_id - 1)
    scores = rng.uniform(0.05, 1.0, instances)
    return prediction_from_arrays(image, boxes, scores, classes, list(CLASS_NAMES), np.stack(masks), "1mp.png")


def bench_redraw(instances: int, repeats: int) -> dict:
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    from d2nb.draw import draw_predictions, encode_jpeg
    from d2nb.widgets.inference import ThresholdExplorer

    prediction = megapixel_prediction(instances)
    thresholds = iter(np.tile([0.3, 0.31], 1000))  # the slider nudged: about the same instances as draw_ms
    explorer = ThresholdExplorer([prediction], score_threshold=0.5)

    def slider_move():
        explorer.slider.value = float(next(thresholds))

    kept = prediction.kept(0.3)
    detectron2_instances = Instances(prediction.image.shape[:2], pred_boxes=Boxes(prediction.boxes[kept]),
                                     scores=prediction.scores[kept], pred_classes=prediction.classes[kept],
                                     pred_masks=np.stack([prediction.full_mask(i) for i in kept]))

    def visualizer():
        Visualizer(prediction.image).draw_instance_predictions(detectron2_instances).get_image()

    result = {
        "picture": f"{prediction.image.shape[1]}x{prediction.image.shape[0]}", "instances": instances,
        "draw_ms": timed(lambda: draw_predictions(prediction, 0.3), repeats),
        "draw_and_jpeg_ms": timed(lambda: encode_jpeg(draw_predictions(prediction, 0.3)), repeats),
        "slider_move_ms": timed(slider_move, repeats),
        "detectron2_visualizer_ms": timed(visualizer, max(3, repeats // 5)),
    }
    result["visualizer_vs_slider"] = result["detectron2_visualizer_ms"] / result["slider_move_ms"]
    return result


def bench_predict(args) -> dict:
    """images/s of d2nb's variants and of DefaultPredictor, each the median of ``--passes``
    passes over the pictures (the variants and the baseline take turns within every pass)."""
    import torch
    from detectron2.engine import DefaultPredictor

    from d2nb.data.synthetic import draw_scene
    from d2nb.predict import Predictor
    from d2nb.zoo import CPU_RECIPE

    height, width = map(int, args.size.split("x"))
    rng = np.random.default_rng(0)
    pictures = [draw_scene(rng, height, width, 5)[0] for _ in range(args.images)]
    weights = args.weights if args.weights is not None else ("none" if args.config == CPU_RECIPE else None)
    torch.manual_seed(0)  # random weights: the same for every predictor (seeded alike below)
    predictor = Predictor(args.config, weights, device=args.device, score_floor=args.score_floor)
    on_gpu = predictor.device.startswith("cuda")
    variants = {"one_at_a_time": (predictor, 1, False), f"batch{args.batch}": (predictor, args.batch, False)}
    if on_gpu:
        torch.manual_seed(0)
        amp = Predictor(args.config, weights, device=args.device, amp=True, score_floor=args.score_floor)
        variants[f"batch{args.batch}_amp"] = (amp, args.batch, False)
        variants[f"batch{args.batch}_autocast"] = (predictor, args.batch, True)
        other_batches = [int(b) for b in str(getattr(args, "amp_batches", "") or "").split(",") if b]
        every_batch = sorted({args.batch, *other_batches})
        for batch in other_batches:  # other sizes
            variants[f"batch{batch}"] = (predictor, batch, False)
            variants[f"batch{batch}_amp"] = (amp, batch, False)
        if getattr(args, "no_graphs", False):  # float32 and AMP without the backbone's CUDA graphs
            torch.manual_seed(0)
            eager = Predictor(args.config, weights, device=args.device, amp=True, score_floor=args.score_floor,
                              cuda_graphs=False)
            torch.manual_seed(0)
            eager32 = Predictor(args.config, weights, device=args.device, score_floor=args.score_floor,
                                cuda_graphs=False)
            for batch in every_batch:
                variants[f"batch{batch}_no_graphs"] = (eager32, batch, False)
                variants[f"batch{batch}_amp_no_graphs"] = (eager, batch, False)
        if getattr(args, "per_picture_post", False):  # d2nb as it was: detectron2's box inference and
            torch.manual_seed(0)                        # detector_postprocess picture by picture
            before = Predictor(args.config, weights, device=args.device, amp=True, score_floor=args.score_floor)
            vars(before.model.roi_heads.box_predictor).pop("inference", None)
            before._per_picture_post = True
            for batch in every_batch:
                variants[f"batch{batch}_amp_per_picture_post"] = (before, batch, False)
        if getattr(args, "strict_heads", False):  # AMP's float16 backbone, the heads without TF32
            torch.manual_seed(0)                    # (Predictor(amp=True) turns TF32 matmul on for them)
            strict_heads = Predictor(args.config, weights, device=args.device, amp=True, score_floor=args.score_floor)
            strict_heads.amp = False  # only tf32_matmul reads it after construction
            for batch in every_batch:
                variants[f"batch{batch}_amp_strict_heads"] = (strict_heads, batch, False)
        if getattr(args, "cpu_resize", False):  # d2nb as it was: pictures resized on the CPU
            torch.manual_seed(0)
            before = Predictor(args.config, weights, device=args.device, amp=True, score_floor=args.score_floor)
            before._resize_on_gpu = False
            variants[f"batch{args.batch}_amp_cpu_resize"] = (before, args.batch, False)
    torch.manual_seed(0)
    baseline = DefaultPredictor(_detectron2_cfg(predictor, args.threshold))

    def run_variant(name):
        import d2nb.predict.predictor as module
        from d2nb.predict.postprocess import scaled_batch, scaled_keeping_mask_probs

        chosen, batch, autocast = variants[name]
        chosen._autocast = autocast  # torch.autocast around the fp32 model, for comparison
        chosen.set_score_floor(chosen.score_floor)  # empty the cache: every picture runs
        if getattr(chosen, "_per_picture_post", False):
            module.scaled_batch = lambda raw, sizes: [scaled_keeping_mask_probs(x, h, w) for x, (h, w) in zip(raw, sizes)]
        _sync(torch)
        started = time.perf_counter()
        try:
            found = chosen.predict(pictures, batch_size=batch, progress=False)
            _sync(torch)
        finally:
            module.scaled_batch = scaled_batch
        chosen._autocast = False
        return found, time.perf_counter() - started

    def run_baseline():
        _sync(torch)
        started = time.perf_counter()
        theirs = [baseline(np.ascontiguousarray(picture[:, :, ::-1]))["instances"].to("cpu")  # BGR, as demo.py
                  for picture in pictures]
        _sync(torch)
        return theirs, time.perf_counter() - started

    for name, (chosen, batch, _) in variants.items():  # warm-up: cuDNN picks its algorithms per shape
        chosen.predict(pictures[:2 * batch], batch_size=batch, progress=False)
    baseline(np.ascontiguousarray(pictures[0][:, :, ::-1]))
    seconds = {name: [] for name in [*variants, "default_predictor"]}
    outputs = {}
    for _ in range(args.passes):
        for name in variants:
            outputs[name], spent = run_variant(name)
            seconds[name].append(spent)
        theirs, spent = run_baseline()
        seconds["default_predictor"].append(spent)
    strict = None
    if on_gpu:  # the comparison's own noise: DefaultPredictor's detections with TF32 convolutions
        cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # (PyTorch's default)
        try:                                                                            # against strict float32
            strict, _ = run_baseline()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    missed = {}  # per pipeline: DefaultPredictor's detections it did not find, and its nearest
    result = {"config": predictor.choice.label, "device": predictor.device, "pictures": args.images,
              "size": args.size, "batch": args.batch, "score_floor": args.score_floor, "passes": args.passes,
              "default_predictor_threshold": args.threshold, "default_predictor_instances": sum(len(t) for t in theirs),
              "images_s": {name: len(pictures) / statistics.median(spent) for name, spent in seconds.items()},
              "images_s_every_pass": {name: [round(len(pictures) / s, 2) for s in spent] for name, spent in seconds.items()},
              "detections_per_picture": {name: sum(map(len, found)) / len(found) for name, found in outputs.items()},
              "same_detections": {name: same_detections(found, theirs, misses=missed.setdefault(name, []))
                                  for name, found in outputs.items()},
              "missed_detections": missed}
    if strict is not None:
        result["default_predictor_tf32_vs_float32"] = {
            "same_detections": same_detections(_as_predictions(strict), theirs),
            "instances_float32": sum(len(t) for t in strict),
            "note": "DefaultPredictor (TF32 convolutions, PyTorch's default) matched against itself in strict "
                    "float32: how far numerics alone move this model's detections"}
    base = result["images_s"]["default_predictor"]
    result["vs_default_predictor"] = {name: v / base for name, v in result["images_s"].items()}
    if args.dump:
        dump = {name: [{"boxes": p.boxes.round(2).tolist(), "scores": p.scores.round(4).tolist(),
                        "classes": p.classes.tolist()} for p in found] for name, found in outputs.items()}
        dump["default_predictor"] = [{"boxes": t.pred_boxes.tensor.numpy().round(2).tolist(),
                                      "scores": t.scores.numpy().round(4).tolist(),
                                      "classes": t.pred_classes.numpy().tolist()} for t in theirs]
        Path(args.dump).write_text(json.dumps(dump))
    if args.profile:
        amp_runs = [name for name in variants if name.endswith("_amp")]  # the largest batch's
        profile_variant(run_variant, max(amp_runs, key=lambda n: variants[n][1]) if amp_runs else f"batch{args.batch}",
                        args.top)
    return result


def profile_variant(run_variant, name: str, top: int) -> None:
    """cProfile's functions by own time, and torch.profiler's operators, over one pass."""
    import cProfile
    import pstats

    import torch

    profile = cProfile.Profile()
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as kernels:
        profile.enable()
        run_variant(name)
        profile.disable()
    print(f"PROFILE {name}", flush=True)
    pstats.Stats(profile).sort_stats("tottime").print_stats(top)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(kernels.key_averages().table(sort_by=key, row_limit=top), flush=True)


class _Found:
    """DefaultPredictor's instances of a picture in the shape ``same_detections`` reads d2nb's in."""

    def __init__(self, instances):
        self.boxes, self.scores = instances.pred_boxes.tensor.numpy(), instances.scores.numpy()
        self.classes = instances.pred_classes.numpy()

    def __len__(self):
        return len(self.scores)


def _as_predictions(instances: list) -> list:
    return [_Found(t) for t in instances]


def same_detections(ours: list, theirs: list, min_iou: float = 0.9, max_score_gap: float = 0.02,
                    misses: list | None = None) -> float:
    """Share of DefaultPredictor's instances that d2nb also found: same class, box IoU at
    least ``min_iou`` and a score within ``max_score_gap`` (greedy, best score first). With
    ``misses`` (a list), each instance not found is appended to it: its picture, score and
    class, and d2nb's best-overlapping detection's IoU, score and class."""
    from detectron2.structures import Boxes, pairwise_iou

    import torch

    total = matched = 0
    for picture, (prediction, instances) in enumerate(zip(ours, theirs)):
        total += len(instances)
        if not len(instances):
            continue
        scores, classes = instances.scores.numpy(), instances.pred_classes.numpy()
        iou = (pairwise_iou(instances.pred_boxes, Boxes(torch.as_tensor(prediction.boxes))).numpy()
               if len(prediction) else np.zeros((len(instances), 0)))
        same = ((classes[:, None] == prediction.classes[None, :])
                & (np.abs(scores[:, None] - prediction.scores[None, :]) <= max_score_gap) & (iou >= min_iou))
        free = np.ones(len(prediction), bool)
        for row in np.argsort(-scores):
            candidates = np.flatnonzero(same[row] & free)
            if len(candidates):
                free[candidates[np.argmax(iou[row, candidates])]] = False
                matched += 1
            elif misses is not None:
                best = int(np.argmax(iou[row])) if len(prediction) else None
                misses.append({"picture": picture, "score": round(float(scores[row]), 4), "class": int(classes[row]),
                               "d2nb_iou": None if best is None else round(float(iou[row, best]), 3),
                               "d2nb_score": None if best is None else round(float(prediction.scores[best]), 4),
                               "d2nb_class": None if best is None else int(prediction.classes[best])})
    return matched / total if total else float("nan")


def _detectron2_cfg(predictor, threshold: float):
    """The same model as detectron2 would build it for demo.py: the config, the weights, and
    ``threshold`` as its score threshold (demo.py's --confidence-threshold)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.set_new_allowed(True)
    cfg.merge_from_file(predictor.choice.config)
    cfg.MODEL.WEIGHTS = predictor.choice.weights or ""
    cfg.MODEL.DEVICE = predictor.device
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN":
        cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    return cfg


def _sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mask_rcnn_R_18_FPN_cpu.yaml")
    parser.add_argument("--weights", default=None,
                        help="default: the config's own (a run's model_final.pth, the zoo checkpoint); "
                             "'none' for random weights, which the d2nb recipe gets by default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="128x128", help="HxW of the pictures to predict")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--instances", type=int, default=20, help="instances on the 1-megapixel picture")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--score-floor", type=float, default=0.05,
                        help="lowest score kept; 0 keeps 100 detections per picture even for random weights")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="DefaultPredictor's SCORE_THRESH_TEST, as demo.py's --confidence-threshold (default "
                             "0.5); its instances are matched against all of d2nb's (score floor and above)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the pictures; the median counts")
    parser.add_argument("--amp-batches", default="", help="also AMP at these batch sizes, e.g. 16,32")
    parser.add_argument("--cpu-resize", action="store_true", help="also AMP with the pictures resized on the CPU")
    parser.add_argument("--no-graphs", action="store_true", help="also AMP without the backbone's CUDA graphs")
    parser.add_argument("--per-picture-post", action="store_true",
                        help="also AMP with detectron2's box inference and detector_postprocess picture by picture")
    parser.add_argument("--profile", action="store_true", help="also profile one pass of the batched (AMP) predictor")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dump", default=None, help="write every predictor's detections (json) here")
    parser.add_argument("--skip", choices=["redraw", "predict"], default=None)
    parser.add_argument("--out", default=None, help="write the results as json here")
    args = parser.parse_args(argv)
    import detectron2
    import torch

    results = {"command": " ".join(["python", *sys.argv]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "detectron2": detectron2.__version__,
                           "date": time.strftime("%Y-%m-%d"),
                           "threads": torch.get_num_threads(),
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    if args.skip != "redraw":
        results["redraw"] = bench_redraw(args.instances, args.repeats)
        r = results["redraw"]
        print(f"redraw of a {r['picture']} picture, {r['instances']} instances: draw {r['draw_ms']:.1f} ms, "
              f"draw+JPEG {r['draw_and_jpeg_ms']:.1f} ms, slider move {r['slider_move_ms']:.1f} ms (target <= 50); "
              f"detectron2 Visualizer {r['detectron2_visualizer_ms']:.0f} ms (x{r['visualizer_vs_slider']:.1f} slower)")
    if args.skip != "predict":
        results["predict"] = bench_predict(args)
        r = results["predict"]
        print(f"predict {r['config']} on {r['device']}, {r['pictures']} pictures {r['size']}, score floor "
              f"{r['score_floor']}, DefaultPredictor at {r['default_predictor_threshold']} "
              f"({r['default_predictor_instances']} instances), median of {r['passes']} passes:")
        for name, speed in r["images_s"].items():
            same = r["same_detections"].get(name)
            print(f"  {name:>22}: {speed:6.1f} images/s  x{r['vs_default_predictor'][name]:.2f}"
                  + (f"  same detections {same:.1%}" if same is not None else "")
                  + f"  (passes: {r['images_s_every_pass'][name]})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

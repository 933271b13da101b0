"""Where a batch of d2nb's predictor spends its time: each stage run alone, the GPU synchronised
after it, in ms per batch and per picture, beside the pipelined ``Predictor.predict`` and how
long the GPU was busy during it (torch.profiler's kernel time).

    python benchmarks/profile_inference.py --config /tmp/bt/fast --size 480x640 --images 64 --batch 16

The stages are those of ``Predictor._forward`` and ``to_predictions``: hashing, resizing on the
CPU, the copy to the GPU, normalising and padding, backbone, RPN, box head, mask head,
``detector_postprocess`` and the mask pasting with the copy off the GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage_times(predictor, pictures: list, batch: int) -> dict:
    """Median ms per batch of every stage, over the batches of ``pictures``."""
    from d2nb.predict.batching import as_loaded, image_key
    from d2nb.predict.postprocess import scaled_batch, to_predictions

    model = predictor.model
    times: dict[str, list] = {}

    def timed(name, function):
        _sync()
        started = time.perf_counter()
        value = function()
        _sync()
        times.setdefault(name, []).append(1000 * (time.perf_counter() - started))
        return value

    items = [as_loaded(p, i) for i, p in enumerate(pictures)]
    where = "pin memory" if predictor._resize_on_gpu else "resize"
    for start in range(0, len(pictures), batch):
        chunk = pictures[start:start + batch]
        with torch.inference_mode():
            timed("hash pixels", lambda: [image_key(p) for p in chunk])
            pixels = timed(f"{where} (CPU, one thread)", lambda: [predictor._input_tensor(p) for p in chunk])
            inputs = timed("copy to GPU" + (" + resize there" if predictor._resize_on_gpu else ""), lambda: [
                {"image": t, "height": p.shape[0], "width": p.shape[1]}
                for t, p in zip(predictor._on_device(pixels), chunk)])
            images = timed("normalise + pad", lambda: model.preprocess_image(inputs))
            features = timed("backbone", lambda: model.backbone(images.tensor))
            proposals = timed("RPN", lambda: model.proposal_generator(images, features, None)[0])
            heads = model.roi_heads
            found = timed("box head + NMS", lambda: heads._forward_box(features, proposals))
            found = timed("mask head", lambda: heads.forward_with_given_boxes(features, found))
            outputs = timed("detector_postprocess", lambda: [
                {"instances": r} for r in scaled_batch(found, [(i["height"], i["width"]) for i in inputs])])
        timed("paste masks + copy off GPU", lambda: to_predictions(outputs, items[start:start + len(chunk)],
                                                                   predictor.labels))
    return {name: statistics.median(v) for name, v in times.items()}


def pipeline(predictor, pictures: list, batch: int, passes: int) -> dict:
    """images/s of ``Predictor.predict`` (median of ``passes``) and the GPU's busy share."""
    seconds = []
    for _ in range(passes):
        predictor.clear_cache()
        _sync()
        started = time.perf_counter()
        predictor.predict(pictures, batch_size=batch, progress=False)
        _sync()
        seconds.append(time.perf_counter() - started)
    busy = None
    if torch.cuda.is_available():
        predictor.clear_cache()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            _sync()
            started = time.perf_counter()
            predictor.predict(pictures, batch_size=batch, progress=False)
            _sync()
            wall = time.perf_counter() - started
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        busy = {"kernel_ms": kernel_us / 1000, "wall_ms": 1000 * wall, "share": kernel_us / 1e6 / wall}
    return {"images_s": len(pictures) / statistics.median(seconds),
            "every_pass": [round(len(pictures) / s, 1) for s in seconds], "gpu_busy": busy}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--tf32", action="store_true", help="TF32 matrix products (the heads' linear layers)")
    parser.add_argument("--cpu-resize", action="store_true", help="resize on the CPU (d2nb before resizing on the GPU)")
    parser.add_argument("--cprofile", type=int, default=0, help="also print cProfile's top N functions")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_ceiling import _pictures

    from d2nb.predict import Predictor

    predictor = Predictor(args.config, args.weights, device=args.device, amp=args.amp)
    predictor._resize_on_gpu = predictor._resize_on_gpu and not args.cpu_resize
    pictures = _pictures(args.size, args.images)
    predictor.predict(pictures[:2 * args.batch], batch_size=args.batch, progress=False)  # warm-up
    if args.cprofile:  # Python's own time per function over the stages, one batch at a time
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        stage_times(predictor, pictures, args.batch)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.cprofile)
    stages = stage_times(predictor, pictures, args.batch)
    total = sum(stages.values())
    print(f"stages, batch {args.batch}, {args.size}, amp {args.amp}, tf32 {args.tf32} (each alone, GPU synchronised):")
    for name, ms in stages.items():
        print(f"  {name:>28}: {ms:8.2f} ms/batch {ms / args.batch:7.2f} ms/picture {100 * ms / total:5.1f}%")
    print(f"  {'sum':>28}: {total:8.2f} ms/batch = {1000 * args.batch / total:.1f} images/s one stage at a time")
    piped = pipeline(predictor, pictures, args.batch, args.passes)
    print(f"Predictor.predict: {piped['images_s']:.1f} images/s {piped['every_pass']}, GPU busy {piped['gpu_busy']}")
    data = {"command": "python benchmarks/profile_inference.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
            "stages_ms_per_batch": stages, "pipeline": piped, "batch": args.batch, "amp": args.amp,
            "tf32": args.tf32, "resize_on_gpu": predictor._resize_on_gpu}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()

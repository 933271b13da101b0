"""Export latency: PyTorch against TorchScript (tracing, scripting) and ONNX Runtime, per picture.

On the CPU, ``d2nb.export.export_model`` exports ``--run`` (a 03_train output folder) three
times and checks each export against PyTorch on the same pictures; its table's median
milliseconds per picture (after warm-up, one picture at a time, pre- and post-processing
included) are collected here, with whether the export matched.

With ``--device cuda``, the same model is also traced and scripted on the GPU and timed there
against the PyTorch model on the GPU (``d2nb.export.check.run_timed``, the same pictures, the
same detections compared). ONNX Runtime runs on the CUDA provider only when the installed
onnxruntime has it (``onnxruntime-gpu``); otherwise its row says so.

    python benchmarks/bench_export.py --run runs/train --out benchmarks/results/export_cpu.json
    python benchmarks/bench_export.py --run runs/train --device cuda --out benchmarks/results/export_h200.json
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from d2nb.export import export_model
from d2nb.export import runtime
from d2nb.export.check import compare, run_timed
from d2nb.export.export import _settings, _trace, _script, pytorch_runner
from d2nb.images import load_images

EXPORTS = (("torchscript", "tracing"), ("torchscript", "scripting"), ("onnx", "tracing"))


def cpu_latency(run: str, pictures, folder: Path) -> dict:
    rows = {}
    for format, method in EXPORTS:
        result = export_model(run, format=format, export_method=method, sample_images=pictures,
                              output_dir=folder / f"{format}-{method}")
        for row in result.table.rows:
            name = row["runs"]
            rows.setdefault(name, {"ms": [], "verdict": row["verdict"], "matched": row.get("matched")})
            rows[name]["ms"].append(row["latency ms (median)"])
    return {name: {"ms_per_picture": statistics.median(v["ms"]), "verdict": v["verdict"], "matched": v["matched"]}
            for name, v in rows.items()}


def gpu_latency(run: str, pictures, folder: Path) -> dict:
    from d2nb.predict import Predictor

    predictor = Predictor(run, device="cuda")
    settings = _settings(predictor)
    images = pictures
    sample = runtime.preprocess(np.ascontiguousarray(images[0][:, :, ::-1]), settings)
    synced = lambda runner: (lambda image: (runner(image), torch.cuda.synchronize())[0])  # noqa: E731

    traced_file, scripted_file = folder / "gpu-traced.ts", folder / "gpu-scripted.ts"
    names = _trace(predictor.model, sample, traced_file, "torchscript")
    _script(predictor.model, scripted_file)
    traced, scripted = torch.jit.load(str(traced_file)), torch.jit.load(str(scripted_file))

    def ts_runner(module, scripting):
        def run(image_rgb):
            pixels = runtime.preprocess(np.ascontiguousarray(image_rgb[:, :, ::-1]), settings)
            tensor = torch.from_numpy(pixels).cuda()
            with torch.no_grad():
                outputs = module(({"image": tensor},))[0] if scripting else dict(zip(names, module(tensor)))
            outputs = {k: v.cpu().numpy() for k, v in outputs.items()}
            return runtime.postprocess(outputs, pixels.shape[1:], image_rgb.shape[:2], settings["mask_threshold"])
        return run

    runners = {"PyTorch (cuda)": synced(pytorch_runner(predictor)),
               "TorchScript (tracing, cuda)": synced(ts_runner(traced, False)),
               "TorchScript (scripting, cuda)": synced(ts_runner(scripted, True))}
    import onnxruntime

    rows, reference = {}, None
    for name, runner in runners.items():
        found, times = run_timed(runner, images)
        row = {"ms_per_picture": float(np.median(times))}
        if reference is None:
            reference = found
        else:
            comparison = compare(name, reference, found)
            row.update(matched=f"{comparison.matched}/{comparison.reference_instances}",
                       verdict="DIFFERS" if comparison.problems else "matches")
        rows[name] = row
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        rows["ONNX Runtime (cuda)"] = {"ms_per_picture": None, "verdict": "not run: the installed onnxruntime "
                                       f"{onnxruntime.__version__} has no CUDA provider (pip install onnxruntime-gpu)"}
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a 03_train output folder")
    parser.add_argument("--images", default=None, help="a glob of pictures (default: the synthetic val split), the first --count")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.images:
        files = sorted(glob.glob(args.images))[: args.count]
    else:
        from d2nb.data import make_synthetic_dataset

        _, image_dir = make_synthetic_dataset()["val"]
        files = sorted(glob.glob(f"{image_dir}/*.png"))[: args.count]
    pictures = [loaded.image for loaded in load_images(files)]
    data = {"command": "python benchmarks/bench_export.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"cpu": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
            "pictures": len(pictures), "size": "x".join(map(str, pictures[0].shape[:2]))}
    with tempfile.TemporaryDirectory() as tmp:
        data["cpu"] = cpu_latency(args.run, files, Path(tmp))
        if args.device == "cuda":
            data["cuda"] = gpu_latency(args.run, pictures, Path(tmp))
    for where in ("cpu", "cuda"):
        for name, row in data.get(where, {}).items():
            ms = row["ms_per_picture"]
            print(f"{where:>4}  {name:<34} {'-' if ms is None else f'{ms:8.1f} ms/picture'}  {row.get('verdict', '')}")
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()

"""Write benchmarks/RESULTS.md from the JSON files in benchmarks/results/ (one command).

    python benchmarks/report.py

Each section names the device, versions, date and the command that wrote its JSON file, and
checks the numbers against the targets below.
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
TARGETS = {  # issue 7
    "notebook": ("s/iter vs baseline at most x1.02", lambda run: run["s_per_iter_ratio_vs_baseline"] <= 1.02),
    "fast": ("images/s vs baseline at least x1.4, loss curve within the baseline's own noise",
             lambda run: run["images_per_second_ratio_vs_baseline"] >= 1.4
             and run["loss_curve_mean_relative_difference"] <= run.get("baseline_curve_noise", 0)),
}


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def train_section(path: Path, data: dict) -> list:
    device = data["device"]
    lines = [f"## Training: {path.name}", "",
             f"{device['gpu']}, torch {device['torch']}, detectron2 {device['detectron2']}, {device['date']}; "
             f"{data['config']}, random init, {data['ims_per_batch']} images/batch, synthetic {data['size']}, "
             f"{data['iters']} iterations.", "",
             f"Command: `python benchmarks/bench_train.py --runs {','.join(data['runs'])} --iters {data['iters']} "
             f"--ims {data['ims_per_batch']} --size {data['size']}`", "",
             "| run | s/iter | images/s | s/iter vs baseline | images/s vs baseline | loss curve vs baseline "
             "(baseline's own noise) | target |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, run in data["runs"].items():
        ratio = run.get("s_per_iter_ratio_vs_baseline")
        if not ratio:
            lines.append(f"| {name} | {run['seconds_per_iter']:.4f} | {run['images_per_second']:.1f} | 1 | 1 | - | - |")
            continue
        noise = run.get("baseline_curve_noise")
        curve = f"{100 * run['loss_curve_mean_relative_difference']:.1f}%" + (f" ({100 * noise:.1f}%)" if noise else "")
        target, check = TARGETS.get(name, ("-", None))
        verdict = f"{target}: {_met(check(run))}" if check else "-"
        lines.append(f"| {name} | {run['seconds_per_iter']:.4f} | {run['images_per_second']:.1f} | x{ratio:.3f} | "
                     f"x{run['images_per_second_ratio_vs_baseline']:.3f} | {curve} | {verdict} |")
    return lines + [""]


def inference_section(path: Path, data: dict) -> list:
    machine = data["machine"]
    where = machine.get("gpu") or f"CPU ({machine['threads']} threads, {machine['platform']})"
    versions = f"torch {machine['torch']}" + (f", detectron2 {machine['detectron2']}" if "detectron2" in machine else "")
    lines = [f"## Inference: {path.name}", "", f"{where}, {versions}, {machine.get('date', '')}.", ""]
    if data.get("command"):
        lines += [f"Command: `{data['command']}`", ""]
    redraw = data.get("redraw")
    if redraw:
        lines += [f"Threshold explorer, one slider move on a {redraw['picture']} picture with {redraw['instances']} "
                  f"instances: {redraw['slider_move_ms']:.1f} ms (target at most 50 ms: "
                  f"{_met(redraw['slider_move_ms'] <= 50)}); detectron2's Visualizer draws the same in "
                  f"{redraw['detectron2_visualizer_ms']:.0f} ms.", ""]
    r = data.get("predict")
    if r:
        lines += [f"{r['config']} on {r['device']}, {r['pictures']} pictures of {r['size']} (resized as the config "
                  f"says), d2nb's score floor {r['score_floor']}, DefaultPredictor at threshold "
                  f"{r['default_predictor_threshold']} (demo.py's default 0.5); images/s are the median of "
                  f"{r['passes']} passes, the predictors taking turns in each. Same detections: "
                  f"DefaultPredictor's {r['default_predictor_instances']} instances found by d2nb with box IoU "
                  f">= 0.9, the same class and a score within 0.02.", "",
                  "| predictor | images/s | vs DefaultPredictor | same detections | every pass |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for name, speed in r["images_s"].items():
            same = r["same_detections"].get(name)
            passes = ", ".join(f"{v:.1f}" for v in r["images_s_every_pass"][name])
            lines.append(f"| {LABELS.get(name, name)} | {speed:.1f} | x{r['vs_default_predictor'][name]:.2f} | "
                         + (f"{100 * same:.1f}% |" if same is not None else "- |") + f" {passes} |")
        amp = f"batch{r['batch']}_amp"
        if amp in r["images_s"]:
            speed, same = r["vs_default_predictor"][amp], r["same_detections"][amp]
            lines += ["", f"Target (batches of {r['batch']} with mixed precision at least x3 DefaultPredictor's images/s, "
                      f"at least 99% the same detections): x{speed:.2f}, {100 * same:.1f}%: "
                      f"{_met(speed >= 3 and same >= 0.99)}."]
    return lines + [""]


LABELS = {"one_at_a_time": "d2nb, one at a time", "batch8": "d2nb, batches of 8",
          "batch8_amp": "d2nb, batches of 8, AMP (float16 backbone, float32 heads)",
          "batch8_autocast": "d2nb, batches of 8, torch.autocast", "default_predictor": "detectron2 DefaultPredictor (demo.py)"}


def cocoeval_section(path: Path, data: dict) -> list:
    machine = data["machine"]
    return [f"## COCO evaluation: {path.name}", "",
            f"{machine.get('processor') or machine['platform']}, detectron2 {machine['detectron2']}, {machine['date']}.",
            "", f"Command: `{data.get('command', 'python benchmarks/bench_cocoeval.py')}`", "",
            f"bbox results of {data['images']} pictures ({data['ground_truth_boxes']} ground-truth boxes, "
            f"{data['detections']} detections), evaluate() + accumulate():", "",
            "| evaluator | seconds | vs pycocotools |", "| --- | ---: | ---: |",
            f"| pycocotools COCOeval | {data['pycocotools_seconds']:.1f} | 1 |",
            f"| detectron2 COCOeval_opt (C++) | {data['cocoeval_opt_seconds']:.1f} | x{data['speedup']:.1f} faster |", "",
            f"Both give the same 12 AP/AR numbers: {data['same_stats']}.", ""]


def install_section(path: Path, data: dict) -> list:
    machine, target = data["machine"], data["machine"]["build_target"]
    gpu = f"CUDA {target['cuda']} for {target['architectures']}" if target["cuda"] else "CPU only"
    lines = [f"## Install: {path.name}", "",
             f"{machine['cpus']} CPUs ({machine['platform']}), torch {machine['torch']}, detectron2 at "
             f"{data['revision'][:12]} built {gpu}, {machine['date']}.", "",
             f"Command: `{data['command']}`", "",
             "Each install into a fresh virtual environment (`--system-site-packages`) through d2nb's wheel "
             "cache, as `setup_notebook()` does; the cache starts empty.", "",
             "| install | how | wall seconds | build seconds | pip install + import check seconds | target |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for name in ("first", "second"):
        run = data[name]
        target_text = "-" if name == "first" else f"under 60 s: {_met(run['wall_seconds'] < 60)}"
        lines.append(f"| {name} | {run['how']} | {run['wall_seconds']:.1f} | "
                     + (f"{run['build_seconds']:.1f}" if run["build_seconds"] else "-")
                     + f" | {run['install_seconds']:.1f} | {target_text} |")
    lines += ["", f"The wheel is {data['second']['wheel_megabytes']} MB; the second install's `detectron2._C` is "
                  f"the fresh environment's own: {data['second']['imported_from_the_venv']}.", ""]
    return lines


def main() -> None:
    lines = ["# Benchmark results", "",
             "Regenerate with `python benchmarks/report.py` after running the benchmarks that write",
             "`benchmarks/results/*.json` (each section names its command).", ""]
    for path in sorted((HERE / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if path.name.startswith("train"):
            lines += train_section(path, data)
        elif path.name.startswith("inference"):
            lines += inference_section(path, data)
        elif path.name.startswith("cocoeval"):
            lines += cocoeval_section(path, data)
        elif path.name.startswith("install"):
            lines += install_section(path, data)
    notes = HERE / "results" / "NOTES.md"  # the hand-written reading of the numbers
    text = "\n".join(lines) + "\n" + (notes.read_text() if notes.exists() else "")
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()

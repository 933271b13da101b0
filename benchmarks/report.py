"""Write benchmarks/RESULTS.md from the JSON files in benchmarks/results/ (one command).

    python benchmarks/report.py

Each section names the device, versions, date and the command that wrote its JSON file, and
checks the numbers against the targets below.
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
TARGETS = {  # issue 7 (the notebook), issue 21 (fast mode: x2, was x1.4 in issue 7)
    "notebook": ("s/iter vs baseline at most x1.02", lambda run: run["s_per_iter_ratio_vs_baseline"] <= 1.02),
    "fast": ("images/s vs baseline at least x2, loss curve within the noise (the distance between the baseline's "
             "seeds 0 and 1 where measured; before that, the baseline's point-to-point change or fast mode's own "
             "run-to-run spread)",
             lambda run: run["images_per_second_ratio_vs_baseline"] >= 2.0
             and run["loss_curve_mean_relative_difference"] <= (
                 run["seed_noise"] if "seed_noise" in run
                 else max(run.get("baseline_curve_noise", 0), run.get("run_to_run_noise", 0)))),
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
        spread = run.get("run_to_run_noise")
        seeds = run.get("seed_noise")
        curve = f"{100 * run['loss_curve_mean_relative_difference']:.1f}%" + (f" ({100 * noise:.1f}%" if noise else "") \
            + (f"; run to run {100 * spread:.1f}%" if spread else "") \
            + (f"; baseline seed 0 vs 1: {100 * seeds:.1f}%" if seeds else "") + (")" if noise else "")
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


def ceiling_section(path: Path, data: dict) -> list:
    m = data["machine"]
    lines = [f"## GPU ceiling: {path.name}", "",
             f"{m['gpu']}, torch {m['torch']}, CUDA {m['cuda']}, detectron2 {m['detectron2']}, {m['date']}.", "",
             f"Command: `{data['command']}`", ""]
    if data.get("model"):
        lines += [f"Model: {data['model']}.", ""]
    inference = data.get("inference")
    if inference:
        ours = inference["pipelines"]
        best = max(v["images_s"] for v in inference["ceiling"].values())
        lines += [f"Inference, {ours['pictures']} pictures of {ours['size']} (resized to 800 px), model {ours['config']}:", "",
                  "| pipeline | images/s | vs DefaultPredictor | of the ceiling | same detections |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, v in inference["ceiling"].items():
            lines.append(f"| ceiling: forward pass, {name}, fp16, channels-last, inputs on the GPU | {v['images_s']:.1f} | "
                         f"x{v['images_s'] / ours['images_s']['default_predictor']:.2f} | {100 * v['images_s'] / best:.0f}% | - |")
        for name, v in ours["images_s"].items():
            same = ours["same_detections"].get(name)
            own = max((c for key, c in inference["ceiling"].items() if key.split("_")[0] == name.split("_")[0]),
                      key=lambda c: c["images_s"], default=None)  # the higher ceiling at the same batch size
            lines.append(f"| {'detectron2 DefaultPredictor' if name == 'default_predictor' else 'd2nb ' + name} | {v:.1f} | "
                         f"x{ours['vs_default_predictor'][name]:.2f} | {100 * v / best:.0f}%"
                         + (f" ({100 * v / own['images_s']:.0f}% of its batch's)" if own else "") + " | "
                         f"{'-' if same is None or name == 'default_predictor' else f'{100 * same:.1f}%'} |")
        noise = ours.get("default_predictor_tf32_vs_float32")
        if noise:
            lines.append(f"| detectron2 DefaultPredictor in strict float32 (TF32 off), against itself with TF32 | - | - | - | "
                         f"{100 * noise['same_detections']:.1f}% |")
        lines.append("")
    training = data.get("training")
    if training:
        c = training["ceiling"]
        lines += [f"Training, {c['config']}, {c['ims_per_batch']} images/batch of {c['size']}"
                  + (f" (from {data['training_from']})" if data.get("training_from") else "") + ":", "",
                  "| pipeline | images/s | vs DefaultTrainer | of the ceiling |", "| --- | ---: | ---: | ---: |"]
        baseline = training.get("pipelines", {}).get("baseline")
        ceilings = [(f"ceiling: the step with its batch on the GPU (AMP, bitmask targets, {label})", training[key])
                    for key, label in (("ceiling_detectron2_loops", "detectron2's per-picture loops"),
                                       ("ceiling_batched_heads", "d2nb's batched heads"),
                                       ("ceiling_batched_heads_fast_step", "d2nb's batched heads and fast step: fused SGD, "
                                                                           "no host wait")) if key in training] \
            or [("ceiling: the step with its batch on the GPU (AMP, bitmask targets)", c)]
        rows = [(label, r["images_s"]) for label, r in ceilings] + [
            ("detectron2 DefaultTrainer (fp32)" if name == "baseline" else f"d2nb {name}", v)
            for name, v in training.get("pipelines", {}).items()]
        for label, v in rows:
            lines.append(f"| {label} | {v:.1f} | " + (f"x{v / baseline:.2f}" if baseline else "-")
                         + f" | {100 * v / c['images_s']:.0f}% |")
        lines.append("")
    return lines


def export_section(path: Path, data: dict) -> list:
    m = data["machine"]
    lines = [f"## Export latency: {path.name}", "",
             f"CPU {m['cpu']}" + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f", torch {m['torch']}, {m['date']}; "
             f"{data['pictures']} pictures of {data['size']}, one at a time, pre- and post-processing included.", "",
             f"Command: `{data['command']}`", "", "| device | runtime | ms per picture | vs PyTorch | check |",
             "| --- | --- | ---: | ---: | --- |"]
    for where in ("cpu", "cuda"):
        rows = data.get(where, {})
        reference = next(iter(rows.values()), {}).get("ms_per_picture")
        for name, row in rows.items():
            ms = row["ms_per_picture"]
            ratio = f"x{reference / ms:.2f} faster" if ms and reference else "-"
            lines.append(f"| {where} | {name} | {'-' if ms is None else f'{ms:.1f}'} | {ratio} | {row.get('verdict') or 'reference'} |")
    return lines + [""]


def tiling_section(path: Path, data: dict) -> list:
    lines = [f"## Tiled inference: {path.name}", "",
             f"{data['device']}, torch {data['torch']}; {data['pictures']} pictures of {data['size']} px from the large "
             "synthetic split (shapes of 10-40 px), the CPU recipe's checkpoint.", "",
             f"Command: `python benchmarks/bench_tiling.py --run RUN --device {'cuda' if 'NVIDIA' in data['device'] else 'cpu'} "
             f"--images {data['pictures']}`", "",
             "| way | s per picture | pictures/s | vs whole | AP | AP small | recall at 0.5 | detections |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in data["rows"].items():
        lines.append(f"| {name} | {r['s_per_picture']} | {r['pictures_per_s']} | x{r['speed_vs_whole']} | {r['AP']} | "
                     f"{r['AP_small']} | {r['recall_at_0.5']} | {r['detections']} |")
    return lines + [""]


def validation_loss_section(path: Path, data: dict) -> list:
    lines = [f"## Validation-loss overhead: {path.name}", "",
             f"{data['device']['name']}, torch {data['device']['torch']}, {data['device']['date']}; {data['config']}, "
             f"{data['iters']} iterations, synthetic {data['size']}, val_loss_period None (ten points a run) against 0.", "",
             f"Command: `{data['command']}`", "", "| repeat | without (s) | with (s) | ratio | hook share of the run |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for n, r in enumerate(data["repeats"]):
        lines.append(f"| {n} | {r['without']['train_seconds']:.1f} | {r['with']['train_seconds']:.1f} | x{r['ratio']:.3f} | "
                     f"{100 * r['hook_share']:.1f}% |")
    return lines + ["", f"{data['target']}: {_met(data['met'])} (median ratio x{data['median_ratio']:.3f}, hook "
                        f"{100 * data['median_hook_share']:.1f}%).", ""]


def profile_inference_section(path: Path, data: dict) -> list:
    m = data.get("machine", {})
    stages = data["stages_ms_per_batch"]
    total = sum(stages.values())
    busy = data["pipeline"].get("gpu_busy") or {}
    lines = [f"## Inference profile: {path.name}", "", f"{m.get('gpu', '?')}, torch {m.get('torch', '?')}, {m.get('date', '?')}; "
             f"batch {data['batch']}, AMP {data['amp']}, TF32 {data['tf32']}, resized on the GPU {data.get('resize_on_gpu')}.", "",
             f"Command: `{data['command']}`", "", "Each stage alone, the GPU synchronised after it (median over the batches):", "",
             "| stage | ms per batch | ms per picture | share |", "| --- | ---: | ---: | ---: |"]
    for name, ms in stages.items():
        lines.append(f"| {name} | {ms:.1f} | {ms / data['batch']:.2f} | {100 * ms / total:.0f}% |")
    lines += ["", f"One stage at a time: {1000 * data['batch'] / total:.1f} images/s; `Predictor.predict` (two batches in "
                  f"flight): {data['pipeline']['images_s']:.1f} images/s"
              + (f", the GPU busy {100 * busy['share']:.0f}% of its time ({busy['kernel_ms']:.0f} ms of kernels in "
                 f"{busy['wall_ms']:.0f} ms)." if busy else "."), ""]
    return lines


def profile_train_section(path: Path, data: dict) -> list:
    d = data["device"]
    where = d["gpu"] if d["gpu"] != "cpu" else f"CPU ({d.get('threads', '?')} threads)"
    lines = [f"## Where a training step goes: {path.name}", "",
             f"{where}, torch {d['torch']}, {d['date']}. Command: `{data['command']}`"
             + (f" ({data['note']})" if data.get("note") else "") + ".", "",
             f"Plain steps: {data['s_iter_median']:.3f} s/iter (median), waiting {data['data_time_ms_median']:.1f} ms a "
             f"step for data with {data['workers']} loader workers"
             + (f" ({data['with_14_workers']['data_time_ms_median']:.1f} ms with 14)" if data.get("with_14_workers") else "")
             + (f"; GPU kernels {data['gpu_kernels_ms_per_step']:.0f} ms a step" if data.get("gpu_kernels_ms_per_step") else "")
             + (". The GPU synchronised around each part (slower steps, each part's own time):" if d["gpu"] != "cpu"
                else ". Each part of the step timed as it runs:"), "",
             "| part of the step | ms | share |", "| --- | ---: | ---: |"]
    total = data["stages_ms"]["step"]
    for name, ms in data["stages_ms"].items():
        lines.append(f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |")
    operators = data.get("top_operators_ms_per_step")
    if operators:
        step = 1e3 * data["s_iter_mean"]
        lines += ["", f"torch.profiler over the plain steps: {data['operators_per_step']:.0f} operators a step; their "
                      f"own time {data['operators_self_ms_per_step']:.0f} ms of a {step:.0f} ms step (the rest is Python, "
                      "detectron2's and the autograd engine's). The operators with the most own time:", "",
                  "| operator | ms per step | share of the step |", "| --- | ---: | ---: |"]
        for name, ms in operators.items():
            lines.append(f"| `{name}` | {ms:.1f} | {100 * ms / step:.0f}% |")
    return lines + [""]


def batched_heads_section(path: Path, data: dict) -> list:
    lines = [f"## Batched RPN and ROI-head loops: {path.name}", "",
             f"{data['device']}, torch {data['torch']}, {data['date']}. Command: `{data['command']}`", "",
             "| step | same result | detectron2 ms | d2nb ms | speed-up |", "| --- | --- | ---: | ---: | ---: |"]
    for name in ("proposals_training", "proposals_inference", "box_inference", "postprocess", "anchor_labels",
                 "roi_sampling"):
        if name not in data:  # files from before the step was batched
            continue
        r = data[name]
        same = f"{r['identical_pictures']}/{r['pictures']} pictures identical" if "pictures" in r else "-"
        lines.append(f"| {name.replace('_', ' ')} | {same} | {r['detectron2_ms']:.1f} | {r['d2nb_ms']:.1f} | x{r['speed_up']:.2f} |")
    return lines + [""]


CPU_DEFAULT = (180, 80)  # issue 21: bbox and mask AP at least 80 on the synthetic val split within 180 s


def _cpu_default_met(run: dict) -> bool:
    return run["seconds"] <= CPU_DEFAULT[0] and min(run["bbox/AP"], run["segm/AP"]) >= CPU_DEFAULT[1]


def cpu_default_section(path: Path, rows: list) -> list:
    first = rows[0]
    lines = [f"## The CPU default (03 with `-p gpus 0`): {path.name}", "",
             f"{first['processor']}, {first['cpus']} CPUs, torch {first['torch']}. Each row one run of "
             "`benchmarks/cpu_recipe.py` (the recipe's whole `train()`: synthetic data, training, precise BN, "
             "evaluation), one after another on an otherwise idle machine.", "",
             "| date | command | seconds | s/step | bbox AP | mask AP | target (AP 80 on both within 180 s) |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['date']} | `{r['command']}` | {r['seconds']:.1f} | {r['s_per_iter']} | {r['bbox/AP']:.2f} | "
                     f"{r['segm/AP']:.2f} | {_met(_cpu_default_met(r))} |")
    for note in sorted({r["note"] for r in rows if r.get("note")}):
        lines += ["", f"Note: {note}."]
    seconds = [r["seconds"] for r in rows]
    lines += ["", f"Spread of {len(rows)} runs: {min(seconds):.0f} to {max(seconds):.0f} s; bbox AP "
                  f"{min(r['bbox/AP'] for r in rows):.2f} to {max(r['bbox/AP'] for r in rows):.2f}, mask AP "
                  f"{min(r['segm/AP'] for r in rows):.2f} to {max(r['segm/AP'] for r in rows):.2f}.", ""]
    return lines


def issue21_summary(files: dict) -> list:
    """Issue 21's four targets, each against every file that measured it, newest first."""
    lines = ["## Issue 21 (performance v2): where each target stands", "",
             "Every row is one file below, from one call; `met` means every part of the target in that call.", "",
             "**Inference**: at least x5 DefaultPredictor's images/s, at least 70% of the forward-pass ceiling, "
             "at least 99% the same detections (64 pictures at 800 px). Each call's row is its fastest d2nb "
             "pipeline that meets all three, or its fastest pipeline when none does. The last column is "
             "DefaultPredictor against itself with TF32 turned off, where measured: how far numerics alone move "
             "this model's detections.", "",
             "| file | device, date | d2nb pipeline | images/s | vs DefaultPredictor | of the ceiling | same detections "
             "| target | DefaultPredictor TF32 vs float32 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    calls = sorted(((name, data) for name, data in files.items()
                    if name.startswith("ceiling") and "pipelines" in data.get("inference", {})),
                   key=lambda item: (item[1]["machine"]["date"], item[0]), reverse=True)
    for name, data in calls:
        inference = data["inference"]
        ours = inference["pipelines"]
        ceiling = max(v["images_s"] for v in inference["ceiling"].values())

        def meets(k):
            return (ours["vs_default_predictor"][k] >= 5 and ours["images_s"][k] / ceiling >= 0.7
                    and ours["same_detections"][k] >= 0.99)

        batched = [k for k in ours["images_s"] if k.startswith("batch")]
        pipeline = max([k for k in batched if meets(k)] or batched, key=lambda k: ours["images_s"][k])
        speed, same = ours["vs_default_predictor"][pipeline], ours["same_detections"][pipeline]
        share = ours["images_s"][pipeline] / ceiling
        floor = ours.get("default_predictor_tf32_vs_float32", {}).get("same_detections")
        lines.append(f"| {name} | {data['machine']['gpu']}, {data['machine']['date']} | {pipeline} | "
                     f"{ours['images_s'][pipeline]:.1f} | x{speed:.2f} | {100 * share:.0f}% | {100 * same:.1f}% | "
                     f"{_met(meets(pipeline))} | {'-' if floor is None else f'{100 * floor:.1f}%'} |")
    lines += ["", f"**Training, fast mode**: {TARGETS['fast'][0]}:", "",
              "| file | device, date | images/s vs DefaultTrainer | loss curve vs baseline | target |",
              "| --- | --- | ---: | ---: | --- |"]
    for name, data in sorted(((n, d) for n, d in files.items() if n.startswith("train") and "fast" in d.get("runs", {})),
                             key=lambda item: item[1]["device"]["date"], reverse=True):
        run = data["runs"]["fast"]
        if "images_per_second_ratio_vs_baseline" not in run:
            continue
        lines.append(f"| {name} | {data['device']['gpu']}, {data['device']['date']} | "
                     f"x{run['images_per_second_ratio_vs_baseline']:.2f} | "
                     f"{100 * run['loss_curve_mean_relative_difference']:.1f}% | {_met(TARGETS['fast'][1](run))} |")
    lines += ["", "Training beside its ceiling (the step with its batch already on the GPU, d2nb's batched heads and "
                  "fast step) in the same call:", "",
              "| file | device, date | ceiling images/s | d2nb fast images/s | DefaultTrainer images/s | fast vs DefaultTrainer "
              "| fast of the ceiling |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, data in sorted(((n, d) for n, d in files.items() if n.startswith("ceiling") and "training" in d),
                             key=lambda item: item[1]["machine"]["date"], reverse=True):
        training = data["training"]
        ceiling, runs = training["ceiling"]["images_s"], training.get("pipelines", {})
        if "fast" in runs and "baseline" in runs:
            lines.append(f"| {name} | {data['machine']['gpu']}, {data['machine']['date']} | {ceiling:.1f} | "
                         f"{runs['fast']:.1f} | {runs['baseline']:.1f} | x{runs['fast'] / runs['baseline']:.2f} | "
                         f"{100 * runs['fast'] / ceiling:.0f}% |")
    lines += ["", "**The CPU default**: bbox and mask AP at least 80 on the synthetic val split within 180 s on 2 cores:", "",
              "| file | date | seconds | bbox AP | mask AP | target |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for name, rows in files.items():
        if name.startswith("cpu_default"):
            for r in rows:
                lines.append(f"| {name} | {r['date']} | {r['seconds']:.1f} | {r['bbox/AP']:.2f} | {r['segm/AP']:.2f} | "
                             f"{_met(_cpu_default_met(r))} |")
    lines += ["", "Where the time goes for the targets not met, and what was tried: the profile sections below "
                  "(`profile_inference_*`, `profile_train_*`, `batched_heads_*`) and the dated sections of the "
                  "reading at the end of this file.", ""]
    return lines


SECTIONS = (("train", train_section), ("inference", inference_section), ("cocoeval", cocoeval_section),
            ("install", install_section), ("ceiling", ceiling_section), ("export", export_section),
            ("tiling", tiling_section), ("validation_loss", validation_loss_section),
            ("profile_inference", profile_inference_section), ("profile_train", profile_train_section),
            ("batched_heads", batched_heads_section), ("cpu_default", cpu_default_section))  # file name prefix -> section


def main() -> None:
    lines = ["# Benchmark results", "",
             "Regenerate with `python benchmarks/report.py` after running the benchmarks that write",
             "`benchmarks/results/*.json` (each section names its command).", ""]
    files = {}
    for path in sorted((HERE / "results").glob("*.json*")):  # .jsonl: one run a line
        text = path.read_text()
        data = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else json.loads(text)
        section = next((write for prefix, write in SECTIONS if path.name.startswith(prefix)), None)
        if section:
            files[path.name] = data
            lines += section(path, data)
    lines[5:5] = issue21_summary(files)
    notes = HERE / "results" / "NOTES.md"  # the hand-written reading of the numbers
    text = "\n".join(lines) + "\n" + (notes.read_text() if notes.exists() else "")
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()

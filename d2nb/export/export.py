"""Exporting a model to TorchScript or ONNX, and checking the exported file against PyTorch.

    result = export_model("runs/train", format="onnx", output_dir="runs/export")
    result.ok        # False when the export drops masks or its detections differ from PyTorch's
    result.table     # matches, score differences, mask IoU, latency of each runtime here
    print(result.report())

``export_model`` is what ``notebooks/05_export.ipynb`` and ``d2nb export`` call. It writes
into ``output_dir``:

- ``model.ts`` (TorchScript) or ``model.onnx`` (ONNX), from detectron2's ``TracingAdapter``
  (``export_method="tracing"``) or ``scripting_with_instances`` (``"scripting"``, TorchScript
  only), taking a resized ``3 x H x W`` float32 picture and giving the boxes, scores, classes
  and 28 x 28 mask probabilities in the resized picture's coordinates;
- ``model.json``: what a caller must do around it (colour order, resize sizes, output names,
  class names);
- ``run_onnx.py`` beside an ONNX model: ``d2nb/export/runtime.py``, which runs it with numpy,
  onnxruntime and opencv alone.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2nb import zoo
from d2nb.errors import D2nbError
from d2nb.export import runtime
from d2nb.export.check import REFERENCE, Tolerance, check_runners, detections_from_instances

FORMATS = ("torchscript", "onnx")
EXPORT_METHODS = ("tracing", "scripting")
# detectron2's STABLE_ONNX_OPSET_VERSION is 11, whose RoiAlign has no half-pixel ("aligned")
# mode: torchvision then exports ROIAlign(aligned=True) as aligned=False and every box and mask
# moves. Opset 16 added it (coordinate_transformation_mode), and onnxruntime runs it.
ONNX_OPSET = 16
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
SETTINGS_FILE = "model.json"
RUNNER_FILE = "run_onnx.py"
MAX_SAMPLE_PICTURES = 50  # of a validation split: enough to see differences, quick on a CPU
DEFAULT_OUTPUT_DIR = "runs/export"


@dataclass(repr=False)
class ExportResult:
    """What ``export_model`` wrote and how the export compares with the PyTorch model.

    ``ok`` is True only when every runtime of the export matched PyTorch within ``Tolerance``;
    ``problems`` says, in words, what differs; ``table`` has a row per runtime and
    ``comparisons`` the numbers behind it (``matched_share``, ``max_score_diff``,
    ``min_mask_iou``, ``latency_ms``); ``files`` maps ``model``, ``settings`` and (ONNX)
    ``runner`` to their paths.
    """

    ok: bool
    format: str
    export_method: str
    output_dir: str
    files: dict
    table: object
    problems: list = field(default_factory=list)
    sample_images: list = field(default_factory=list)  # the pictures checked on (files, or names)
    comparisons: list = field(default_factory=list)  # a check.Comparison per runtime, in numbers
    sample_source: str = ""  # what the pictures are, in words

    def raise_for_problems(self) -> None:
        """Raise ``D2nbError`` listing the problems, when the export does not match PyTorch."""
        if not self.ok:
            raise D2nbError(f"the {self.format} export in {self.output_dir} does not match the PyTorch model:\n"
                            + "\n".join(f"- {problem}" for problem in self.problems),
                            "see the table above; do not deploy this file until it matches")

    def report(self) -> str:
        head = (f"{self.format} ({self.export_method}) export in {self.output_dir}: "
                + ("matches PyTorch" if self.ok else "does NOT match PyTorch")
                + (f", on {len(self.sample_images)} {self.sample_source}" if self.sample_source else ""))
        parts = [head, str(self.table)]
        if self.problems:
            parts.append("Problems:\n" + "\n".join(f"- {problem}" for problem in self.problems))
        parts.append("Files:\n" + "\n".join(f"  {name}: {path}" for name, path in self.files.items()))
        return "\n\n".join(parts)

    __repr__ = report

    def _repr_html_(self) -> str:
        import html

        problems = "".join(f"<li>{html.escape(p)}</li>" for p in self.problems)
        verdict = "matches PyTorch" if self.ok else "<b>does NOT match PyTorch</b>"
        files = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in self.files.items())
        checked = f", on {len(self.sample_images)} {self.sample_source}" if self.sample_source else ""
        return (f"<p>{html.escape(self.format)} ({html.escape(self.export_method)}) export: {verdict}"
                f"{html.escape(checked)}</p>"
                + self.table._repr_html_() + (f"<p>Problems:</p><ul>{problems}</ul>" if problems else "")
                + f"<ul>{files}</ul>")


def export_model(config=None, weights=None, format: str = "torchscript", export_method: str = "tracing",
                 sample_images=None, output_dir=DEFAULT_OUTPUT_DIR, opts=(), score_floor: float | None = None,
                 tolerance: Tolerance = Tolerance()) -> ExportResult:
    """Export a model and check the export against PyTorch on sample pictures.

    ``config``/``weights``: what ``d2nb.predict.Predictor`` takes (a training output_dir such
    as 03_train's, a run's config.yaml, a model-zoo name, a yaml path; ``weights="none"`` for
    random weights). ``format``: ``"torchscript"`` or ``"onnx"``; ``export_method``:
    ``"tracing"`` or ``"scripting"`` (TorchScript only). ``sample_images``: pictures as
    ``d2nb.images.load_images`` takes them; ``None``: the first 50 pictures of the config's
    test dataset (``DATASETS.TEST``), else d2nb's bundled samples. The first picture is the one
    traced. ``opts``: ``KEY VALUE`` config options. ``score_floor``: the lowest score the
    exported model keeps (default: the predictor's, 0.05).

    The model is exported and checked on the CPU; ONNX is also checked on onnxruntime's CUDA
    provider when it has one. Raises ``D2nbError`` for a format, method or model it cannot export.
    """
    from d2nb.predict import Predictor

    format, export_method = _check_choice(format, export_method)
    if format == "onnx":
        _check_onnx_installed()
    if config in (None, "") and not zoo.find_training_runs(zoo.RUNS_DIR):
        raise D2nbError(f"config is None, which means the newest training run under {zoo.RUNS_DIR!r}, but there is none",
                        "run 03_train first, or pass config= a run's output folder, a model-zoo name or a yaml path")
    kwargs = {} if score_floor is None else {"score_floor": score_floor}
    predictor = Predictor(config, weights, device="cpu", opts=opts, **kwargs)
    _check_model(predictor.model, format)
    pictures, described = _sample_pictures(sample_images, predictor)
    settings = _settings(predictor)
    folder = Path(output_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / MODEL_FILES[format]
    sample = runtime.preprocess(np.ascontiguousarray(pictures[0][1][:, :, ::-1]), settings)
    settings["outputs"] = _write_model(predictor, sample, model_file, format, export_method)
    settings_file = folder / SETTINGS_FILE
    settings_file.write_text(json.dumps(settings, indent=1))
    files = {"model": str(model_file), "settings": str(settings_file)}
    runners = {REFERENCE: pytorch_runner(predictor)}
    if format == "onnx":
        files["runner"] = str(folder / RUNNER_FILE)
        shutil.copyfile(runtime.__file__, files["runner"])
        runners.update(onnx_runners(model_file))
    else:
        runners[f"TorchScript ({export_method})"] = torchscript_runner(model_file, export_method, settings)
    table, comparisons = check_runners(runners, [image for _, image in pictures], tolerance,
                                       noisy_reference=noisy_pytorch_runner(predictor))
    problems = [problem for comparison in comparisons for problem in comparison.problems]
    return ExportResult(not problems, format, export_method, str(folder), files, table, problems,
                        [source for source, _ in pictures], comparisons, described)


# --------------------------------------------------------------------------- choices


def _check_choice(format, export_method) -> tuple:
    format, export_method = str(format).lower(), str(export_method).lower()
    if format == "caffe2" or export_method == "caffe2_tracing":
        raise D2nbError("caffe2 export is not available: caffe2 left PyTorch in version 2.0",
                        "pass format='onnx' (export_method='tracing') or format='torchscript'")
    if format not in FORMATS:
        raise D2nbError(f"format={format!r} is not an export format", f"pass one of {', '.join(map(repr, FORMATS))}")
    if export_method not in EXPORT_METHODS:
        raise D2nbError(f"export_method={export_method!r} is not an export method",
                        f"pass one of {', '.join(map(repr, EXPORT_METHODS))}")
    if format == "onnx" and export_method == "scripting":
        raise D2nbError("ONNX export traces the model: export_method='scripting' makes TorchScript only",
                        "pass export_method='tracing' for ONNX, or format='torchscript' to script")
    return format, export_method


def _check_onnx_installed() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise D2nbError(f"ONNX export needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                        "not installed (torch writes the file with onnx; onnxruntime runs it for the check)",
                        "pip install onnx onnxruntime (onnxruntime-gpu for CUDA), or pip install 'd2nb[export]'")


def _check_model(model, format: str) -> None:
    from detectron2.modeling import GeneralizedRCNN

    if not isinstance(model, GeneralizedRCNN):
        raise D2nbError(f"d2nb exports R-CNN models (Faster, Mask, Keypoint and Cascade R-CNN); this config builds "
                        f"a {type(model).__name__}",
                        "export it with detectron2's tools/deploy/export_model.py, or pick an R-CNN config")
    if type(model.proposal_generator).__name__ != "RPN":
        raise D2nbError(f"the model's proposals come from {type(model.proposal_generator).__name__}, not an RPN",
                        "export a config with MODEL.PROPOSAL_GENERATOR.NAME RPN")
    if format == "onnx" and getattr(model.roi_heads, "keypoint_on", False):
        raise D2nbError("keypoint models do not export to ONNX: detectron2 turns keypoint heatmaps into points "
                        "with a bicubic resize per instance (heatmaps_to_keypoints in "
                        "detectron2/structures/keypoints.py), which torch's ONNX exporter rejects "
                        "('ONNX export of operator aten::index ... tensor of unknown rank')",
                        "export keypoint models with format='torchscript' (tracing or scripting), "
                        "which keeps the keypoints")


def _sample_pictures(sample_images, predictor) -> tuple:
    """``([(file or URL, RGB array)], what they are)``: the pictures given, else the config's
    test split, else d2nb's bundled samples."""
    from d2nb.images import load_images

    described = "pictures given as sample_images"
    if sample_images in (None, "", []):
        name, files = _test_split_files(predictor)
        described = (f"pictures of {name}, the config's test split" if files else
                     f"d2nb's bundled samples ({name or 'the config names no test split'}: no pictures here)")
        sample_images = files or "samples"
    loaded = load_images(sample_images)
    pictures = [(image.source, image.image) for image in loaded if image.ok]
    if not pictures:
        reasons = "; ".join(image.error for image in loaded if image.error)[:500]
        raise D2nbError(f"none of the sample pictures {sample_images!r} could be loaded ({reasons or 'no files'})",
                        "pass sample_images= pictures the model can be checked on, e.g. 'photos/*.jpg' or 'samples'")
    return pictures, described


def _test_split_files(predictor) -> list:
    """``(name, files)``: the config's first test dataset and up to ``MAX_SAMPLE_PICTURES`` of
    its files that are on this machine (the synthetic val split is generated if needed)."""
    from detectron2.data import DatasetCatalog

    from d2nb.data import SYNTHETIC_VAL, register_synthetic

    name = _test_dataset(predictor.choice.config)
    if name == SYNTHETIC_VAL and name not in DatasetCatalog.list():
        register_synthetic()
    if not name or name not in DatasetCatalog.list():
        return name, []
    try:
        files = [record["file_name"] for record in DatasetCatalog.get(name)[:MAX_SAMPLE_PICTURES]]
    except (OSError, AssertionError, KeyError, ValueError):  # a builtin dataset whose files are not here
        return name, []
    return name, [f for f in files if Path(f).is_file()]


def _test_dataset(config_file: str):
    if config_file.endswith(".py"):
        from detectron2.config import LazyConfig

        names = LazyConfig.load(config_file).dataloader.test.dataset.names
        return names if isinstance(names, str) else names[0]
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.set_new_allowed(True)
    cfg.merge_from_file(config_file)
    return cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None


def _settings(predictor) -> dict:
    """``model.json``: what the exported model's caller does before and after it."""
    import detectron2
    import torch

    from d2nb import __version__

    resize = predictor.resize
    return {"input": "image: float32, 3 x H x W, 0-255, colour order input_format, resized as min_size/max_size say",
            "input_format": predictor.input_format, "min_size": int(resize.short_edge_length[0]),
            "max_size": int(resize.max_size), "mask_threshold": 0.5, "score_floor": predictor.score_floor,
            "class_names": list(predictor.labels.class_names), "model": predictor.choice.label,
            "weights": predictor.choice.weights or "none (random initialisation)",
            "exported_with": f"d2nb {__version__}, detectron2 {detectron2.__version__}, torch {torch.__version__}"}


# --------------------------------------------------------------------------- exporting


def _write_model(predictor, sample: np.ndarray, model_file: Path, format: str, export_method: str) -> list:
    """Trace or script ``predictor.model`` into ``model_file``; return its output names.
    An exporter's failure becomes a ``D2nbError`` naming the model and what to try instead."""
    try:
        with warnings.catch_warnings():
            # TracerWarning for each shape check detectron2 makes (it traces them on purpose), and
            # the ONNX exporter's notes on how it spells indexing: nothing for a user to act on;
            # the check that follows is what says whether the graph is right
            warnings.simplefilter("ignore")
            logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # "is_fx_tracing will return true..."
            if export_method == "scripting":
                return _script(predictor.model, model_file)
            return _trace(predictor.model, sample, model_file, format)
    except Exception as error:  # the exporters raise RuntimeError, TorchScript's front end its own errors
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        instead = ("export_method='tracing'" if export_method == "scripting" else
                   "format='torchscript'" if format == "onnx" else "export_method='scripting'")
        raise D2nbError(f"{format} export by {export_method} of {predictor.choice.label} failed: "
                        f"{type(error).__name__}: {first_line[:400]}",
                        f"try {instead}; the exporter's own error is printed above this one") from error


def _trace(model, sample: np.ndarray, model_file: Path, format: str) -> list:
    """Trace ``model`` on ``sample`` (3 x H x W float32) into ``model_file``; return the
    output names, in order (detectron2's field names, then ``image_size``)."""
    import torch
    from detectron2.export import TracingAdapter

    image = torch.from_numpy(sample)

    def inference(model, inputs):  # do_postprocess=False: boxes of the resized picture, 28 x 28 masks
        return model.inference(inputs, do_postprocess=False)[0]

    adapter = TracingAdapter(model, [{"image": image}], inference).eval()
    with torch.no_grad():
        adapter(image)  # fills adapter.outputs_schema
    names = list(adapter.outputs_schema.keys) + ["image_size"]
    with torch.no_grad():
        if format == "onnx":
            dynamic = {"image": {1: "height", 2: "width"}, **{n: {0: "instances"} for n in names[:-1]}}
            torch.onnx.export(adapter, (image,), str(model_file), opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["image"], output_names=names, dynamic_axes=dynamic)
        else:
            torch.jit.save(torch.jit.trace(adapter, (image,), check_trace=False), str(model_file))
    return names


def _script(model, model_file: Path) -> list:
    """Script ``model`` into ``model_file``: it takes ``({"image": tensor},)`` and returns a
    list with one dict of detectron2's fields per picture. Returns the field names."""
    from typing import Dict, List, Tuple

    import torch
    from detectron2.export import scripting_with_instances

    from d2nb.export.scripting import INSTANCE_FIELDS, scriptable_copy

    class ScriptableAdapter(torch.nn.Module):  # dicts out, not Instances (pytorch/pytorch#46944)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inputs: Tuple[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
            return [i.get_fields() for i in self.model.inference(inputs, do_postprocess=False)]

    scripted = scripting_with_instances(ScriptableAdapter(scriptable_copy(model)).eval(), INSTANCE_FIELDS)
    torch.jit.save(scripted, str(model_file))
    names = ["pred_boxes", "scores", "pred_classes"]
    heads = model.roi_heads
    names += ["pred_masks"] if getattr(heads, "mask_on", False) else []
    names += ["pred_keypoints", "pred_keypoint_heatmaps"] if getattr(heads, "keypoint_on", False) else []
    return names


# --------------------------------------------------------------------------- runners


def pytorch_runner(predictor):
    """The reference: the PyTorch model as detectron2's DefaultPredictor runs it (its own
    resize, ``detector_postprocess``, masks pasted by detectron2)."""
    import torch

    def run(image_rgb: np.ndarray) -> dict:
        image = image_rgb[:, :, ::-1] if predictor.input_format == "BGR" else image_rgb
        height, width = image.shape[:2]
        if predictor.resize.short_edge_length[0]:
            image = predictor.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        with torch.inference_mode():
            instances = predictor.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]
        return detections_from_instances(instances)

    return run


def noisy_pytorch_runner(predictor, relative: float = 1e-6, seed: int = 0):
    """``pytorch_runner`` with each convolution's and linear layer's input multiplied by
    ``1 + relative * N(0, 1)``: how much the model's detections move under rounding alone."""
    import torch

    run = pytorch_runner(predictor)
    layers = [m for m in predictor.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    generator = torch.Generator().manual_seed(seed)

    def perturb(module, inputs):
        x = inputs[0]
        return (x * (1 + relative * torch.randn(x.shape, generator=generator, dtype=x.dtype)),) + tuple(inputs[1:])

    def noisy(image_rgb: np.ndarray) -> dict:
        hooks = [layer.register_forward_pre_hook(perturb) for layer in layers]
        try:
            return run(image_rgb)
        finally:
            for hook in hooks:
                hook.remove()

    return noisy


def torchscript_runner(model_file: Path, export_method: str, settings: dict):
    """``model.ts`` loaded back, with ``runtime.preprocess``/``postprocess`` around it."""
    import torch

    module = torch.jit.load(str(model_file))  # saved in eval mode (scripting made it a constant)
    names = settings["outputs"]

    def run(image_rgb: np.ndarray) -> dict:
        pixels = runtime.preprocess(np.ascontiguousarray(image_rgb[:, :, ::-1]), settings)
        with torch.no_grad():
            if export_method == "scripting":
                outputs = module(({"image": torch.from_numpy(pixels)},))[0]
            else:
                outputs = dict(zip(names, module(torch.from_numpy(pixels))))
        outputs = {name: value.numpy() for name, value in outputs.items()}
        return runtime.postprocess(outputs, pixels.shape[1:], image_rgb.shape[:2], settings["mask_threshold"])

    return run


def onnx_runners(model_file: Path) -> dict:
    """``runtime.OnnxModel`` on onnxruntime's CPU provider, and its CUDA provider when present."""
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.append("CUDAExecutionProvider")
    runners = {}
    for provider in providers:
        model = runtime.OnnxModel(model_file, providers=[provider])
        name = f"ONNX Runtime ({model.providers[0].replace('ExecutionProvider', '')})"  # what it runs on
        runners.setdefault(name, lambda image_rgb, model=model: model.predict(np.ascontiguousarray(image_rgb[:, :, ::-1])))
    return runners

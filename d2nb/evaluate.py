"""Evaluation: a checkpoint scored on a dataset with COCO's AP, as train_net.py --eval-only does.

    settings = EvaluationSettings(config="runs/train", dataset="synthetic", gpus=0)
    result = evaluate(settings)       # a progress bar, then the AP
    print(format_report(result))      # detectron2's AP tables, and what each nan means
    result.metrics["bbox"]["AP"]

``EvaluationSettings`` is the one source of truth for the evaluation parameters (the
``04_evaluate`` notebook's ``parameters`` cell, ``d2nb evaluate`` and the tests).

What lands in ``output_dir``: ``inference/coco_instances_results.json`` and
``inference/instances_predictions.pth`` (written by detectron2's ``COCOEvaluator``),
``metrics.json`` (the AP dicts COCOEvaluator returns, keyed ``bbox``, ``segm``,
``keypoints``, plus ``gt_json``: the COCO file the results were scored against),
``ap_tables.json`` (the tables as detectron2 logged them) and ``log.txt``. With ``tta=True``
the model is also scored with test-time augmentation (``d2nb.tta``): its results go to
``inference_tta/``, its AP to ``metrics_tta.json`` and ``ap_tables_tta.json``, and the report
puts its AP beside the plain AP. With ``tile`` (a tile size in pixels) the model is also scored on
the pictures at full resolution in overlapping tiles plus the whole picture, merged
(``d2nb.predict.tiled_model``): results in ``inference_tiled/``, AP in ``metrics_tiled.json``
and ``ap_tables_tiled.json``, beside the plain AP in the report.

Scoring uses pycocotools' official ``COCOeval`` (not detectron2's faster re-implementation),
so the numbers are exactly what pycocotools computes from the saved results.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from d2nb import zoo
from d2nb.data import SYNTHETIC, SyntheticSpec, resolve_dataset
from d2nb.data.register import class_names as coco_class_names, read_coco_json
from d2nb.errors import D2nbError
from d2nb.predict.tiling import DEFAULT_OVERLAP, check_tiling, tiling_on
from d2nb.train.monitor import in_notebook
from d2nb.parameters import flag

logger = logging.getLogger("d2nb.evaluate")

TABLES_FILE = "ap_tables.json"
METRICS_FILE = "metrics.json"
TTA_METRICS_FILE = "metrics_tta.json"
TTA_TABLES_FILE = "ap_tables_tta.json"
TILED_METRICS_FILE = "metrics_tiled.json"
TILED_TABLES_FILE = "ap_tables_tiled.json"
# COCO's object sizes (pycocotools' areaRng), in the words the notes use
SIZES = {"APs": "small (area under 32x32 pixels)", "APm": "medium (area 32x32 to 96x96 pixels)",
         "APl": "large (area over 96x96 pixels)"}
WHAT_IS_SCORED = {"bbox": "boxes", "segm": "masks", "keypoints": "keypoint annotations"}


@dataclass
class EvaluationSettings:
    """What to evaluate, on what, and where to write. ``None`` means the default described here.

    - ``config``: ``None`` = the newest training run under ``runs_root`` (03_train writes
      ``runs/train``); a run's output folder or its ``config.yaml``; a model-zoo name; a d2nb
      recipe; a yaml path.
    - ``weights``: ``None`` = the run's ``model_final.pth`` (else its last checkpoint), the
      model-zoo checkpoint for a model-zoo config, or the yaml's ``MODEL.WEIGHTS``; else a
      ``.pth``/``.pkl`` path, a URL or ``"zoo"``.
    - ``dataset``: ``"synthetic"`` (its val split), ``"synthetic_large"`` (2048 px pictures of
      10-40 px shapes, for ``tile``), a registered name (that dataset itself),
      a COCO json (with ``image_root``), or a Roboflow export folder (its valid split, else test).
    - ``output_dir``: a folder for the results; not a training run's own folder, whose
      metrics.json is the training log.
    - ``gpus``: ``None`` = a GPU if there is one, 0 = the CPU; evaluation uses one device.
    - ``opts``: ``["KEY", "VALUE", ...]`` config options, applied last (e.g. ``TEST.DETECTIONS_PER_IMAGE``).
    - ``tta``: also score with test-time augmentation (``TEST.AUG.*``; ``TEST.AUG.ENABLED True``
      in ``opts`` does the same, as in train_net.py).
    - ``tile``: ``None`` = off; a tile size in pixels (e.g. 512): also score the pictures at full
      resolution in overlapping tiles plus the whole picture, merged (01_inference's ``tile``);
      a ``D2nbError`` before the model loads when it is under 32 px or larger than a picture.
    - ``tile_overlap``: the fraction of a tile its neighbour covers again, in [0, 1).
    """

    config: str | None = None
    weights: str | None = None
    dataset: str = SYNTHETIC
    image_root: str | None = None
    output_dir: str = "runs/evaluate"
    gpus: int | None = None
    opts: list = field(default_factory=list)
    synthetic_size: int | list | None = None
    keep_placeholder: bool = False
    tta: bool = False
    tile: int | None = None
    tile_overlap: float = DEFAULT_OVERLAP
    runs_root: str = zoo.RUNS_DIR
    progress: bool = True

    @classmethod
    def from_values(cls, values: dict) -> "EvaluationSettings":
        """Settings from a mapping holding some of the field names (a notebook's ``globals()``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class EvaluationResult:
    """``metrics``: ``{"bbox": {"AP": ..., "AP-circle": ...}, "segm": {...}}`` (AP x 100,
    nan where it cannot be computed); ``tables``: ``{task: text}`` as detectron2 logged them;
    ``notes``: one plain sentence per nan."""

    output_dir: str
    dataset: str
    gt_json: str
    image_root: str | None
    class_names: list
    metrics: dict
    tables: dict
    notes: list
    training_run: str | None = None  # the run's output folder, when the model came from one
    tta_metrics: dict = field(default_factory=dict)  # the same keys as metrics, with test-time augmentation
    tta_tables: dict = field(default_factory=dict)
    tiled_metrics: dict = field(default_factory=dict)  # the same keys as metrics, from tiled inference
    tiled_tables: dict = field(default_factory=dict)
    tile: int | None = None  # the tiles tiled_metrics were scored with
    tile_overlap: float | None = None

    @property
    def results_json(self) -> str:
        return str(Path(self.output_dir, "inference", "coco_instances_results.json"))

    @property
    def tasks(self) -> list:
        return list(self.metrics)


def evaluate(settings: EvaluationSettings) -> EvaluationResult:
    """Run the model over the dataset (progress bar), score it with COCOEvaluator, save the
    files listed at the top of this module and return the result.

    Raises ``D2nbError`` for a missing checkpoint, an unknown dataset or config, an
    output_dir that cannot be written, a checkpoint whose classes do not fit the dataset, or a
    ``tile`` that does not fit its pictures.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
    from detectron2.modeling import build_model

    from d2nb.modeling import register as register_model_parts
    from d2nb.train.output import prepare_output_dir, setup_run_logging

    tiling = None  # (tile, overlap), checked against the dataset's pictures
    if tiling_on(settings.tile):
        check_tiling(settings.tile, settings.tile_overlap)  # before the dataset is registered, too
    cfg, name, choice = build_evaluation_config(settings)
    run_tta = flag("tta", settings.tta) or cfg.TEST.AUG.ENABLED
    if run_tta:
        from d2nb.tta import check_tta

        check_tta(cfg)  # before the plain evaluation, not after it
    if tiling_on(settings.tile):
        from d2nb.predict.tiled_model import check_tiles_fit

        tiling = check_tiles_fit(DatasetCatalog.get(name), settings.tile, settings.tile_overlap)
    _check_output_dir(settings.output_dir)
    prepare_output_dir(cfg.OUTPUT_DIR)
    setup_run_logging(cfg.OUTPUT_DIR, quiet_console=in_notebook())
    if in_notebook():
        _console_warnings_only()
    register_model_parts()  # a d2nb recipe names d2nb's backbone and ROI heads
    model = build_model(cfg)
    _load_weights(model, cfg.MODEL.WEIGHTS, MetadataCatalog.get(name).get("thing_classes"))
    loader = build_detection_test_loader(cfg, name)
    logger.info(f"Evaluating {cfg.MODEL.WEIGHTS} on {name} ({len(loader)} images, {cfg.MODEL.DEVICE})")
    metrics, tables = _score(model, loader, name, cfg, "", settings.progress)
    tta_metrics, tta_tables = {}, {}
    if run_tta:
        from d2nb.tta import describe_tta, with_tta

        logger.info(describe_tta(cfg))
        tta_metrics, tta_tables = _score(with_tta(cfg, model), loader, name, cfg, "tta", settings.progress)
    tiled_metrics, tiled_tables = {}, {}
    if tiling:
        from d2nb.predict.tiled_model import FullResolutionMapper, tiled_model

        tiled = tiled_model(cfg, model, choice, *tiling)
        logger.info(tiled.describe())
        full_size = build_detection_test_loader(cfg, name, mapper=FullResolutionMapper(tiled.tile))
        tiled_metrics, tiled_tables = _score(tiled, full_size, name, cfg, "tiled", settings.progress)
    metadata = MetadataCatalog.get(name)
    result = EvaluationResult(str(cfg.OUTPUT_DIR), name, str(metadata.json_file), metadata.get("image_root"),
                              list(metadata.get("thing_classes", []) or []), metrics, tables, [],
                              choice.output_dir and str(choice.output_dir), tta_metrics, tta_tables,
                              tiled_metrics, tiled_tables, *(tiling or (None, None)))
    result.notes = nan_notes(metrics, result.gt_json, name)
    _save(result, cfg)
    return result


def _score(model, loader, name: str, cfg, kind: str, progress: bool) -> tuple:
    """``(metrics, tables)``: ``model`` (the plain one, kind ``""``, or a wrapper: ``"tta"``,
    ``"tiled"``) run over ``loader`` and scored by COCOEvaluator, its results in
    ``OUTPUT_DIR/inference`` (``inference_<kind>``)."""
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from d2nb.train.output import prints_to_log

    folder = f"inference_{kind}" if kind else "inference"
    evaluator = COCOEvaluator(name, output_dir=str(Path(cfg.OUTPUT_DIR, folder)), use_fast_impl=False,
                              kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)
    with _TableCapture() as captured, prints_to_log(True):  # pycocotools' summary to log.txt: the tables say it
        metrics = inference_on_dataset(model, _progress(loader, progress, kind), evaluator)
    return json.loads(json.dumps(metrics, default=float)), captured.tables


def build_evaluation_config(settings: EvaluationSettings) -> tuple:
    """``(frozen cfg, name of the dataset to evaluate, zoo.ModelChoice)``: d2nb.train's
    config building with the model, weights and dataset resolved for evaluation."""
    from d2nb.train import TrainSettings, build_config, check_settings

    choice = choose_model(settings.config, settings.weights, settings.runs_root)
    name = evaluation_dataset(settings.dataset, settings.image_root, settings.synthetic_size,
                              keep_placeholder=flag("keep_placeholder", settings.keep_placeholder))
    weights = "none" if choice.weights == "" else choice.weights
    checked = check_settings(TrainSettings(
        gpus=settings.gpus, output_dir=str(settings.output_dir), dataset=settings.dataset, val_dataset=name,
        image_root=settings.image_root, config=choice.zoo_name or choice.config, weights=weights,
        opts=settings.opts, synthetic_size=settings.synthetic_size, monitor=False))
    cfg = build_config(replace(checked, gpus=min(checked.gpus, 1)))  # evaluation runs in one process
    dataset_classes = _thing_classes(name)
    if choice.class_names and dataset_classes and list(choice.class_names) != dataset_classes:
        logger.warning(f"The model was trained on classes {choice.class_names}, dataset {name} has "
                       f"{dataset_classes}: AP pairs them by position.")
    if not cfg.MODEL.WEIGHTS:
        raise D2nbError(f"no trained weights to evaluate: weights={settings.weights!r} and config "
                        f"{choice.config!r} has an empty MODEL.WEIGHTS",
                        "pass weights= a .pth path (e.g. a run's model_final.pth), a URL or 'zoo'")
    return cfg, name, choice


def _thing_classes(name) -> list:
    from detectron2.data import MetadataCatalog

    return list(MetadataCatalog.get(name).get("thing_classes", []) or [])


def choose_model(config=None, weights=None, runs_root=zoo.RUNS_DIR) -> zoo.ModelChoice:
    """``d2nb.zoo.resolve_model``, except that ``config=None`` must find a training run."""
    if config in (None, "") and not zoo.find_training_runs(runs_root):
        raise D2nbError(f"config is None, which means the newest training run under {str(runs_root)!r}, "
                        "but there is none",
                        "run 03_train first, or pass config= a run's output folder, a model-zoo name or a yaml path")
    choice = zoo.resolve_model(config, weights, runs_root)
    if choice.config.endswith(".py"):
        raise D2nbError(f"config {config!r} is a LazyConfig (.py); evaluation builds yaml configs",
                        "pass the yaml twin of that model from the model zoo")
    return choice


def evaluation_dataset(dataset=SYNTHETIC, image_root=None, synthetic_size=None, keep_placeholder=False) -> str:
    """The registered name of the split to evaluate: the synthetic val split, a Roboflow
    folder's valid (else test) split, or the dataset ``dataset`` names itself."""
    from d2nb.train import TrainSettings

    spec = TrainSettings(synthetic_size=synthetic_size).synthetic_spec() if synthetic_size else SyntheticSpec()
    choice = resolve_dataset(dataset, image_root=image_root, synthetic=spec, keep_placeholder=keep_placeholder)
    if dataset in (None, "", SYNTHETIC) or Path(str(dataset)).is_dir():
        if not choice.val:
            raise D2nbError(f"dataset folder {str(dataset)!r} has no valid/ or test/ split to evaluate on",
                            "pass the json of the split to evaluate, e.g. dataset='<folder>/train/_annotations.coco.json'")
        return choice.val
    return choice.train


def _check_output_dir(output_dir) -> None:
    folder = Path(str(output_dir))
    if zoo.is_training_run(folder) or (folder / "last_checkpoint").is_file():
        raise D2nbError(f"output_dir {str(folder)!r} is a training run's folder: its metrics.json is the "
                        "training log, which evaluation would overwrite",
                        f"pass another folder, e.g. output_dir={str(folder / 'evaluation')!r}")


def _load_weights(model, weights: str, class_names) -> None:
    """Load ``weights``; refuse a checkpoint whose class layers do not fit the dataset's classes."""
    from d2nb.checkpoint import AtomicCheckpointer

    class Checkpointer(AtomicCheckpointer):  # safe loading: .pth weights_only, .pkl checked
        def _load_model(self, checkpoint):  # keep what did not fit, which the base class only logs
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    checkpointer = Checkpointer(model)
    from d2nb.weights import local_weights

    checkpointer.load(local_weights(weights, training=False), checkpointables=[], source=weights)  # a URL: a message when offline
    incompatible = getattr(checkpointer, "incompatible", None)
    wrong = [(key, tuple(saved)) for key, saved, _ in getattr(incompatible, "incorrect_shapes", [])
             if "cls_score" in key or "predictor" in key]
    if wrong:
        key, shape = wrong[0]
        classes = f"{len(class_names)} classes ({', '.join(class_names[:6])}...)" if class_names else "other classes"
        raise D2nbError(f"weights {weights!r} were trained for other classes than the dataset's "
                        f"{classes}: {key} has shape {shape} in the checkpoint",
                        "evaluate on the dataset the model was trained on, or fine-tune it on this "
                        "dataset with 03_train first")


class _TableCapture(logging.Handler):
    """Collects the AP tables COCOEvaluator logs, exactly as it formats them."""

    PREFIXES = ("Evaluation results for ", "Per-category ")

    def __init__(self):
        super().__init__(logging.INFO)
        self.tables = {}
        self._logger = logging.getLogger("detectron2.evaluation.coco_evaluation")

    def __enter__(self):
        self._logger.addHandler(self)
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)  # the tables are INFO records
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def emit(self, record):
        message = record.getMessage()
        for prefix in self.PREFIXES:
            if message.startswith(prefix):
                task = message[len(prefix):].split(":")[0].split(" ")[0]
                self.tables[task] = (self.tables.get(task, "") + "\n" + message).strip("\n")


def _progress(loader, enabled: bool, kind: str = ""):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"evaluating ({kind})" if kind else "evaluating", unit="image", disable=not enabled)


def _console_warnings_only() -> None:
    """In a notebook the progress bar and ``format_report`` say what the log lines say (the
    tables included): keep only warnings on the console; log.txt still gets everything."""
    for name in ("detectron2", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.addFilter(lambda record: record.levelno >= logging.WARNING)


def nan_notes(metrics: dict, gt_json, dataset: str = "") -> list:
    """A plain sentence for each nan in ``metrics``: which class or object size has no
    ground truth in the dataset, or that the model predicted nothing."""
    coco = read_coco_json(gt_json)
    annotations = [a for a in coco.get("annotations", []) if not a.get("iscrowd", 0)]
    counts = {c["name"]: 0 for c in coco["categories"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for a in annotations:
        counts[names[a["category_id"]]] = counts.get(names[a["category_id"]], 0) + 1
    where = f"dataset {dataset}" if dataset else "this dataset"
    notes = []
    for task, values in metrics.items():
        if not isinstance(values, dict):
            continue
        if values and all(_is_nan(v) for k, v in values.items() if not k.startswith("AP-")):
            notes.append(f"{task}: every AP is nan: the model made no {task} predictions on {where} "
                         f"(or it has no ground truth): nothing could be scored.")
            continue
        for key, value in values.items():
            if not _is_nan(value):
                continue
            if key.startswith("AP-"):
                notes.append(f"{task} {key}: nan because {where} has no ground-truth "
                             f"{WHAT_IS_SCORED.get(task, 'objects')} of class '{key[3:]}': the class is "
                             "absent from this dataset (not an error, and not a zero).")
            elif key in SIZES:
                notes.append(f"{task} {key}: nan because no ground-truth object in {where} is {SIZES[key]}, "
                             "so AP at that size cannot be computed.")
            else:
                notes.append(f"{task} {key}: nan (not computable on {where}).")
    return notes


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def format_report(result: EvaluationResult) -> str:
    """The AP tables as detectron2 prints them, then a note for each nan."""
    parts = [f"{result.dataset}: scored against {result.gt_json}"]
    parts += [result.tables[task] for task in result.tables]
    if not result.tables:
        from d2nb.train import format_metrics

        parts.append(format_metrics(result.metrics))
    if result.tta_metrics:
        parts.append(format_tta_comparison(result))
    if result.tiled_metrics:
        parts.append(format_tiled_comparison(result))
    if result.notes:
        parts.append("Notes:\n" + "\n".join(f"- {note}" for note in result.notes))
    return "\n\n".join(parts)


def format_tta_comparison(result: EvaluationResult) -> str:
    """Plain and test-time augmented AP side by side, one row per task and metric."""
    return format_comparison(result.metrics, result.tta_metrics, "Test-time augmentation against the plain model:",
                             "TTA")


def format_tiled_comparison(result: EvaluationResult) -> str:
    """Plain and tiled AP side by side, one row per task and metric."""
    tiles = f" ({result.tile} px tiles, overlap {result.tile_overlap:g})" if result.tile else ""
    return format_comparison(result.metrics, result.tiled_metrics, f"Tiled inference{tiles} against the plain model:",
                             "tiled")


def format_comparison(plain_metrics: dict, other_metrics: dict, title: str, name: str) -> str:
    """``title``, then a table of the plain AP beside ``other_metrics`` (the column ``name``)."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = [title, f"| {'task':8} | {'metric':6} | {'plain':>6} | {name:>6} | {'change':>6} |",
             "|:---------|:-------|-------:|-------:|-------:|"]
    for task, plain in plain_metrics.items():
        other = other_metrics.get(task, {})
        for key in keys:
            if key in plain and key in other:
                a, b = plain[key], other[key]
                change = "" if _is_nan(a) or _is_nan(b) else f"{b - a:+.2f}"
                lines.append(f"| {task:8} | {key:6} | {a:6.2f} | {b:6.2f} | {change:>6} |")
    return "\n".join(lines)


def _save(result: EvaluationResult, cfg) -> None:
    saved = dict(result.metrics, gt_json=result.gt_json, image_root=result.image_root, dataset=result.dataset,
                 weights=cfg.MODEL.WEIGHTS, training_run=result.training_run)
    if result.tiled_metrics:
        saved.update(tile=result.tile, tile_overlap=result.tile_overlap)
    Path(result.output_dir, METRICS_FILE).write_text(json.dumps(saved, indent=1))
    Path(result.output_dir, TABLES_FILE).write_text(json.dumps(result.tables, indent=1))
    Path(result.output_dir, "config.yaml").write_text(cfg.dump())
    for metrics, tables, metrics_file, tables_file in (
            (result.tta_metrics, result.tta_tables, TTA_METRICS_FILE, TTA_TABLES_FILE),
            (result.tiled_metrics, result.tiled_tables, TILED_METRICS_FILE, TILED_TABLES_FILE)):
        if metrics:
            Path(result.output_dir, metrics_file).write_text(json.dumps(metrics, indent=1))
            Path(result.output_dir, tables_file).write_text(json.dumps(tables, indent=1))


def load_evaluation(output_dir) -> EvaluationResult:
    """An ``EvaluationResult`` read back from a folder ``evaluate`` wrote (for the viewer, or
    to analyse an evaluation in a fresh kernel)."""
    folder = Path(str(output_dir))
    metrics_file = folder / METRICS_FILE
    saved = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if "gt_json" not in saved:
        raise D2nbError(f"{str(folder)!r} holds no evaluation (no metrics.json with gt_json)",
                        "pass the output_dir of d2nb.evaluate.evaluate or `d2nb evaluate`")
    tables_file = folder / TABLES_FILE
    tables = json.loads(tables_file.read_text()) if tables_file.is_file() else {}
    metrics = {k: v for k, v in saved.items() if isinstance(v, dict)}
    names = coco_class_names(read_coco_json(saved["gt_json"]))
    second = [json.loads((folder / f).read_text()) if (folder / f).is_file() else {}
              for f in (TTA_METRICS_FILE, TTA_TABLES_FILE, TILED_METRICS_FILE, TILED_TABLES_FILE)]
    return EvaluationResult(str(folder), saved.get("dataset", ""), saved["gt_json"], saved.get("image_root"),
                            names, metrics, tables, nan_notes(metrics, saved["gt_json"], saved.get("dataset", "")),
                            saved.get("training_run"), *second, saved.get("tile"), saved.get("tile_overlap"))

"""Training: the settings a user chooses, the detectron2 config built from them, and the run.

``TrainSettings`` is the one source of truth for the training parameters: the notebook's
``parameters`` cell, the ``d2nb train`` command line and the tests all pass their values
through it, and ``None`` always means "the default described here".

    settings = TrainSettings(gpus=0, output_dir="runs/shapes")
    result = train(settings)          # live monitor in a notebook, logs in a terminal
    result.metrics["segm"]["AP"]

What a run leaves in ``output_dir`` is what ``tools/train_net.py`` leaves: config.yaml,
log.txt, metrics.json, events.out.tfevents.*, model_XXXXXXX.pth, model_final.pth,
last_checkpoint, inference/coco_instances_results.json, plus training_curves.png.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from d2nb import zoo
from d2nb.checkpoint import AtomicCheckpointer
from d2nb.data import SYNTHETIC, SyntheticSpec, check_dataset_files, resolve_dataset
from d2nb.devices import resolve_gpus
from d2nb.errors import D2nbError
from d2nb.faults import diverged, is_out_of_memory, out_of_memory
from d2nb.monitor import LiveMonitor, LiveView, TrainingCurves, follow_metrics_file, in_notebook
from d2nb.modeling import register as register_model_parts
from d2nb.parameters import check_settings
from d2nb.roi_align import use_separable_roi_align
from d2nb.weights import available_cores, local_weights

logger = logging.getLogger("d2nb.train")

FINE_TUNE_MAX_ITER = 1000  # model-zoo configs schedule 90k+ iterations for COCO; too many for fine-tuning
FINE_TUNE_IMS_PER_GPU = 2  # fits a Colab T4 with Mask R-CNN R-50 at 800 px
GPU_RECIPE_WORKERS = 4  # loader processes on a GPU for a recipe that loads in-process on the CPU


@dataclass
class TrainSettings:
    """Everything a training run needs. Defaults (``None``) are resolved by ``build_config``.

    - ``gpus``: GPUs per machine; ``None`` = every GPU there is (0 without CUDA); 0 = CPU.
    - ``output_dir``: where checkpoints, logs, metrics and evaluation results go.
    - ``dataset``: ``"synthetic"``, a registered name, a COCO json, or a Roboflow export folder
      (see ``d2nb.data.resolve_dataset``); ``val_dataset`` and ``image_root`` refine it.
    - ``config``: a model-zoo name, a d2nb recipe or a yaml path; ``None`` = the small recipe
      for the synthetic data, ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`` otherwise.
    - ``weights``: ``"none"``, ``"zoo"``, a path or a URL; ``None`` = the model-zoo
      checkpoint for model-zoo configs, the config's own ``MODEL.WEIGHTS`` otherwise.
    - ``max_iter``, ``ims_per_batch``: ``None`` = the recipe's values; for model-zoo configs
      1000 iterations and 2 images per GPU (a fine-tuning schedule, not COCO's 90k).
    - ``base_lr``: ``None`` = 0.02 x ims_per_batch / 16, the linear scaling rule (for the
      AdamW CPU recipe, its own reference lr scaled by the same rule; see ``default_base_lr``).
    - ``amp``: mixed precision; ``fast``: GPU speed-ups that keep the loss curve (AMP, TF32,
      more data-loading workers; see ``apply_fast_mode``).
    - ``opts``: ``["KEY", "VALUE", ...]`` as train_net.py takes them; applied last, so they win.
    - ``synthetic_size``: image size of the synthetic dataset (default 128 px).
    """

    gpus: int | None = None
    output_dir: str = "runs/train"
    dataset: str = "synthetic"
    val_dataset: str | None = None
    image_root: str | None = None
    config: str | None = None
    weights: str | None = None
    max_iter: int | None = None
    ims_per_batch: int | None = None
    base_lr: float | None = None
    resume: bool = False
    amp: bool = False
    fast: bool = False
    eval_period: int = 0
    checkpoint_period: int | None = None
    seed: int = 0
    num_workers: int | None = None
    cpu_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    opts: list = field(default_factory=list)
    monitor: bool = True
    synthetic_size: int | list | None = None
    keep_placeholder: bool = False
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)

    def synthetic_spec(self) -> SyntheticSpec:
        """The synthetic dataset to use: ``synthetic``, resized to ``synthetic_size`` (pixels,
        or ``[height, width]``) when given, e.g. ``[480, 640]`` for full-resolution GPU runs."""
        if not self.synthetic_size:
            return self.synthetic
        size = self.synthetic_size
        height, width = (size, size) if isinstance(size, int) else size
        return replace(self.synthetic, height=int(height), width=int(width))

    @classmethod
    def from_values(cls, values: dict) -> "TrainSettings":
        """Settings from a mapping holding some of the field names, e.g. a notebook's
        ``globals()`` after its parameters cell; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class TrainResult:
    output_dir: str
    iteration: int
    metrics: dict
    interrupted: bool = False
    monitor_overhead: float | None = None
    train_seconds: float | None = None  # wall-clock of the training loop, evaluation at the end included
    iterations_run: int | None = None

    @property
    def model_final(self) -> str:
        return os.path.join(self.output_dir, "model_final.pth")


def build_config(settings: TrainSettings):
    """Return the frozen detectron2 ``CfgNode`` for ``settings`` (registers the datasets)."""
    from detectron2.config import get_cfg

    settings = check_settings(settings)  # papermill's text values as numbers, or a clear error
    gpus = resolve_gpus(settings.gpus)
    config_name = settings.config or zoo.default_config(settings.dataset in (None, "", SYNTHETIC))
    config_path, zoo_name = zoo.resolve_config(config_name)
    cfg = get_cfg()
    cfg.set_new_allowed(True)  # configs written by newer code may carry extra keys
    cfg.merge_from_file(config_path)
    cfg.set_new_allowed(False)
    weights = zoo.resolve_weights(settings.weights, zoo_name)
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights

    data = resolve_dataset(settings.dataset, settings.val_dataset, settings.image_root,
                           settings.synthetic_spec(), keep_placeholder=settings.keep_placeholder)
    cfg.DATASETS.TRAIN = (data.train,)
    cfg.DATASETS.TEST = (data.val,) if data.val else ()
    if data.class_names:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(data.class_names)
        cfg.MODEL.RETINANET.NUM_CLASSES = len(data.class_names)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(data.class_names)
    if not data.has_masks:  # boxes only: train a box model rather than fail on empty masks
        cfg.MODEL.MASK_ON = False

    processes_for_norm = _processes(gpus, settings) * settings.num_machines
    _from_scratch_norm(cfg, processes_for_norm)
    recipe = zoo_name is None
    processes = _processes(gpus, settings)
    ims = settings.ims_per_batch or (
        cfg.SOLVER.IMS_PER_BATCH if recipe else FINE_TUNE_IMS_PER_GPU * processes * settings.num_machines)
    _check_positive_int("ims_per_batch", ims)
    world = processes * settings.num_machines
    if ims % world:
        raise D2nbError(f"ims_per_batch={ims} is not divisible by the {world} training processes"
                        + (f" (one per GPU, gpus={gpus})" if gpus and settings.num_machines == 1 else ""),
                        f"pass ims_per_batch={' or '.join(str(n) for n in _multiples_near(ims, world))} "
                        f"(a multiple of {world})")
    max_iter = settings.max_iter or (cfg.SOLVER.MAX_ITER if recipe else FINE_TUNE_MAX_ITER)
    _check_positive_int("max_iter", max_iter)
    _scale_schedule(cfg, max_iter)
    cfg.SOLVER.BASE_LR = float(settings.base_lr) if settings.base_lr else default_base_lr(cfg, ims)
    cfg.SOLVER.IMS_PER_BATCH = ims
    cfg.SOLVER.AMP.ENABLED = bool(settings.amp)
    if settings.fast and gpus:
        apply_fast_mode(cfg)
    cfg.SOLVER.CHECKPOINT_PERIOD = settings.checkpoint_period or max(1, max_iter // 3)
    cfg.TEST.EVAL_PERIOD = int(settings.eval_period or 0)
    if settings.num_workers is not None:
        cfg.DATALOADER.NUM_WORKERS = int(settings.num_workers)
    elif gpus and cfg.DATALOADER.NUM_WORKERS == 0:  # the CPU recipe loads in-process; a GPU step would wait
        cfg.DATALOADER.NUM_WORKERS = min(GPU_RECIPE_WORKERS, os.cpu_count() or 1)
    cfg.DATALOADER.NUM_WORKERS = min(cfg.DATALOADER.NUM_WORKERS, available_cores())  # no more than the machine has
    cfg.MODEL.DEVICE = "cuda" if gpus else "cpu"
    cfg.SEED = int(settings.seed)
    cfg.OUTPUT_DIR = str(settings.output_dir)
    try:
        cfg.merge_from_list(list(settings.opts or []))
    except (AssertionError, KeyError, ValueError) as error:
        raise D2nbError(f"opts {settings.opts!r} could not be applied: {error}",
                        "pass KEY VALUE pairs of existing config keys, e.g. "
                        "['SOLVER.BASE_LR', '0.001', 'INPUT.MIN_SIZE_TEST', '640']") from None
    cfg.freeze()
    return cfg


ZOO_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/detectron2/"  # detectron2's model_zoo.get_checkpoint_url prefix
FAST_MODE_WORKERS = 8  # the lent H100 has 16 cores; detectron2's configs ask for 4


def apply_fast_mode(cfg) -> None:
    """GPU speed-ups that leave the model and its loss curve as they are: mixed precision
    (``SOLVER.AMP``), TF32 matrix products, more data-loading workers, and mask targets read
    as bitmasks (``INPUT.MASK_FORMAT bitmask``).

    Measured on the lent H100 (benchmarks/RESULTS.md): a Mask R-CNN step there is bound by the
    main process's CPU, not the GPU (the GPU was busy 0.22 s of a 0.6 s step), and rasterising
    polygon targets per sampled box was its largest share; bitmasks are decoded in the loader
    workers and cropped on the GPU instead. cuDNN autotuning (also only around the backbone,
    whose input sizes repeat) and channels-last memory were slower there, so neither is used.
    """
    cfg.SOLVER.AMP.ENABLED = True
    cfg.DATALOADER.NUM_WORKERS = max(cfg.DATALOADER.NUM_WORKERS, min(FAST_MODE_WORKERS, os.cpu_count() or 1))
    if cfg.MODEL.MASK_ON:
        cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.set_new_allowed(True)
    cfg.D2NB_TF32 = True
    cfg.D2NB_FOREACH_CLIP = True
    cfg.set_new_allowed(False)


def clip_per_parameter_foreach(optimizer, max_norm: float, norm_type: float = 2.0):
    """Per-parameter gradient-norm clipping as detectron2's ``SOLVER.CLIP_GRADIENTS`` (type
    ``norm``) does it, every gradient scaled by ``min(1, max_norm / (|g| + 1e-6))``, in four
    batched operations instead of a ``clip_grad_norm_`` call per parameter (a few hundred
    small kernel launches a step, which a GPU step bound by the CPU feels)."""
    import torch

    base = type(optimizer)

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads, norm_type))
            scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, list(scales.unbind()))
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "WithGradientClip", (base,), {"step": step})
    return optimizer


def _enable_tf32(cfg) -> None:
    import torch

    if cfg.MODEL.DEVICE == "cuda" and cfg.get("D2NB_TF32", False):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _from_scratch_norm(cfg, processes: int) -> None:
    """Model-zoo backbones use FrozenBN: statistics frozen from ImageNet weights. Without
    weights those are identities, activations grow through every block and training diverges
    at once (losses in the hundreds, then "Predicted boxes or scores contain Inf/NaN"). When
    training from scratch, use batch statistics instead, as detectron2's scratch configs do."""
    if cfg.MODEL.WEIGHTS or cfg.MODEL.RESNETS.NORM != "FrozenBN":
        return
    cfg.MODEL.RESNETS.NORM = "SyncBN" if processes > 1 else "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    logger.warning("Training from scratch: MODEL.RESNETS.NORM FrozenBN -> %s and BACKBONE.FREEZE_AT -> 0 "
                   "(frozen statistics without pretrained weights diverge). Pass opts to override.",
                   cfg.MODEL.RESNETS.NORM)


def optimizer_name(cfg) -> str:
    return cfg.SOLVER.get("OPTIMIZER", "SGD")


def default_base_lr(cfg, ims_per_batch: int) -> float:
    """The linear scaling rule: 0.02 x ims_per_batch / 16 for SGD (detectron2's reference, the
    seed's ``IMS_PER_BATCH 2 BASE_LR 0.0025``). An AdamW recipe scales its own reference the
    same way: its BASE_LR x ims_per_batch / its IMS_PER_BATCH."""
    if optimizer_name(cfg) == "SGD":
        return 0.02 * ims_per_batch / 16
    return cfg.SOLVER.BASE_LR * ims_per_batch / cfg.SOLVER.IMS_PER_BATCH


def _processes(gpus: int, settings: TrainSettings) -> int:
    return gpus if gpus else max(1, int(settings.cpu_processes))


def _multiples_near(value: int, step: int) -> list:
    """The multiples of ``step`` just below and above ``value`` (no zero)."""
    below = value - value % step
    return [n for n in (below, below + step) if n > 0]


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise D2nbError(f"{name} must be a positive whole number, got {value!r}",
                        f"pass e.g. {name}=100 ('-p {name} 100' to papermill)")


def _scale_schedule(cfg, max_iter: int) -> None:
    """Keep the config's LR steps at the same fractions of training when max_iter changes."""
    old = cfg.SOLVER.MAX_ITER
    scaled = {s * max_iter // old for s in cfg.SOLVER.STEPS if s < old}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in scaled if 0 < s < max_iter))  # strictly increasing
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, max_iter // 10))
    cfg.SOLVER.MAX_ITER = max_iter


def train(settings: TrainSettings, extra_hooks=()) -> TrainResult:
    """Train as ``settings`` says; return the final iteration and evaluation metrics.

    One process for one GPU or the CPU; detectron2's ``launch`` (DDP over NCCL, or gloo on
    the CPU) for several, with the live view drawn here from rank 0's ``metrics.json``.
    Interrupting (Ctrl-C, the notebook's stop button) saves a checkpoint and returns with
    ``interrupted=True``; run again with ``resume=True`` to continue from it. A NaN loss, CUDA
    running out of memory or a full disk stop it with a ``D2nbError`` saying what to change;
    the checkpoints already written stay complete.
    """
    settings = check_settings(settings)
    gpus = resolve_gpus(settings.gpus)
    cfg = build_config(settings)  # checks everything and makes the dataset before any process starts
    resuming = settings.resume and (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file()
    if cfg.MODEL.WEIGHTS and "://" in cfg.MODEL.WEIGHTS and not resuming:  # offline: a message, before the model
        from_zoo = cfg.MODEL.WEIGHTS.startswith(ZOO_WEIGHTS_URL)
        local_weights(cfg.MODEL.WEIGHTS, (settings.config or zoo.default_config(False)) if from_zoo else None)
    check_dataset_files([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])  # said now, not mid-training
    _prepare_output_dir(cfg.OUTPUT_DIR)
    processes = _processes(gpus, settings)
    if processes * settings.num_machines == 1:
        return _train_in_process(cfg, settings, list(extra_hooks))
    if extra_hooks:
        raise D2nbError("extra_hooks only run in single-process training",
                        "add the hook in a Trainer subclass, or train on one GPU")
    return _launch_processes(cfg, settings, processes)


def evaluate_only(settings: TrainSettings) -> dict:
    """train_net.py's ``--eval-only``: evaluate ``weights`` (or, with ``resume``, the last
    checkpoint in output_dir) on the validation dataset; return the metrics."""
    settings = check_settings(settings)
    cfg = build_config(settings)
    if not cfg.DATASETS.TEST:
        raise D2nbError(f"no validation dataset to evaluate on for dataset {settings.dataset!r}",
                        "pass val_dataset= a registered name, a COCO json or a Roboflow folder")
    check_dataset_files(cfg.DATASETS.TEST)
    _prepare_output_dir(cfg.OUTPUT_DIR)
    setup_run_logging(cfg.OUTPUT_DIR, quiet_console=in_notebook())
    model = Trainer.build_model(cfg)
    AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=settings.resume)
    return _plain(Trainer.test(cfg, model))


def format_metrics(metrics: dict) -> str:
    """One line per task: ``bbox: AP 81.2  AP50 97.0  AP75 90.1`` (nan shown as n/a)."""
    lines = []
    for task, values in metrics.items():
        if isinstance(values, dict):
            shown = [f"{k} {v:.1f}" if v == v else f"{k} n/a" for k, v in values.items()
                     if k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
            lines.append(f"{task}: " + "  ".join(shown))
    return "\n".join(lines) or "no evaluation results (no validation dataset?)"


def describe(cfg) -> str:
    """A short summary of what a config will train, for the notebook to print."""
    from detectron2.data import MetadataCatalog

    train_name = cfg.DATASETS.TRAIN[0]
    classes = list(getattr(MetadataCatalog.get(train_name), "thing_classes", []) or [])
    rows = [
        ("model", f"{cfg.MODEL.META_ARCHITECTURE}, {cfg.MODEL.BACKBONE.NAME}, depth {cfg.MODEL.RESNETS.DEPTH}"
                  + (", masks" if cfg.MODEL.MASK_ON else ", boxes only")),
        ("weights", cfg.MODEL.WEIGHTS or "none (from scratch)"),
        ("train / val", f"{train_name} / {cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else 'none'}"),
        ("classes", f"{len(classes)}: {', '.join(classes[:12])}" + (" ..." if len(classes) > 12 else "")),
        ("device", cfg.MODEL.DEVICE + (" with AMP" if cfg.SOLVER.AMP.ENABLED else "")),
        ("schedule", f"{cfg.SOLVER.MAX_ITER} iterations x {cfg.SOLVER.IMS_PER_BATCH} images, "
                     f"lr {cfg.SOLVER.BASE_LR:g}, steps {tuple(cfg.SOLVER.STEPS)}"),
        ("input size", f"min {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, max {cfg.INPUT.MAX_SIZE_TRAIN}"),
        ("output_dir", cfg.OUTPUT_DIR),
    ]
    return "\n".join(f"{k:>12}: {v}" for k, v in rows)


def _prepare_output_dir(output_dir) -> None:
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise D2nbError(f"output_dir {str(path)!r} is a file, not a folder",
                        "pass a folder path for output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".d2nb-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise D2nbError(f"cannot write into output_dir {str(path)!r} ({error.strerror})",
                        "pass an output_dir in a folder you can write to") from None


def _train_in_process(cfg, settings: TrainSettings, extra_hooks: list, rank: int = 0) -> TrainResult:
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    setup_run_logging(cfg.OUTPUT_DIR, rank, quiet_console=in_notebook())
    if comm.is_main_process():
        Path(cfg.OUTPUT_DIR, "config.yaml").write_text(cfg.dump())
        _write_class_names(cfg)
        if not settings.resume:  # a notebook run again: its metrics, not the last run's followed by its own
            Path(cfg.OUTPUT_DIR, "metrics.json").unlink(missing_ok=True)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    _enable_tf32(cfg)
    monitor = None
    if settings.monitor and comm.is_main_process():
        monitor = LiveMonitor(os.path.join(cfg.OUTPUT_DIR, "training_curves.png"),
                              live=rank == 0 and in_notebook(), title=_run_title(cfg))
        extra_hooks = extra_hooks + [monitor]
    logger.info(f"Training {cfg.DATASETS.TRAIN[0]} on {cfg.MODEL.DEVICE} in {comm.get_world_size()} "
                f"process{'es' if comm.get_world_size() > 1 else ''}; writing to {cfg.OUTPUT_DIR}")
    trainer = Trainer(cfg, extra_hooks)
    trainer.resume_or_load(resume=settings.resume)
    interrupted = False
    started, first_iter = time.perf_counter(), trainer.start_iter
    try:
        trainer.train()
    except KeyboardInterrupt:
        interrupted = True
        _save_after_interrupt(trainer)
    except FloatingPointError as error:  # detectron2's word for a NaN or infinite loss
        last = trainer.checkpointer.get_checkpoint_file() if trainer.checkpointer.has_checkpoint() else None
        raise diverged(cfg, trainer.iter, error, last) from None
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        raise out_of_memory(cfg, trainer.iter, _save_after_out_of_memory(trainer)) from None
    metrics = getattr(trainer, "_last_eval_results", None) or {}
    result = TrainResult(cfg.OUTPUT_DIR, trainer.iter, _plain(metrics), interrupted,
                         monitor.overhead if monitor else None, time.perf_counter() - started,
                         trainer.iter - first_iter)
    if comm.is_main_process():
        Path(cfg.OUTPUT_DIR, "d2nb_result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def _write_class_names(cfg) -> None:
    """class_names.json beside config.yaml: inference in a fresh kernel, where the training
    dataset is not registered, still names the classes (``d2nb.zoo.run_class_names``)."""
    from detectron2.data import MetadataCatalog

    names = getattr(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]), "thing_classes", None)
    if names:
        Path(cfg.OUTPUT_DIR, zoo.CLASS_NAMES_FILE).write_text(json.dumps(list(names)))


def _save_completed_steps(trainer) -> str | None:
    """Save the steps completed before the one in progress (redone on resume); return the
    file's path, or ``None`` when no step completed or this is not the main process."""
    from detectron2.utils import comm

    completed = trainer.iter  # the step in progress is redone on resume
    scheduler = getattr(trainer, "scheduler", None)
    if scheduler is not None:
        # A Ctrl-C may land in the hooks that end a step, after the LR scheduler moved on: count
        # the steps by the scheduler, or the saved schedule runs one ahead of the saved iteration
        # and resume overruns it at the last step ("where in ParamScheduler must be in [0, 1]").
        completed = min(trainer.iter + 1, scheduler.last_epoch)
    if completed <= trainer.start_iter or not comm.is_main_process():
        return None
    trainer.iter = completed - 1
    trainer.checkpointer.save(f"model_{completed - 1:07d}", iteration=completed - 1)  # as PeriodicCheckpointer
    return os.path.join(trainer.cfg.OUTPUT_DIR, f"model_{completed - 1:07d}.pth")


def _save_after_out_of_memory(trainer) -> str | None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the failed step held; saving copies tensors to the CPU
    return _save_completed_steps(trainer)


def _save_after_interrupt(trainer) -> None:
    if _save_completed_steps(trainer) is None:
        logger.warning("Training interrupted before any step completed; nothing saved.")
        return
    completed = trainer.iter + 1
    logger.warning(
        f"Training interrupted at iteration {completed}. Saved model_{completed - 1:07d}.pth "
        f"and last_checkpoint in {trainer.cfg.OUTPUT_DIR}. Run again with resume=True to "
        f"continue from iteration {completed} on the same LR schedule.")


def _plain(metrics) -> dict:
    return json.loads(json.dumps(metrics, default=float))


def _run_title(cfg) -> str:
    return f"{Path(cfg.OUTPUT_DIR).name}: {cfg.DATASETS.TRAIN[0]}, {cfg.SOLVER.IMS_PER_BATCH} images/batch"


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with COCO evaluation, atomic checkpoints and extra hooks."""

    def __init__(self, cfg, extra_hooks=()):
        self._extra_hooks = list(extra_hooks)
        super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer makes its checkpointer just before calling this; swap it before the
        # PeriodicCheckpointer hook captures it.
        self.checkpointer = AtomicCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                               trainer=self.checkpointer.checkpointables["trainer"])
        return super().build_hooks() + self._extra_hooks

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model; on the CPU its ROIAlign backward runs as matrix products
        (``d2nb.roi_align``: same results, a fifth less time per CPU-recipe step)."""
        register_model_parts()
        model = super().build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu":
            use_separable_roi_align(model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD as detectron2 builds it, or AdamW where the config says ``SOLVER.OPTIMIZER: AdamW``
        (d2nb's from-scratch CPU recipe: it converges in far fewer steps than SGD). Fast mode
        clips per-parameter gradient norms in batched operations (same result)."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if cfg.get("D2NB_FOREACH_CLIP", False) and clip.ENABLED and clip.CLIP_TYPE == "norm":
            plain = cfg.clone()
            plain.defrost()
            plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
            return clip_per_parameter_foreach(cls._build_optimizer(plain, model), clip.CLIP_VALUE, clip.NORM_TYPE)
        return cls._build_optimizer(cfg, model)

    @classmethod
    def _build_optimizer(cls, cfg, model):
        if optimizer_name(cfg) != "AdamW":
            return super().build_optimizer(cfg, model)
        import torch
        from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

        params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                              weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        return maybe_add_gradient_clipping(
            cfg, torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                   fused=True))  # one fused kernel for all tensors: 4x less time on CPU

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))


# --------------------------------------------------------------------------- logging


class _NotebookConsoleFilter(logging.Filter):
    """In a notebook the live monitor replaces the per-20-iteration log lines: show only
    warnings, d2nb's own messages and the evaluation tables. log.txt still gets everything."""

    def filter(self, record):
        return (record.levelno >= logging.WARNING or record.name.startswith("d2nb")
                or record.name.startswith("detectron2.evaluation"))


def setup_run_logging(output_dir, rank: int = 0, quiet_console: bool = False) -> None:
    """Send detectron2's, fvcore's and d2nb's logs to ``output_dir/log.txt`` and the console.

    Unlike detectron2's ``setup_logger`` (cached per arguments), calling this again for a new
    run replaces the handlers, so a second run in the same kernel does not also write into the
    first run's log.txt or print every line twice.
    """
    from detectron2.utils.logger import _ColorfulFormatter

    file_format = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                    datefmt="%m/%d %H:%M:%S")
    log_file = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
    for name in ("detectron2", "fvcore", "d2nb"):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        log.setLevel(logging.DEBUG)
        log.propagate = False
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(file_format)
        log.addHandler(file_handler)
        if rank == 0:
            console = logging.StreamHandler(sys.stdout)
            console.setLevel(logging.INFO)
            console.setFormatter(_ColorfulFormatter(
                "[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S",
                root_name=name, abbrev_name="d2" if name == "detectron2" else name))
            if quiet_console:
                console.addFilter(_NotebookConsoleFilter())
            log.addHandler(console)


# --------------------------------------------------------------------------- several processes


def _launch_processes(cfg, settings: TrainSettings, processes: int) -> TrainResult:
    """Run detectron2's ``launch`` in a thread; meanwhile draw rank 0's metrics.json here."""
    from detectron2.engine import launch

    metrics_file = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    position = os.path.getsize(metrics_file) if settings.resume and os.path.exists(metrics_file) else 0
    if not settings.resume and os.path.exists(metrics_file):
        os.remove(metrics_file)  # a fresh run starts a fresh metrics file, as the live view reads it
    Path(cfg.OUTPUT_DIR, "d2nb_result.json").unlink(missing_ok=True)  # rank 0 writes a fresh one
    payload = json.dumps(_settings_payload(settings))
    failure = []

    def run():
        try:
            launch(_distributed_main, processes, num_machines=settings.num_machines,
                   machine_rank=settings.machine_rank, dist_url=settings.dist_url, args=(payload,))
        except BaseException as error:  # re-raised in the notebook's thread below
            failure.append(error)

    thread = threading.Thread(target=run, name="d2nb-launch", daemon=True)
    thread.start()
    curves = TrainingCurves(cfg.SOLVER.MAX_ITER, _run_title(cfg))
    view = LiveView(settings.monitor)
    while thread.is_alive():
        thread.join(timeout=1.0)
        position = follow_metrics_file(metrics_file, curves, view, position)
    if settings.monitor and curves.rows:
        Path(cfg.OUTPUT_DIR, "training_curves.png").write_bytes(curves.png())
    if failure:
        raise failure[0]
    result = json.loads(Path(cfg.OUTPUT_DIR, "d2nb_result.json").read_text())
    return TrainResult(**result)


def _settings_payload(settings: TrainSettings) -> dict:
    payload = asdict(settings)
    payload["gpus"] = resolve_gpus(settings.gpus)
    return payload


def _allow_cpu_ddp() -> None:
    """detectron2's create_ddp_model always passes ``device_ids=[local_rank]``, which DDP
    refuses for a CPU model; over gloo on the CPU the model must be wrapped without them."""
    import detectron2.engine.defaults as defaults
    from detectron2.engine.defaults import create_ddp_model

    defaults.create_ddp_model = lambda model, **kwargs: create_ddp_model(model, device_ids=None, **kwargs)


def _distributed_main(payload: str) -> None:
    """Entry point of each launched process (importable, so that spawn can find it)."""
    import torch
    from detectron2.utils import comm

    values = json.loads(payload)
    values["synthetic"] = SyntheticSpec(**values["synthetic"])
    settings = TrainSettings(**values)
    settings.monitor = False  # the notebook's process draws the live view from metrics.json
    if not settings.gpus:  # CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
        _allow_cpu_ddp()
    cfg = build_config(settings)
    _train_in_process(cfg, settings, [], rank=comm.get_rank())  # rank 0 writes d2nb_result.json

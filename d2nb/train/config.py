"""The detectron2 config built from checked settings: the model, its weights, the datasets,
the schedule and the data loading, with ``opts`` applied last.

    cfg = build_config(TrainSettings(gpus=0, output_dir="runs/shapes"))
    print(describe(cfg))

``build_config`` registers the datasets (and makes the synthetic one) and raises ``D2nbError``
for what cannot train: an unknown config or dataset, a batch that does not divide among the
processes, ``opts`` that name no config key.
"""

from __future__ import annotations

import logging
import os

from d2nb import zoo
from d2nb.data import SYNTHETIC, resolve_dataset
from d2nb.errors import D2nbError
from d2nb.train.fast import apply_fast_mode
from d2nb.train.settings import CheckedSettings, TrainSettings, check_settings, training_processes
from d2nb.weights import available_cores

logger = logging.getLogger("d2nb.train")

FINE_TUNE_MAX_ITER = 1000  # model-zoo configs schedule 90k+ iterations for COCO; too many for fine-tuning
FINE_TUNE_IMS_PER_GPU = 2  # fits a Colab T4 with Mask R-CNN R-50 at 800 px
GPU_RECIPE_WORKERS = 4  # loader processes on a GPU for a recipe that loads in-process on the CPU


def build_config(settings: TrainSettings | CheckedSettings):
    """Return the frozen detectron2 ``CfgNode`` for ``settings`` (registers the datasets).

    ``TrainSettings`` are checked here (``check_settings``); ``CheckedSettings``, as ``train``
    passes them, are taken as they are.
    """
    from detectron2.config import get_cfg

    settings = check_settings(settings)  # papermill's text values as numbers, or a clear error
    gpus = settings.gpus
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

    world = training_processes(settings) * settings.num_machines
    _from_scratch_norm(cfg, world)
    recipe = zoo_name is None
    ims = settings.ims_per_batch or (
        _config_count(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", "ims_per_batch", config_path) if recipe
        else FINE_TUNE_IMS_PER_GPU * world)
    if ims % world:
        raise D2nbError(f"ims_per_batch={ims} is not divisible by the {world} training processes"
                        + (f" (one per GPU, gpus={gpus})" if gpus and settings.num_machines == 1 else ""),
                        f"pass ims_per_batch={' or '.join(str(n) for n in _multiples_near(ims, world))} "
                        f"(a multiple of {world})")
    max_iter = settings.max_iter or (
        _config_count(cfg.SOLVER.MAX_ITER, "SOLVER.MAX_ITER", "max_iter", config_path) if recipe else FINE_TUNE_MAX_ITER)
    _scale_schedule(cfg, max_iter)
    cfg.SOLVER.BASE_LR = settings.base_lr or default_base_lr(cfg, ims)
    cfg.SOLVER.IMS_PER_BATCH = ims
    cfg.SOLVER.AMP.ENABLED = settings.amp
    if settings.fast and gpus:
        apply_fast_mode(cfg)
    cfg.SOLVER.CHECKPOINT_PERIOD = settings.checkpoint_period or max(1, max_iter // 3)
    cfg.TEST.EVAL_PERIOD = settings.eval_period
    if settings.num_workers is not None:
        cfg.DATALOADER.NUM_WORKERS = settings.num_workers
    elif gpus and cfg.DATALOADER.NUM_WORKERS == 0:  # the CPU recipe loads in-process; a GPU step would wait
        cfg.DATALOADER.NUM_WORKERS = min(GPU_RECIPE_WORKERS, os.cpu_count() or 1)
    cfg.DATALOADER.NUM_WORKERS = min(cfg.DATALOADER.NUM_WORKERS, available_cores())  # no more than the machine has
    cfg.MODEL.DEVICE = "cuda" if gpus else "cpu"
    cfg.SEED = settings.seed
    cfg.OUTPUT_DIR = str(settings.output_dir)
    try:
        cfg.merge_from_list(settings.opts)
    except (AssertionError, KeyError, ValueError) as error:
        raise D2nbError(f"opts {settings.opts!r} could not be applied: {error}",
                        "pass KEY VALUE pairs of existing config keys, e.g. "
                        "['SOLVER.BASE_LR', '0.001', 'INPUT.MIN_SIZE_TEST', '640']") from None
    cfg.freeze()
    return cfg


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
    """``SOLVER.OPTIMIZER`` of d2nb's recipes (``AdamW``), or detectron2's ``SGD``."""
    return cfg.SOLVER.get("OPTIMIZER", "SGD")


def default_base_lr(cfg, ims_per_batch: int) -> float:
    """The linear scaling rule: 0.02 x ims_per_batch / 16 for SGD (detectron2's reference, the
    seed's ``IMS_PER_BATCH 2 BASE_LR 0.0025``). An AdamW recipe scales its own reference the
    same way: its BASE_LR x ims_per_batch / its IMS_PER_BATCH."""
    if optimizer_name(cfg) == "SGD":
        return 0.02 * ims_per_batch / 16
    return cfg.SOLVER.BASE_LR * ims_per_batch / cfg.SOLVER.IMS_PER_BATCH


def _config_count(value, key: str, name: str, config_path) -> int:
    """``value``, the config's own ``key`` (a recipe's schedule): a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise D2nbError(f"{key} in {str(config_path)!r} must be a positive whole number, got {value!r}",
                        f"pass e.g. {name}=100 ('-p {name} 100' to papermill), or fix {key} in the config")
    return value


def _multiples_near(value: int, step: int) -> list:
    """The multiples of ``step`` just below and above ``value`` (no zero)."""
    below = value - value % step
    return [n for n in (below, below + step) if n > 0]


def _scale_schedule(cfg, max_iter: int) -> None:
    """Keep the config's LR steps at the same fractions of training when max_iter changes."""
    old = cfg.SOLVER.MAX_ITER
    scaled = {s * max_iter // old for s in cfg.SOLVER.STEPS if s < old}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in scaled if 0 < s < max_iter))  # strictly increasing
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, max_iter // 10))
    # a recipe's precise-BN pass (forward passes after the last step) stays a tenth of the run at most
    cfg.TEST.PRECISE_BN.NUM_ITER = min(cfg.TEST.PRECISE_BN.NUM_ITER, max(1, max_iter // 10))
    cfg.SOLVER.MAX_ITER = max_iter


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

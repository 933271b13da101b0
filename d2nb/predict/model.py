"""The model a ``Predictor`` runs, built from a yaml or LazyConfig (``.py``) config, and the
labels its outputs mean (class names and the dataset ids they are saved under).

Each builder returns ``(model in eval mode, resize transform, input colour order, training
dataset name, config)``; the resize is the config's ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``; the
config is the yaml ``CfgNode`` (``None`` for a LazyConfig), which test-time augmentation reads.
"""

from __future__ import annotations

import logging

from d2nb import zoo
from d2nb.errors import D2nbError
from d2nb.prediction import Labels
from d2nb.weights import local_weights

logger = logging.getLogger("d2nb.predict")


def build_yaml(choice, device: str, opts):
    """A yaml config's model with its weights (``choice.weights``, else the config's own)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from d2nb.modeling import register as register_model_parts
    from d2nb.checkpoint import AtomicCheckpointer

    register_model_parts()  # a d2nb recipe names d2nb's backbone and ROI heads
    cfg = get_cfg()
    cfg.set_new_allowed(True)  # config.yaml of a d2nb run carries d2nb's keys (SOLVER.OPTIMIZER)
    cfg.merge_from_file(choice.config)
    cfg.set_new_allowed(False)
    try:
        cfg.merge_from_list(list(opts or []))
    except (AssertionError, KeyError, ValueError) as error:
        raise D2nbError(f"opts {list(opts)!r} could not be applied: {error}",
                        "pass KEY VALUE pairs of existing config keys, e.g. MODEL.ROI_HEADS.NMS_THRESH_TEST 0.6") from None
    if choice.weights is None and not cfg.MODEL.WEIGHTS:
        raise D2nbError(f"config {choice.config!r} names no weights (its MODEL.WEIGHTS is empty)",
                        "pass weights= a .pth path or URL (or 'none' for random weights, for timing only)")
    cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS if choice.weights is None else choice.weights
    cfg.MODEL.DEVICE = device
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN":
        cfg.MODEL.RESNETS.NORM = "BN"  # random FrozenBN statistics overflow; only for weights='none'
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        AtomicCheckpointer(model).load(local_weights(cfg.MODEL.WEIGHTS, training=False), source=cfg.MODEL.WEIGHTS)
    return yaml_parts(cfg, model)


def yaml_parts(cfg, model):
    """What ``build_yaml`` returns, for ``model`` already built from the yaml ``cfg`` with its
    weights loaded (the one ``d2nb.evaluate`` scores, which its tiled scoring runs again)."""
    from detectron2.data import transforms as T

    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    return model.eval(), resize, cfg.INPUT.FORMAT, cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None, cfg


def build_lazy(choice, device: str, opts):
    """A LazyConfig's model; ``opts`` are its ``key=value`` overrides."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import transforms as T

    from d2nb.checkpoint import AtomicCheckpointer

    cfg = LazyConfig.load(choice.config)
    cfg = LazyConfig.apply_overrides(cfg, list(opts or []))
    model = instantiate(cfg.model).to(device).eval()
    if choice.weights:
        AtomicCheckpointer(model).load(local_weights(choice.weights, training=False), source=choice.weights)
    mapper = cfg.dataloader.test.mapper
    resize = next((a for a in instantiate(mapper.augmentations) if isinstance(a, T.ResizeShortestEdge)),
                  T.ResizeShortestEdge([800, 800], 1333))
    names = cfg.dataloader.train.dataset.names
    return model, resize, mapper.image_format, names if isinstance(names, str) else names[0], None


def model_num_classes(model) -> int | None:
    """The number of classes of the model's heads, or ``None`` when none says."""
    for module in model.modules():
        if hasattr(module, "num_classes") and isinstance(module.num_classes, int):
            return module.num_classes
    return None


def class_labels(dataset_name, class_names, num_classes) -> Labels:
    """``class_names`` (a training run's) or the dataset's, with the ids it saves them under;
    ``class N`` names, and a warning, when their number does not fit the model's."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name) if dataset_name else None
    names = class_names or zoo.dataset_class_names(dataset_name) or []
    if num_classes and len(names) != num_classes:
        logger.warning("%d class names for a model of %d classes (dataset %r); showing 'class N' instead. "
                       "Fix: write the names, as a json list, into %s beside the run's config.yaml",
                       len(names), num_classes, dataset_name, zoo.CLASS_NAMES_FILE)
        names = [f"class {i}" for i in range(num_classes)]
    to_id = getattr(meta, "thing_dataset_id_to_contiguous_id", None) if not class_names else None
    ids = {v: k for k, v in to_id.items()} if to_id else {}
    return Labels(list(names), [int(ids.get(i, i + 1)) for i in range(len(names))],
                  list(getattr(meta, "stuff_classes", None) or []) or None,
                  list(getattr(meta, "keypoint_names", None) or []) or None,
                  list(getattr(meta, "keypoint_connection_rules", None) or []) or None)

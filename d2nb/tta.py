"""Test-time augmentation: detectron2's ``GeneralizedRCNNWithTTA``, for evaluation and prediction.

    model = with_tta(cfg, model)       # each picture at several sizes, and flipped; merged

The pictures are run at every size of ``TEST.AUG.MIN_SIZES`` (longest side capped at
``TEST.AUG.MAX_SIZE``), flipped too when ``TEST.AUG.FLIP``, and the detections merged as
train_net.py's ``TEST.AUG.ENABLED`` does. detectron2's default sizes (400 to 1200) suit models
tested at 800 px; for a model tested at another size (the CPU recipe: 128 px) they are scaled
by the same factor, unless the config names its own sizes.
"""

from __future__ import annotations

from d2nb.errors import D2nbError

DETECTRON2_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)  # detectron2's TEST.AUG.MIN_SIZES
DETECTRON2_TEST_SIZE = 800
DETECTRON2_MAX_SIZE = 4000


def augmentation_config(cfg):
    """A copy of ``cfg`` whose ``TEST.AUG`` sizes fit the model's test size."""
    cfg = cfg.clone()
    cfg.defrost()
    test_size = int(cfg.INPUT.MIN_SIZE_TEST)
    if tuple(cfg.TEST.AUG.MIN_SIZES) == DETECTRON2_SIZES and test_size != DETECTRON2_TEST_SIZE:
        scale = test_size / DETECTRON2_TEST_SIZE
        cfg.TEST.AUG.MIN_SIZES = tuple(sorted({max(16, round(size * scale / 16) * 16) for size in DETECTRON2_SIZES}))
        if cfg.TEST.AUG.MAX_SIZE == DETECTRON2_MAX_SIZE:
            cfg.TEST.AUG.MAX_SIZE = max(int(cfg.INPUT.MAX_SIZE_TEST), round(DETECTRON2_MAX_SIZE * scale))
    cfg.freeze()
    return cfg


def check_tta(cfg) -> None:
    """A ``D2nbError`` for a model detectron2's TTA cannot run."""
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise D2nbError(f"test-time augmentation runs on R-CNN models; this config is a {cfg.MODEL.META_ARCHITECTURE}",
                        "pass tta=False, or a Faster/Mask R-CNN config")
    if cfg.MODEL.KEYPOINT_ON:
        raise D2nbError("detectron2's test-time augmentation does not support keypoint models",
                        "pass tta=False for a keypoint model")


def with_tta(cfg, model, batch_size: int = 4):
    """``model`` (a built GeneralizedRCNN, weights loaded) wrapped for test-time augmentation;
    called like the model on detectron2's list of input dicts."""
    from detectron2.modeling import GeneralizedRCNNWithTTA

    check_tta(cfg)
    return GeneralizedRCNNWithTTA(augmentation_config(cfg), model, batch_size=batch_size)


def describe_tta(cfg) -> str:
    cfg = augmentation_config(cfg)
    flip = ", and flipped" if cfg.TEST.AUG.FLIP else ""
    return f"test-time augmentation: sizes {list(cfg.TEST.AUG.MIN_SIZES)} (max {cfg.TEST.AUG.MAX_SIZE}){flip}"

"""Config building from TrainSettings: defaults, datasets, errors with their fixes."""

import json
from pathlib import Path

import nbformat
import pytest
from detectron2.data import MetadataCatalog

from d2nb.data import SyntheticSpec
from d2nb.devices import resolve_gpus
from d2nb.errors import D2nbError
from d2nb.train import TrainSettings, build_config
from conftest import NOTEBOOKS

TINY = SyntheticSpec(num_train=8, num_val=4)


def settings(**kw):
    kw.setdefault("gpus", 0)
    kw.setdefault("synthetic", TINY)
    return TrainSettings(**kw)


ZOO = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


def test_base_lr_follows_the_linear_scaling_rule():
    cfg = build_config(settings(config=ZOO, weights="none", ims_per_batch=2))
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.0025)  # the seed's SOLVER.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.0025
    assert build_config(settings(config=ZOO, weights="none", ims_per_batch=32)).SOLVER.BASE_LR == pytest.approx(0.04)
    assert build_config(settings(ims_per_batch=2, base_lr=0.1)).SOLVER.BASE_LR == 0.1
    # the AdamW CPU recipe scales its own reference (0.001 at 2 images) by the same rule
    assert build_config(settings(ims_per_batch=4)).SOLVER.BASE_LR == pytest.approx(0.002)


def test_zoo_config_from_scratch_uses_batch_statistics_bn():
    cfg = build_config(settings(config=ZOO, weights="none"))
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0


def test_max_iter_rescales_lr_steps_and_opts_win():
    cfg = build_config(settings(max_iter=100, opts=["SOLVER.WARMUP_ITERS", "3", "INPUT.MIN_SIZE_TEST", "96"]))
    assert cfg.SOLVER.MAX_ITER == 100
    assert all(s < 100 for s in cfg.SOLVER.STEPS) and len(cfg.SOLVER.STEPS) == 2
    assert cfg.SOLVER.WARMUP_ITERS == 3 and cfg.INPUT.MIN_SIZE_TEST == 96


def test_cpu_default_is_the_small_recipe_from_scratch():
    cfg = build_config(settings())
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 4 and cfg.MODEL.MASK_ON


def test_cpu_recipe_recomputes_bn_statistics_for_at_most_a_tenth_of_the_run():
    cfg = build_config(settings())
    assert cfg.TEST.PRECISE_BN.ENABLED and cfg.TEST.PRECISE_BN.NUM_ITER == 50
    assert build_config(settings(max_iter=120)).TEST.PRECISE_BN.NUM_ITER == 12
    assert build_config(settings(max_iter=5)).TEST.PRECISE_BN.NUM_ITER == 1
    assert build_config(settings(max_iter=5000)).TEST.PRECISE_BN.NUM_ITER == 50  # never more than the recipe's


def test_box_only_dataset_trains_a_box_model_with_its_class_names(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}]
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "area": 100,
             "iscrowd": 0, "segmentation": []}]
    cats = [{"id": 7, "name": "cell"}, {"id": 9, "name": "platelet"}]
    (tmp_path / "boxes.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    cfg = build_config(settings(dataset=str(tmp_path / "boxes.json"), config="mask_rcnn_R_18_FPN_cpu.yaml"))
    assert cfg.MODEL.MASK_ON is False
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
    assert MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes == ["cell", "platelet"]


@pytest.mark.parametrize("gpus, message", [("two", "whole number"), (-1, "whole number"), (5, "has 0 CUDA GPU")])
def test_bad_gpus_name_the_value_and_the_fix(gpus, message):
    with pytest.raises(D2nbError, match=message) as error:
        resolve_gpus(gpus)
    assert "Fix:" in str(error.value)


def test_gpus_default_is_every_gpu_there_is():
    import torch

    assert resolve_gpus(None) == torch.cuda.device_count()
    assert resolve_gpus("0") == 0


def test_unknown_config_suggests_close_names():
    with pytest.raises(D2nbError, match="mask_rcnn_R_50_FPN_3x.yaml"):
        build_config(settings(config="COCO-InstanceSegmentation/mask_rcnn_R50_FPN_3x.yaml"))


def test_batch_must_divide_among_processes():
    with pytest.raises(D2nbError, match="not divisible by the 2 training processes"):
        build_config(settings(ims_per_batch=3, cpu_processes=2))


def test_unknown_dataset_says_what_is_accepted():
    with pytest.raises(D2nbError, match="Roboflow"):
        build_config(settings(dataset="no_such_dataset"))


def test_bad_opts_are_reported_with_an_example():
    with pytest.raises(D2nbError, match="KEY VALUE"):
        build_config(settings(opts=["SOLVER.NO_SUCH_KEY", "1"]))


def test_notebook_parameters_match_trainsettings_defaults():
    """The parameters cell shows the defaults TrainSettings holds: one source of truth."""
    nb = nbformat.read(NOTEBOOKS / "03_train.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    namespace = {}
    exec(cell.source, namespace)
    defaults = TrainSettings()
    shown = {k: v for k, v in namespace.items() if not k.startswith("__")}
    assert shown, "empty parameters cell"
    for name, value in shown.items():
        assert hasattr(defaults, name), f"parameter {name} is not a TrainSettings field"
        assert getattr(defaults, name) == value, f"{name}: notebook {value!r} != TrainSettings {getattr(defaults, name)!r}"

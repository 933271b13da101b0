"""d2nb's model parts of the CPU recipe: the half-width FPN without res5 and the mask-sampling cascade heads."""

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2nb.data import SyntheticSpec
from d2nb.modeling import register
from d2nb.train import TrainSettings, build_config

TINY = SyntheticSpec(num_train=4, num_val=2)


def recipe_model():
    register()
    cfg = build_config(TrainSettings(gpus=0, synthetic=TINY, output_dir="/tmp/d2nb-test-modeling", monitor=False))
    return cfg, build_model(cfg)


def test_the_recipe_backbone_stops_at_res4_and_pools_p5_from_p4():
    cfg, model = recipe_model()
    shapes = model.backbone.output_shape()
    assert {name: s.stride for name, s in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    assert not hasattr(model.backbone.bottom_up, "res5")
    features = model.backbone(torch.zeros(1, 3, 128, 128))
    assert {name: tuple(f.shape[-2:]) for name, f in features.items()} == {
        "p2": (32, 32), "p3": (16, 16), "p4": (8, 8), "p5": (4, 4)}


def test_the_recipe_resnet18_is_half_as_wide_and_at_64_is_built_as_detectron2_builds_it():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import BasicBlock, build_resnet_backbone

    from d2nb.modeling import _basic_resnet

    cfg, model = recipe_model()
    widths = {name: shape.channels for name, shape in model.backbone.bottom_up.output_shape().items()}
    assert widths == {"res2": 32, "res3": 64, "res4": 128}
    assert model.backbone.bottom_up.stem.out_channels == 32
    assert all(isinstance(block, BasicBlock) for stage in model.backbone.bottom_up.stages for block in stage)
    wide = cfg.clone()
    wide.defrost()
    wide.MODEL.RESNETS.STEM_OUT_CHANNELS = wide.MODEL.RESNETS.RES2_OUT_CHANNELS = 64  # a run of the earlier recipe
    ours, theirs = _basic_resnet(wide, ShapeSpec(channels=3)), build_resnet_backbone(wide, ShapeSpec(channels=3))
    assert [(name, p.shape) for name, p in ours.named_parameters()] == [(name, p.shape) for name, p in theirs.named_parameters()]
    assert {n: s.channels for n, s in ours.output_shape().items()} == {"res2": 64, "res3": 128, "res4": 256}


def test_the_mask_head_trains_on_at_most_the_configured_foreground_proposals_per_picture():
    from detectron2.data import DatasetCatalog
    from detectron2.data import DatasetMapper

    cfg, model = recipe_model()
    heads = model.roi_heads
    limit = cfg.MODEL.ROI_MASK_HEAD.D2NB_ROIS_PER_IMAGE  # the recipe's (4)
    assert type(heads).__name__ == "D2nbCascadeROIHeads" and heads.mask_rois_per_image == limit and 0 < limit < 12
    seen = []
    original = heads.mask_head.forward
    heads.mask_head.forward = lambda features, instances: seen.append([len(x) for x in instances]) or original(features, instances)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(record) for record in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:2]]
    for record in batch:  # more foreground proposals than the limit: the ground truth, repeated
        record["instances"] = record["instances"][[0] * 12]
    model.train()
    with EventStorage(0):
        losses = model(batch)
        heads.mask_rois_per_image = 0  # detectron2's behaviour: every foreground proposal
        model(batch)
    assert torch.isfinite(losses["loss_mask"])
    assert all(0 < n <= limit for n in seen[0]) and max(seen[1]) > limit, seen

"""Model parts of d2nb's CPU recipe, registered with detectron2 under the names its config uses.

- ``build_d2nb_resnet_fpn_backbone``: detectron2's ResNet FPN, except that the extra
  max-pooled level comes from the last FPN level there is. detectron2's builder always pools
  "p5", so a ResNet without its fifth stage cannot be built; on the recipe's 128-pixel pictures
  res5 is a 4 x 4 map that holds three quarters of ResNet-18's weights and took 16% of a
  training step on two cores, while the shapes (20 to 80 px) are found on p2 to p4.
  For ResNet-18 and -34 it also honours a ``RES2_OUT_CHANNELS`` other than 64 (detectron2
  refuses one): the recipe's ResNet-18 is half as wide (32-64-128, stem 32), which on two cores
  took 17% less time per step (0.21 against 0.26 s, three runs each, taking turns) for the same
  AP (bbox/mask 77.8/79.7 against 77.6/79.7; a quarter width, 16, lost about 1 AP).
- ``D2nbCascadeROIHeads``: detectron2's ``CascadeROIHeads``, except that in training the mask
  head sees at most ``MODEL.ROI_MASK_HEAD.D2NB_ROIS_PER_IMAGE`` foreground proposals of each
  picture, drawn at random (0: all of them, as detectron2 does). A trained RPN gives each of a
  picture's few shapes several foreground proposals, and the mask head's four convolutions on
  all of them were a sixth of a step.

``register()`` adds both to detectron2's registries (once); every d2nb entry point that builds
a model calls it, so a run's config.yaml loads in d2nb's predictor and evaluation.
"""

from __future__ import annotations

BACKBONE = "build_d2nb_resnet_fpn_backbone"
ROI_HEADS = "D2nbCascadeROIHeads"


def register() -> None:
    """Add d2nb's backbone and ROI heads to detectron2's registries (safe to call again)."""
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY

    if BACKBONE not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(_backbone_builder())
    if ROI_HEADS not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(_roi_heads_class())


def _backbone_builder():
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    def build_d2nb_resnet_fpn_backbone(cfg, input_shape):
        top_block = LastLevelMaxPool()
        top_block.in_feature = f"p{cfg.MODEL.FPN.IN_FEATURES[-1][-1]}"  # res4 -> pooled from p4
        resnets = cfg.MODEL.RESNETS
        narrow = resnets.DEPTH in (18, 34) and resnets.RES2_OUT_CHANNELS != 64
        bottom_up = _basic_resnet(cfg, input_shape) if narrow else build_resnet_backbone(cfg, input_shape)
        return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
                   out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=top_block,
                   fuse_type=cfg.MODEL.FPN.FUSE_TYPE)

    return build_d2nb_resnet_fpn_backbone


def _basic_resnet(cfg, input_shape):
    """A ResNet-18/34 of detectron2's own stem and basic blocks at the config's widths: the stem's
    ``STEM_OUT_CHANNELS``, res2's ``RES2_OUT_CHANNELS``, doubling at each stage after."""
    from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

    resnets = cfg.MODEL.RESNETS
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[resnets.DEPTH]
    stem = BasicStem(in_channels=input_shape.channels, out_channels=resnets.STEM_OUT_CHANNELS, norm=resnets.NORM)
    stages, in_channels, out_channels = [], resnets.STEM_OUT_CHANNELS, resnets.RES2_OUT_CHANNELS
    for index, count in enumerate(blocks):
        stages.append(ResNet.make_stage(block_class=BasicBlock, num_blocks=count,
                                        stride_per_block=[1 if index == 0 else 2] + [1] * (count - 1),
                                        in_channels=in_channels, out_channels=out_channels, norm=resnets.NORM))
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=resnets.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def _roi_heads_class():
    import torch
    from detectron2.config import configurable
    from detectron2.modeling.roi_heads import CascadeROIHeads, select_foreground_proposals

    class D2nbCascadeROIHeads(CascadeROIHeads):
        """CascadeROIHeads training its mask head on a random sample of the foreground proposals."""

        @classmethod
        def from_config(cls, cfg, input_shape):
            ret = super().from_config(cfg, input_shape)
            ret["mask_rois_per_image"] = int(cfg.MODEL.ROI_MASK_HEAD.get("D2NB_ROIS_PER_IMAGE", 0))
            return ret

        @configurable
        def __init__(self, *, mask_rois_per_image: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.mask_rois_per_image = mask_rois_per_image

        def _forward_mask(self, features, instances):
            if self.training and self.mask_on and self.mask_rois_per_image > 0:
                instances, _ = select_foreground_proposals(instances, self.num_classes)
                instances = [x[torch.randperm(len(x), device=x.proposal_boxes.device)[:self.mask_rois_per_image]]
                             if len(x) > self.mask_rois_per_image else x for x in instances]
            return super()._forward_mask(features, instances)

    return D2nbCascadeROIHeads

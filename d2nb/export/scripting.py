"""What ``torch.jit.script`` needs from a model that detectron2 leaves unscriptable.

detectron2's ``CascadeROIHeads`` (and so d2nb's CPU recipe, whose ``D2nbCascadeROIHeads``
differs from it in training only) cannot be scripted: its ``_forward_box`` has no type
annotations, indexes its ``ModuleList`` of stages with a variable and keeps modules in
tuples. ``ScriptableCascadeROIHeads`` is its inference, written as TorchScript compiles it,
with the same arithmetic in the same order (the tests compare both bit for bit).
``scriptable_copy(model)`` is a copy of a model whose cascade heads run that inference;
the model itself is left as it was.
"""

import copy
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances

# the fields that Instances hold anywhere in an R-CNN's inference: scripting needs them all
INSTANCE_FIELDS = {"proposal_boxes": Boxes, "objectness_logits": Tensor, "pred_boxes": Boxes, "scores": Tensor,
                   "pred_classes": Tensor, "pred_masks": Tensor, "pred_keypoints": Tensor,
                   "pred_keypoint_heatmaps": Tensor}


class ScriptableCascadeROIHeads(CascadeROIHeads):
    """``CascadeROIHeads`` at inference, in a form ``torch.jit.script`` compiles."""

    # constants, so that scripting compiles away the heads a model does not have (detectron2
    # annotates StandardROIHeads so; a subclass must say it again)
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    def forward(self, images: ImageList, features: Dict[str, Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None) -> Tuple[List[Instances], Dict[str, Tensor]]:
        instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, instances), {}

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances]) -> List[Instances]:
        feature_list = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        scores_per_stage: List[List[Tensor]] = []
        boxes: List[Tensor] = []
        score_thresh, nms_thresh, topk = 0.0, 0.0, 0
        stage = 0
        for head, predictor in zip(self.box_head, self.box_predictor):
            if stage > 0:  # each stage refines the boxes of the one before
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = predictor(head(self.box_pooler(feature_list, [x.proposal_boxes for x in proposals])))
            boxes = predictor.predict_boxes(predictions, proposals)
            scores_per_stage.append(predictor.predict_probs(predictions, proposals))
            score_thresh, nms_thresh = predictor.test_score_thresh, predictor.test_nms_thresh
            topk = predictor.test_topk_per_image
            stage += 1
        scores: List[Tensor] = []  # the stages' mean, summed in detectron2's order
        for image in range(len(image_sizes)):
            total = scores_per_stage[0][image]
            for later in scores_per_stage[1:]:
                total = total + later[image]
            scores.append(total * (1.0 / self.num_cascade_stages))
        instances, _ = fast_rcnn_inference(boxes, scores, image_sizes, score_thresh, nms_thresh, topk)
        return instances

    def _create_proposals_from_boxes(self, boxes: List[Tensor], image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        proposals: List[Instances] = []
        for boxes_per_image, image_size in zip(boxes, image_sizes):
            clipped = Boxes(boxes_per_image.detach())
            clipped.clip(image_size)
            proposal = Instances(image_size)
            proposal.proposal_boxes = clipped
            proposals.append(proposal)
        return proposals


def scriptable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose ``CascadeROIHeads`` (any subclass) run
    ``ScriptableCascadeROIHeads``'s inference; other models are copied as they are."""
    model = copy.deepcopy(model).eval()
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, CascadeROIHeads):
        heads.__class__ = ScriptableCascadeROIHeads
    return model

"""Tiled inference as a detectron2 model, so that COCOEvaluator scores it as it scores the plain one.

    loader = build_detection_test_loader(cfg, name, mapper=FullResolutionMapper(tile))
    model = TiledModel(predictor, tile=512, overlap=0.25)
    inference_on_dataset(model, loader, COCOEvaluator(name))     # AP of the tiled predictions

The mapper reads each picture of the dataset at its own resolution (not at the model's test
size, as detectron2's ``DatasetMapper`` would); ``TiledModel`` runs it through
``Predictor.predict(tile=...)`` (``d2nb.predict.tiling``: overlapping tiles plus the whole
picture, merged) and hands the merged detections back as detectron2 ``Instances`` in the
dataset's pixels, the best ``detections_per_image`` of them (``TEST.DETECTIONS_PER_IMAGE``, as
the plain model keeps).
"""

from __future__ import annotations

import numpy as np
import torch

from d2nb.errors import D2nbError
from d2nb.images import load_image, max_side_for
from d2nb.predict.tiling import DEFAULT_OVERLAP, check_tiling, tile_windows

DETECTIONS_PER_IMAGE = 100  # detectron2's TEST.DETECTIONS_PER_IMAGE


def check_tiles_fit(dataset_dicts: list, tile, overlap=DEFAULT_OVERLAP) -> tuple:
    """``(tile, overlap)`` checked against every picture of a dataset (its json's sizes, no
    picture read): ``D2nbError`` naming a picture the tile does not fit, and the fix."""
    tile, overlap = check_tiling(tile, overlap)
    sizes = {}  # one picture of each size, the first
    for d in dataset_dicts:
        sizes.setdefault((d["height"], d["width"]), d["file_name"])
    for (height, width), file_name in sizes.items():
        tile_windows(height, width, tile, overlap, repr(file_name))
    return tile, overlap


class FullResolutionMapper:
    """A detectron2 dataset mapper: the dataset dict with ``picture``, its file loaded at full
    resolution (a ``LoadedImage``), instead of a tensor at the model's test size."""

    def __init__(self, tile):
        self.max_side = max_side_for(tile)

    def __call__(self, dataset_dict: dict) -> dict:
        picture = load_image(dataset_dict["file_name"], max_side=self.max_side)
        if not picture.ok:
            raise D2nbError(f"cannot score {dataset_dict['file_name']!r}: {picture.error}",
                            "fix or remove the picture and its annotations")
        height, width = (round(side / picture.scale) for side in picture.image.shape[:2])
        if abs(height - dataset_dict["height"]) > 1 or abs(width - dataset_dict["width"]) > 1:
            raise D2nbError(f"{dataset_dict['file_name']!r} is {width} x {height} px but its annotations say "
                            f"{dataset_dict['width']} x {dataset_dict['height']}",
                            "fix the image's width and height in the json (02_dataset_prep's fix does)")
        return dict(dataset_dict, picture=picture)


class TiledModel(torch.nn.Module):
    """``predictor`` run on overlapping tiles, called as detectron2 calls a model: on a list of
    dicts from ``FullResolutionMapper`` (``picture``, ``height``, ``width``), returning
    ``[{"instances": Instances}]`` in those pixels."""

    def __init__(self, predictor, tile, overlap=DEFAULT_OVERLAP, detections_per_image=DETECTIONS_PER_IMAGE,
                 batch_size: int = 4):
        super().__init__()
        self.tile, self.overlap = check_tiling(tile, overlap)
        self.predictor = predictor
        self.model = predictor.model  # a submodule: inference_on_dataset's eval() reaches it
        self.detections_per_image = int(detections_per_image)
        self.batch_size = batch_size
        self.eval()  # as the predictor runs it; inference_on_dataset puts back the mode it found

    def forward(self, inputs: list) -> list:
        predictions = self.predictor.predict([item["picture"] for item in inputs], batch_size=self.batch_size,
                                             progress=False, tile=self.tile, tile_overlap=self.overlap)
        self.predictor.clear_cache()  # tiles of a dataset do not come back; their pictures would stay in memory
        return [{"instances": to_instances(prediction, item["height"], item["width"], self.detections_per_image)}
                for prediction, item in zip(predictions, inputs)]

    def describe(self) -> str:
        return (f"tiled inference: tiles of {self.tile} px at full resolution, neighbours sharing {self.overlap:g} "
                "of a tile, plus the whole picture, merged")


def to_instances(prediction, height: int, width: int, detections_per_image=DETECTIONS_PER_IMAGE):
    """A ``Prediction``'s best ``detections_per_image`` detections as detectron2 ``Instances``
    of a ``height`` x ``width`` picture (the file's size; ``prediction.image`` may be smaller)."""
    from detectron2.structures import Boxes, Instances

    order = np.argsort(-prediction.scores, kind="stable")[:detections_per_image]
    instances = Instances((int(height), int(width)))
    instances.pred_boxes = Boxes(torch.as_tensor(prediction.boxes[order] / prediction.scale, dtype=torch.float32)
                                 .reshape(-1, 4))
    instances.scores = torch.as_tensor(prediction.scores[order], dtype=torch.float32)
    instances.pred_classes = torch.as_tensor(prediction.classes[order], dtype=torch.int64)
    if prediction.masks is not None:
        instances.pred_masks = PastedMasks(prediction, order, (int(height), int(width)))
    if prediction.keypoints is not None:
        points = np.array(prediction.keypoints[order], np.float32)
        points[..., :2] /= prediction.scale
        instances.pred_keypoints = torch.as_tensor(points)
    return instances


class PastedMasks:
    """``Instances.pred_masks`` as COCOEvaluator reads them (one H x W mask at a time), pasted
    from the prediction's crops only when read: a large picture's masks at full size at once
    would take detections x H x W bytes."""

    def __init__(self, prediction, order, size: tuple):
        self.prediction, self.order, self.size = prediction, list(order), size

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index) -> np.ndarray:
        mask = self.prediction.full_mask(self.order[index])
        if mask.shape != self.size:
            import cv2

            mask = cv2.resize(mask.astype(np.uint8), self.size[::-1], interpolation=cv2.INTER_NEAREST) > 0
        return mask

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def tiled_model(cfg, model, choice, tile, overlap=DEFAULT_OVERLAP) -> TiledModel:
    """The ``TiledModel`` of ``model``, already built from the yaml ``cfg`` with its weights
    loaded (``choice`` names it), keeping the detections the model itself keeps: its score
    threshold and ``TEST.DETECTIONS_PER_IMAGE``."""
    from d2nb.predict.model import yaml_parts
    from d2nb.predict.predictor import SCORE_FLOOR, Predictor

    floor = next((m.test_score_thresh for m in model.modules() if hasattr(m, "test_score_thresh")), SCORE_FLOOR)
    predictor = Predictor(choice=choice, device=cfg.MODEL.DEVICE, score_floor=floor, built=yaml_parts(cfg, model))
    return TiledModel(predictor, tile, overlap, cfg.TEST.DETECTIONS_PER_IMAGE)

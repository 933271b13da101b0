"""What prediction leaves behind: a COCO json of the kept instances, and a drawn picture per
input, as demo.py's ``--output`` writes them.

    save_outputs(predictions, "runs/inference", score_threshold=0.5)   # pictures + predictions.json
    coco = predictions_to_coco(predictions, score_threshold=0.5)       # the json as a dict
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from d2nb.draw import draw_predictions
from d2nb.errors import D2nbError
from d2nb.images import safe_file_name
from d2nb.prediction import DEFAULT_SCORE_THRESHOLD, Labels


def predictions_to_coco(predictions: list, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                        classes=None) -> dict:
    """A COCO json of the kept instances: ``images`` (file names and sizes), ``categories``
    and ``annotations`` with a ``score`` each. ``pycocotools.coco.COCO`` reads it as a dataset,
    and ``COCO.loadRes(coco["annotations"])`` as results. Coordinates are those of the
    original files (very large pictures were scaled down for the model)."""
    from pycocotools import mask as mask_util

    labels = predictions[0].labels if predictions else Labels([], [])
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in zip(labels.category_ids, labels.class_names)]}
    for image_id, prediction in enumerate(predictions, start=1):
        height, width = prediction.image.shape[:2]
        size = (round(height / prediction.scale), round(width / prediction.scale))
        coco["images"].append({"id": image_id, "file_name": prediction.name, "height": size[0], "width": size[1]})
        for index in prediction.kept(score_threshold, classes):
            x0, y0, x1, y1 = (prediction.boxes[index] / prediction.scale).tolist()
            annotation = {"id": len(coco["annotations"]) + 1, "image_id": image_id,
                          "category_id": labels.category_ids[prediction.classes[index]],
                          "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                          "score": round(float(prediction.scores[index]), 4), "iscrowd": 0,
                          "area": round((x1 - x0) * (y1 - y0), 2)}
            if prediction.masks is not None:
                mask = prediction.full_mask(index)
                if prediction.scale != 1.0:
                    import cv2
                    mask = cv2.resize(mask.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST) > 0
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                annotation["area"] = int(mask.sum())
            if prediction.keypoints is not None:
                points = prediction.keypoints[index].copy()
                points[:, :2] /= prediction.scale
                annotation["keypoints"] = [round(float(v), 2) for v in points.ravel()]
            coco["annotations"].append(annotation)
    return coco


def save_outputs(predictions: list, output, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 classes=None, **draw_options) -> dict:
    """Write a visualisation per picture and ``predictions.json``, as demo.py's ``--output``.

    ``output`` is a folder (created; pictures keep their file names) or, for one picture,
    a file name such as ``"out.jpg"`` (the json is then ``out.predictions.json``).
    Returns ``{"images": [paths], "json": path}``.
    """
    import cv2

    output = Path(output).expanduser()
    single_file = output.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") and len(predictions) == 1
    folder = output.parent if single_file else output
    folder.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for prediction in predictions:
        path = output if single_file else folder / _free_name(prediction.name, used)
        if not single_file and path.resolve().parent != folder.resolve():  # _free_name makes plain names
            raise D2nbError(f"{prediction.name!r} would be saved outside {str(folder)!r}", "rename the picture")
        drawn = draw_predictions(prediction, score_threshold, classes, **draw_options)
        if not cv2.imwrite(str(path), drawn[:, :, ::-1]):
            raise D2nbError(f"could not write {str(path)!r}", "pass an output folder you can write to")
        written.append(str(path))
    json_path = output.with_suffix(".predictions.json") if single_file else folder / "predictions.json"
    json_path.write_text(json.dumps(predictions_to_coco(predictions, score_threshold, classes)))
    return {"images": written, "json": str(json_path)}


def _free_name(name: str, used: set) -> str:
    """A file name for ``name`` inside the output folder, unused so far (``used``)."""
    name = safe_file_name(name, "image.png")
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    suffix = suffix if suffix in (".jpg", ".jpeg", ".png") else ".png"
    candidate, n = f"{stem}{suffix}", 1
    while candidate in used:
        candidate, n = f"{stem}_{n}{suffix}", n + 1
    used.add(candidate)
    return candidate

"""Running a model on pictures: the predictor, its batches, the predictions, and saving them.

    predictor = Predictor("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")  # zoo checkpoint
    predictor = Predictor("runs/train")                  # a folder 03_train wrote
    predictions = predictor.predict(load_images("photos/*.jpg"), batch_size=4)
    save_outputs(predictions, "runs/inference", score_threshold=0.5)

The model keeps every detection scoring at least ``score_floor`` (0.05, detectron2's own
evaluation threshold); ``score_threshold`` is applied afterwards, when drawing, counting and
saving, so the threshold explorer redraws from the cached predictions without running the
model again. Images already predicted by the same predictor are served from its cache.

One module per step, in the order a picture goes through them:

- ``predictor``: ``Predictor`` (the model, its cache, its forward pass) and ``resolve_device``;
- ``model``: the model built from a yaml or LazyConfig config, and the labels of its classes;
- ``batching``: pictures resized ahead in threads, batches in flight in CUDA streams;
- ``precision``: the backbone in float16 for ``amp=True``;
- ``postprocess``: model outputs to ``Prediction``, masks pasted inside their boxes;
- ``outputs``: the COCO json and the drawn pictures ``save_outputs`` writes.

``Prediction`` and ``Labels`` live in ``d2nb.prediction``, below this package, so that
``d2nb.draw`` reads them without importing the predictor.
"""

from d2nb.predict.outputs import predictions_to_coco, save_outputs
from d2nb.predict.postprocess import prediction_from_arrays
from d2nb.predict.predictor import CACHE_SIZE, GPU_BATCHES_IN_FLIGHT, SCORE_FLOOR, Predictor, resolve_device
from d2nb.prediction import DEFAULT_SCORE_THRESHOLD, Labels, Prediction
from d2nb.weights import local_weights  # d2nb.predict.local_weights, as before

__all__ = ["CACHE_SIZE", "DEFAULT_SCORE_THRESHOLD", "GPU_BATCHES_IN_FLIGHT", "SCORE_FLOOR", "Labels",
           "Prediction", "Predictor", "local_weights", "prediction_from_arrays", "predictions_to_coco",
           "resolve_device", "save_outputs"]

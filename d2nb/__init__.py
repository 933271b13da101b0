"""d2nb: detectron2 in notebooks.

Modules, one per stage of the work:

- ``d2nb.data``: the synthetic dataset, dataset registration, formats and validation.
- ``d2nb.zoo``: the model-zoo catalogue and config/weights resolution.
- ``d2nb.train``: training settings, the config built from them, the trainer and its live
  monitor, several processes.
- ``d2nb.predict``: the predictor, its batches, post-processing and saved outputs; below it
  ``d2nb.prediction`` (what a model found) and ``d2nb.draw`` (drawing it).
- ``d2nb.evaluate``, ``d2nb.analysis``: COCO evaluation and what the numbers mean.
- ``d2nb.export``: TorchScript and ONNX.
- ``d2nb.devices``: which GPUs to use.
- ``d2nb.install``: getting detectron2 itself onto a machine (Colab, a fresh venv), through a
  cache of built wheels, and the notebooks' first cell with its status block.
- ``d2nb.colab``: everything that only works in Colab (Drive, the widget manager), in one place.
- ``d2nb.widgets`` and ``d2nb.cli``: the notebooks' views and the command lines, above the rest.

Importing ``d2nb`` does not import detectron2, so ``d2nb.install`` works before it exists.
"""

from d2nb.errors import D2nbError

__version__ = "0.1.0"
__all__ = ["D2nbError", "__version__"]

"""Deploying a trained model: TorchScript for C++ and mobile, ONNX for onnxruntime and
TensorRT, each checked against the PyTorch model before it is reported as working.

One module per step:

- ``runtime``: numpy + onnxruntime + opencv code that runs ``model.onnx`` without detectron2
  or torch (saved beside it as ``run_onnx.py``);
- ``check``: the exported model beside PyTorch on sample pictures: matches, scores, mask IoU,
  latency.
"""

from d2nb.export.check import Tolerance

__all__ = ["Tolerance"]

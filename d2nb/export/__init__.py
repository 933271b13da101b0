"""Deploying a trained model: TorchScript for C++ and mobile, ONNX for onnxruntime and
TensorRT, each checked against the PyTorch model before it is reported as working.

    from d2nb.export import export_model
    result = export_model("runs/train", format="onnx", output_dir="runs/export")
    result.ok, result.table, result.problems

One module per step:

- ``export``: ``export_model``, writing ``model.ts``/``model.onnx`` and ``model.json``;
- ``scripting``: what ``torch.jit.script`` needs from detectron2's cascade heads;
- ``runtime``: numpy + onnxruntime + opencv code that runs ``model.onnx`` without detectron2
  or torch (saved beside it as ``run_onnx.py``);
- ``check``: the exported model beside PyTorch on sample pictures: matches, scores, mask IoU,
  latency.
"""

from d2nb.export.check import Tolerance
from d2nb.export.export import EXPORT_METHODS, FORMATS, ExportResult, export_model

__all__ = ["EXPORT_METHODS", "FORMATS", "ExportResult", "Tolerance", "export_model"]

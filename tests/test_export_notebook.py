"""05_export under papermill on the CPU, on the checkpoint of the 03_train run: the export is
checked against PyTorch, and run_onnx.py runs in a Python without torch or detectron2."""

import json

from conftest import run_notebook


def cell_text(notebook) -> str:
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_notebook_exports_to_onnx_checks_it_and_runs_the_plain_runtime(trained_run, datasets_root, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: see test_export.one_torch_thread
    pictures = sorted(str(p) for p in datasets_root.glob("*/val/*.png"))[:4]
    assert pictures, "the synthetic val split the training run made"
    output_dir = tmp_path / "export"
    notebook = run_notebook("05_export.ipynb", tmp_path / "05_export.out.ipynb",
                            {"config": trained_run["output_dir"], "format": "onnx", "sample_images": pictures,
                             "output_dir": output_dir})
    text = cell_text(notebook)
    assert "onnx export matches PyTorch on 4 pictures" in text
    assert "def postprocess(" in text  # the plain runtime's code, shown
    assert "model.onnx on CPUExecutionProvider" in text and " box (" in text  # and run without torch
    settings = json.loads((output_dir / "model.json").read_text())
    assert settings["class_names"] and settings["outputs"][0] == "pred_boxes"

"""Issue 8, security: uploaded names stay in their folder, checkpoints load without running
code from a file of unknown origin, no shell strings, and training writes only inside its
output_dir."""

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import NOTEBOOKS, ROOT
from d2nb.checkpoint import AtomicCheckpointer
from d2nb.errors import D2nbError
from d2nb.images import load_uploads
from d2nb.predict import Predictor, prediction_from_arrays, save_outputs
from d2nb.train import train
from d2nb.zoo import CPU_RECIPE
from reliability_support import CaptureLog, assert_message, file_hashes, tiny_settings, unchanged

PNG = Path(ROOT / "d2nb" / "assets" / "samples" / "shapes_1.png").read_bytes()


# --------------------------------------------------------------------------- uploads


HOSTILE_NAMES = {  # what a browser may send as a file name -> the name d2nb saves it under
    "../../escape.png": "escape.png",
    "/etc/cron.d/job.png": "job.png",
    "..\\..\\windows.png": "windows.png",
    "C:\\Users\\me\\photo.png": "photo.png",
    "~/.ssh/id_rsa.png": "id_rsa.png",
    "a\x00b.png": "a_b.png",
    "new\nline.png": "new_line.png",
    "..": "upload.png",
    "": "upload.png",
    ".bashrc": "bashrc",
    "CON.png": "_CON.png",
    "$(rm -rf ~).png": "_(rm -rf _).png",
    "`id`;|&.png": "_id____.png",
    "<img src=x onerror=alert(1)>.png": "_img src_x onerror_alert(1)_.png",
    "\u202egnp.exe": "_gnp.exe",  # right-to-left override, which shows the name reversed
    "café.png": "café.png",
}


def test_uploaded_file_names_cannot_escape_the_folder_they_are_saved_in(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "escape.png").write_bytes(b"the user's own file")
    (home / ".ssh" / "id_rsa.png").write_bytes(b"secret")
    output = home / "project" / "runs" / "inference"
    uploads = [{"name": name, "content": memoryview(PNG)} for name in HOSTILE_NAMES]
    uploads.append({"name": "x" * 300 + ".png", "content": memoryview(PNG)})
    with unchanged(home):
        images = load_uploads(uploads)
    assert [image.name for image in images][:-1] == list(HOSTILE_NAMES.values())
    assert images[-1].name == "x" * 96 + ".png" and all(image.ok for image in images)

    predictions = [prediction_from_arrays(image.image, [(2, 2, 20, 20)], [0.9], [0], ["shape"], name=image.name)
                   for image in images]
    before = file_hashes(home)
    saved = save_outputs(predictions, output)
    written = {Path(path) for path in saved["images"]} | {Path(saved["json"])}
    assert len(written) == len(images) + 1  # one file each: none overwrote another
    assert all(path.parent == output for path in written)
    after = file_hashes(home)
    assert {path for path in after if not path.startswith(str(output))} == set(before)
    assert all(after[path] == digest for path, digest in before.items())
    names = [path.name for path in written]
    assert not any(name.startswith(".") or "/" in name or "\\" in name or not name.isprintable() for name in names)


# --------------------------------------------------------------------------- checkpoints


class RunsCodeWhenLoaded:
    """What a booby-trapped checkpoint holds: unpickling it creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


def test_a_pth_loads_with_weights_only(folder, monkeypatch):
    model = small_model()
    AtomicCheckpointer(model, str(folder)).save("model_final")
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or real_load(*args, **kwargs))
    other = small_model()
    torch.nn.init.zeros_(other[0].weight)
    with unchanged(folder):
        AtomicCheckpointer(other).load(str(folder / "model_final.pth"))
    assert [kwargs.get("weights_only") for kwargs in loads] == [True]
    assert torch.equal(other[0].weight, model[0].weight)


def test_a_pth_that_would_run_code_is_refused_before_anything_runs(folder, tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": small_model().state_dict(), "payload": RunsCodeWhenLoaded(marker)}, folder / "weights.pth")
    with unchanged(folder), pytest.raises(D2nbError) as error:
        AtomicCheckpointer(small_model()).load(str(folder / "weights.pth"))
    assert not marker.exists()
    assert_message(error.value, [f"'{folder / 'weights.pth'}' holds Python objects besides tensors and numbers "
                                 "(it asks for ", "torch.load(weights_only=True), so that opening a checkpoint "
                                 "cannot run code"],
                   ["if you trust where the file comes from", "torch.save({'model': model_state_dict}, 'weights.pth')"])


def test_a_cut_or_empty_pth_is_named_as_incomplete(folder):
    AtomicCheckpointer(small_model(), str(folder)).save("model_final")
    data = (folder / "model_final.pth").read_bytes()
    (folder / "copied_halfway.pth").write_bytes(data[: len(data) // 2])
    (folder / "empty.pth").write_bytes(b"")
    for name, reason in (("copied_halfway.pth", "PytorchStreamReader failed reading zip archive"),
                         ("empty.pth", "0 bytes")):
        with unchanged(folder), pytest.raises(D2nbError) as error:
            AtomicCheckpointer(small_model()).load(str(folder / name))
        assert_message(error.value, [f"'{folder / name}' is not a complete PyTorch checkpoint ({reason}"],
                       ["save or download it again"])


def test_the_predictor_refuses_such_a_pth_too(folder, tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "payload": RunsCodeWhenLoaded(marker)}, folder / "model_final.pth")
    with unchanged(folder), pytest.raises(D2nbError) as error:
        Predictor(CPU_RECIPE, weights=str(folder / "model_final.pth"), device="cpu")
    assert not marker.exists()
    assert_message(error.value, ["holds Python objects besides tensors"], ["if you trust where the file comes from"])


def detectron2_pickle(path, model, extra=None):
    """A checkpoint in detectron2's .pkl format: {"model": {name: numpy array}, "__author__"}."""
    data = {"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "someone"}
    data.update(extra or {})
    with open(path, "wb") as stream:
        pickle.dump(data, stream)


def test_a_pkl_from_outside_the_model_zoo_says_so_and_loads_only_arrays(folder, tmp_path):
    source = small_model()
    detectron2_pickle(folder / "model_final_f10217.pkl", source)
    target = small_model()
    torch.nn.init.zeros_(target[0].weight)
    with unchanged(folder), CaptureLog("d2nb.checkpoint") as log:
        AtomicCheckpointer(target).load(str(folder / "model_final_f10217.pkl"))
    assert torch.equal(target[0].weight, source[0].weight)
    assert_message(log.text, [f"loading '{folder / 'model_final_f10217.pkl'}', a Python pickle (.pkl) from outside "
                              "detectron2's model zoo: a pickle can run code when it is loaded"],
                   ["load checkpoints only from sources you trust"])

    marker = tmp_path / "code_ran"
    detectron2_pickle(folder / "trap.pkl", source, {"payload": RunsCodeWhenLoaded(marker)})
    with unchanged(folder), pytest.raises(D2nbError) as error:
        AtomicCheckpointer(small_model()).load(str(folder / "trap.pkl"))
    assert not marker.exists()
    assert_message(error.value, [f"'{folder / 'trap.pkl'}' is a pickle from outside detectron2's model zoo that "
                                 "asks to run pathlib.Path.touch while loading"],
                   ["if you trust where the file comes from, convert it yourself", "otherwise delete it"])


def test_a_pkl_downloaded_from_the_model_zoo_loads_as_detectron2_loads_it(folder):
    source = small_model()
    detectron2_pickle(folder / "model_final_f10217.pkl", source, {"matching_heuristics": False})
    url = "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/model_final_f10217.pkl"
    target = small_model()
    torch.nn.init.zeros_(target[0].weight)
    with unchanged(folder), CaptureLog("d2nb.checkpoint") as log:  # the cached download, and where it came from
        AtomicCheckpointer(target).load(str(folder / "model_final_f10217.pkl"), source=url)
    assert torch.equal(target[0].weight, source[0].weight) and "pickle" not in log.text


# --------------------------------------------------------------------------- shell strings


SHELL_CALLS = {"system", "popen", "getoutput", "getstatusoutput", "create_subprocess_shell", "spawnl", "spawnlp"}
PROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def test_no_shell_strings_in_d2nb_or_the_notebooks():
    found = []
    for path in sorted((ROOT / "d2nb").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in SHELL_CALLS:
                found.append(f"{where} calls {name}")
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                found.append(f"{where} passes shell=")
            if name in PROCESS_CALLS and node.args and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp)) \
                    or name in PROCESS_CALLS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append(f"{where} runs a command given as one string")
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                if line.lstrip().startswith(("!", "%")) and any(c in line for c in "{$"):
                    found.append(f"{notebook.name}: {line.strip()}")
    assert found == []


# --------------------------------------------------------------------------- output_dir


def test_training_writes_only_inside_its_output_dir(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "notes.md").write_text("the user's\n")
    monkeypatch.chdir(project)  # the notebook's folder; output_dir relative to it, as in the README
    before = file_hashes(tmp_path)
    result = train(tiny_settings("runs/shapes", max_iter=1, opts=[]))  # with the evaluation at the end
    assert result.metrics and "bbox" in result.metrics
    after = file_hashes(tmp_path)
    output_dir = str(project / "runs" / "shapes")
    outside = {path for path in set(after) | set(before)
               if not path.startswith(output_dir + "/") and after.get(path) != before.get(path)}
    assert outside == set()
    assert {Path(p).relative_to(output_dir).parts[0] for p in after if p.startswith(output_dir)} >= {
        "config.yaml", "log.txt", "metrics.json", "model_final.pth", "last_checkpoint", "inference"}

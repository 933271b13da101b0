"""Whether a run continues what its ``output_dir`` holds: ``resume`` True, False or ``"auto"``.

``resume="auto"`` (the default) lets a notebook be run again after a disconnect without
thinking about it:

- no ``last_checkpoint`` in ``output_dir``: a new run, from iteration 0;
- a ``last_checkpoint`` of the same config and dataset (compared with the ``config.yaml`` the
  run wrote when it started): training continues from it, and one line says from where;
  ``max_iter`` may grow (the LR steps move with it), and that is said too;
- a checkpoint of another config or dataset: ``D2nbError`` naming what differs
  (``SOLVER.BASE_LR 0.001 -> 0.5``) and offering ``resume=False`` with a new ``output_dir``.

``resume=True`` is detectron2's ``--resume``: continue from ``last_checkpoint`` whatever the
config (the differences are logged); ``resume=False`` starts again from the weights.

A run that already reached its ``max_iter`` is not trained again: ``train`` evaluates its
``model_final.pth`` and says so.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from d2nb import zoo
from d2nb.errors import D2nbError
from d2nb.parameters import flag

AUTO = "auto"
# Keys that may differ between the runs of one output_dir without changing what is trained:
# where it is written and read from, how many loader processes this machine has, the device
# (a Colab runtime with or without a GPU), how often to save and to evaluate, what to evaluate on,
# how loader workers hand tensors over.
IGNORED_KEYS = ("OUTPUT_DIR", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "SOLVER.CHECKPOINT_PERIOD",
                "TEST.EVAL_PERIOD", "DATASETS.TEST", "VIS_PERIOD", "CUDNN_BENCHMARK", "D2NB_FILE_SYSTEM_SHARING",
                "D2NB_FAST_STEP", "TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER")
# d2nb scales these with max_iter (``build_config``): they follow a max_iter that grows
SCHEDULE_KEYS = ("SOLVER.STEPS", "SOLVER.WARMUP_ITERS")
DATASET_KEYS = ("DATASETS.TRAIN", "classes", "annotations")
DATASET_FILE = "d2nb_dataset.json"  # written when a run starts, beside config.yaml
SHOWN_DIFFERENCES = 8
_CHECKPOINT_NAME = re.compile(r"^model_(\d+)(?:_timed)?\.pth$")


def resume_choice(value):
    """``value`` as ``True``, ``False`` or ``"auto"``; text like ``"true"``/``"no"`` accepted."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return flag("resume", value)
    except D2nbError:
        raise D2nbError(f"resume must be True, False or 'auto', got {value!r}",
                        "pass resume='auto' (continue a run of the same config, else start one), resume=True "
                        "(continue whatever the config) or resume=False (start again) ('-p resume True' to "
                        "papermill)") from None


@dataclass
class ResumeDecision:
    """What ``train`` does with the run in ``output_dir``.

    ``resume``: what detectron2's ``resume_or_load`` gets; ``checkpoint``: the file continued
    from; ``start_iter``: the first iteration to train; ``finished``: nothing is left to train;
    ``message``: the one line ``train`` logs (``None``: a new run, nothing to say)."""

    resume: bool
    checkpoint: str | None = None
    start_iter: int = 0
    finished: bool = False
    message: str | None = None


def decide_resume(cfg, choice) -> ResumeDecision:
    """Decide from ``cfg`` (the run about to start) and ``output_dir``'s ``last_checkpoint``
    and ``config.yaml``; ``D2nbError`` when ``choice`` is ``"auto"`` and they are another run's."""
    folder = Path(cfg.OUTPUT_DIR)
    last = folder / "last_checkpoint"
    if choice is False or not last.is_file():
        return ResumeDecision(resume=False)
    name = last.read_text().strip()
    if not (folder / name).is_file():
        raise D2nbError(f"{str(last)!r} names {name!r}, which is not in {str(folder)!r}",
                        f"pass resume=False with a new output_dir (e.g. output_dir={next_free_folder(folder)!r}) "
                        "to start again, or write the name of a model_*.pth file that is there into last_checkpoint")
    saved = read_saved_config(folder)
    current = config_values(cfg)
    saved_max_iter = (saved or {}).get("SOLVER.MAX_ITER", cfg.SOLVER.MAX_ITER)
    iteration = checkpoint_iteration(folder / name, saved_max_iter)
    start, max_iter = iteration + 1, cfg.SOLVER.MAX_ITER
    differences = config_differences(saved, current) if saved is not None else []
    differences += dataset_differences(folder, cfg)
    grows = max_iter > saved_max_iter
    if choice == AUTO:
        allowed = SCHEDULE_KEYS + ("SOLVER.MAX_ITER",) if grows else ()
        blocking = [d for d in differences if d[0] not in allowed]
        if blocking:
            raise other_run_error(folder, name, start, blocking)
    if start >= max_iter:
        return finished(folder, name, start, max_iter)
    where = f"Resuming {folder} from {name}: iteration {start} of {max_iter}"
    if choice is True:
        changed = f"; with this run's values for {describe_differences(differences)}" if differences else ""
        return ResumeDecision(True, name, start, message=f"{where} (resume=True{changed})")
    if saved is None:
        return ResumeDecision(True, name, start, message=f"{where} (no config.yaml there to compare with)")
    if grows:
        steps = [d for d in differences if d[0] == "SOLVER.STEPS"]
        moved = f"; the LR steps move with it: {show(steps[0][1])} -> {show(steps[0][2])}" if steps else ""
        return ResumeDecision(True, name, start,
                              message=f"{where}: max_iter grows from {saved_max_iter} to {max_iter}{moved}")
    return ResumeDecision(True, name, start, message=f"{where} (resume='auto': the same config and dataset)")


def finished(folder: Path, name: str, start: int, max_iter: int) -> ResumeDecision:
    return ResumeDecision(resume=True, checkpoint=name, start_iter=start, finished=True, message=(
        f"{folder} already finished its {max_iter} iterations ({name}): nothing to train, evaluating it again "
        "(pass a larger max_iter to train on, or resume=False with a new output_dir for a new run)"))


def checkpoint_iteration(path: Path, max_iter: int) -> int:
    """The iteration ``path`` was saved at: from its name (``model_0000123.pth``), from the
    run's ``max_iter`` for ``model_final.pth``, else from the file."""
    match = _CHECKPOINT_NAME.match(path.name)
    if match:
        return int(match.group(1))
    if path.name == "model_final.pth":
        return max_iter - 1
    from d2nb.checkpoint import load_torch_file

    return int(load_torch_file(path).get("iteration", -1))


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"SOLVER": {"BASE_LR": 0.1}}`` as ``{"SOLVER.BASE_LR": 0.1}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_values(cfg) -> dict:
    """``cfg`` as the flat values its ``config.yaml`` holds (tuples as lists, as yaml has them)."""
    import yaml

    return flatten(yaml.safe_load(cfg.dump()))


def read_saved_config(folder: Path) -> dict | None:
    """The flat values of the ``config.yaml`` a run wrote in ``folder`` when it started."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        return None
    try:
        return flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as error:
        raise D2nbError(f"{str(path)!r} is not a readable config ({str(error).splitlines()[0]})",
                        "pass resume=True to continue without comparing, or resume=False with a new output_dir") from None


def config_differences(saved: dict, current: dict) -> list:
    """``[(key, saved value, this run's value)]`` for the keys that differ, ``IGNORED_KEYS`` aside."""
    missing = object()
    found = []
    for key in sorted(set(saved) | set(current)):
        if key in IGNORED_KEYS:
            continue
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            found.append((key, "(none)" if old is missing else old, "(none)" if new is missing else new))
    return found


def dataset_identity(cfg) -> dict:
    """What names the training split: its registered name, classes, and annotation file with
    its size (a copy of the same file elsewhere is the same dataset; one whose annotations
    changed is not, and its size all but always says so)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    identity = {"train": cfg.DATASETS.TRAIN[0], "classes": list(getattr(meta, "thing_classes", None) or [])}
    json_file = getattr(meta, "json_file", None)
    if json_file and os.path.isfile(json_file):
        identity.update(json_file=str(json_file), json_bytes=os.path.getsize(json_file))
    return identity


def write_dataset_identity(cfg) -> None:
    """``d2nb_dataset.json`` in output_dir: what the next run's ``resume="auto"`` compares with."""
    Path(cfg.OUTPUT_DIR, DATASET_FILE).write_text(json.dumps(dataset_identity(cfg), indent=1))


def dataset_differences(folder: Path, cfg) -> list:
    """``[(what, saved, this run's)]`` for the classes and annotation file that differ from the
    ``d2nb_dataset.json`` (else the ``class_names.json``) a run left in ``folder``."""
    current = dataset_identity(cfg)
    if (folder / DATASET_FILE).is_file():
        saved = json.loads((folder / DATASET_FILE).read_text())
    elif (folder / zoo.CLASS_NAMES_FILE).is_file():
        saved = {"classes": json.loads((folder / zoo.CLASS_NAMES_FILE).read_text())}
    else:
        return []
    found = []
    if saved.get("classes") and current["classes"] and saved["classes"] != current["classes"]:
        found.append(("classes", saved["classes"], current["classes"]))
    if "json_bytes" in saved and "json_bytes" in current and (
            saved["json_bytes"] != current["json_bytes"]
            or Path(saved["json_file"]).name != Path(current["json_file"]).name):
        found.append(("annotations", f"{saved['json_file']} ({saved['json_bytes']} bytes)",
                      f"{current['json_file']} ({current['json_bytes']} bytes)"))
    return found


def show(value) -> str:
    """A config value as a person writes it: ``0.0004``, ``(8, 16)``, ``'BN'``."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "(" + ", ".join(show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str) and value != "(none)" and not value.endswith(" bytes)"):
        return repr(value)
    return str(value)


def describe_differences(differences: list) -> str:
    shown = "; ".join(f"{key} {show(old)} -> {show(new)}" for key, old, new in differences[:SHOWN_DIFFERENCES])
    more = len(differences) - SHOWN_DIFFERENCES
    return shown + (f"; and {more} more (compare config.yaml)" if more > 0 else "")


def next_free_folder(folder: Path) -> str:
    """``runs/train_2`` (or _3, ...): a folder beside ``folder`` that does not exist yet."""
    number = 2
    while Path(f"{folder}_{number}").exists():
        number += 1
    return f"{folder}_{number}"


def other_run_error(folder: Path, name: str, start: int, differences: list) -> D2nbError:
    """The message for an ``output_dir`` holding the checkpoint of another config or dataset."""
    what = "dataset and config" if any(d[0] in DATASET_KEYS for d in differences) else "config"
    return D2nbError(
        f"output_dir {str(folder)!r} holds a run of another {what} ({name}, iteration {start}), so resume='auto' "
        f"does not continue it; this run differs from its config.yaml in: {describe_differences(differences)}",
        f"for a new run, pass resume=False with a new output_dir (e.g. output_dir={next_free_folder(folder)!r}); "
        "to continue the old run, set those values back, or pass resume=True to continue it with the new ones")


def trim_metrics(folder, iteration: int) -> int:
    """Drop the rows of ``metrics.json`` after ``iteration``: steps a stopped run logged after its
    checkpoint, which the resumed run does again. Return how many were dropped."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by the kill
            dropped += 1
            continue
        if isinstance(row, dict) and row.get("iteration", -1) > iteration:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        temporary = path.with_name(f".{path.name}.trim")
        temporary.write_text("".join(kept))
        os.replace(temporary, path)
    return dropped

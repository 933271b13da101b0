"""The model-zoo catalogue: which configs exist, their checkpoints, and resolving a choice.

A ``config`` given by a user is one of:

- a d2nb recipe name, such as ``"mask_rcnn_R_18_FPN_cpu.yaml"`` (files in ``d2nb/configs``);
- a model-zoo name, such as ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``;
- a path to a yaml file (a detectron2 config, or the ``config.yaml`` a training run wrote).

``weights`` is ``"none"`` (train from scratch), ``"zoo"`` (the model-zoo checkpoint of the
config), a model-zoo config name (its checkpoint), a local ``.pth``/``.pkl`` path, or a URL.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from d2nb.errors import D2nbError

RECIPES_DIR = Path(__file__).parent / "configs"
CPU_RECIPE = "mask_rcnn_R_18_FPN_cpu.yaml"
GPU_DEFAULT = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
NO_WEIGHTS = ("", "none", "None", "scratch")
ZOO_WEIGHTS = ("zoo", "model-zoo", "model_zoo")


def zoo_configs_dir() -> Path:
    """The folder of yaml configs that the installed detectron2 ships."""
    import detectron2.model_zoo

    return Path(detectron2.model_zoo.__file__).parent / "configs"


def list_zoo_configs() -> list:
    """Every non-base yaml config the installed detectron2 ships, as model-zoo names."""
    root = zoo_configs_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml")
                  if not p.name.startswith("Base-") and "common" not in p.parts)


def list_recipes() -> list:
    return sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))


def default_config(synthetic_data: bool) -> str:
    """The config used when the user names none.

    The small recipe for the synthetic shapes (it trains from scratch: no download, on CPU or
    GPU); for real data, Mask R-CNN R-50 FPN 3x fine-tuned from its model-zoo checkpoint.
    """
    return CPU_RECIPE if synthetic_data else GPU_DEFAULT


def resolve_config(config) -> tuple:
    """Return ``(yaml_path, zoo_name_or_None)`` for a recipe, model-zoo name or yaml path.

    Raises ``D2nbError`` for an unknown name, suggesting the closest known names.
    """
    config = str(config)
    if config in list_recipes():
        return str(RECIPES_DIR / config), None
    zoo_path = zoo_configs_dir() / config
    if config.endswith(".yaml") and zoo_path.is_file() and not Path(config).is_absolute():
        return str(zoo_path), config
    if Path(config).expanduser().is_file():
        return str(Path(config).expanduser().resolve()), None
    known = list_recipes() + list_zoo_configs()
    close = closest_config_names(config, known)
    raise D2nbError(
        f"config {config!r} is not a d2nb recipe, a model-zoo config of the installed "
        "detectron2, nor an existing yaml file"
        + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""),
        "pass a model-zoo name such as 'COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml' "
        f"(d2nb.zoo.list_zoo_configs() lists {len(known)} names) or the path of a yaml file")


def closest_config_names(config: str, known: list, n: int = 3) -> list:
    """The ``n`` names of ``known`` closest to ``config``, compared whole and by file name, so
    that ``mask_rcnn_R_50_FPN_3`` (no folder, no ``x.yaml``) finds its model-zoo config."""
    def similarity(name):
        whole = difflib.SequenceMatcher(None, config, name).ratio()
        file_name = difflib.SequenceMatcher(None, Path(config).name, Path(name).name).ratio()
        return max(whole, file_name), whole

    ranked = sorted(known, key=similarity, reverse=True)[:n]
    close = [name for name in ranked if similarity(name)[0] >= 0.5]
    stem = Path(config).stem
    return close or [name for name in known if stem and stem in name][:n]  # short names: "rpn"


def checkpoint_url(zoo_name: str) -> str:
    """The published checkpoint URL of a model-zoo config."""
    from detectron2 import model_zoo

    try:
        return model_zoo.get_checkpoint_url(zoo_name)
    except RuntimeError:
        raise D2nbError(f"the model zoo publishes no trained checkpoint for {zoo_name!r}",
                        "pass weights='none' to train from scratch, or a .pth path") from None


def resolve_weights(weights, zoo_name) -> str:
    """Turn the ``weights`` parameter into what ``MODEL.WEIGHTS`` takes ("" for none).

    ``None`` means: the model-zoo checkpoint for a model-zoo config, none for a recipe or
    a yaml path (whose own ``MODEL.WEIGHTS`` then stays as written).
    """
    if weights is None:
        return checkpoint_url(zoo_name) if zoo_name else None
    weights = str(weights)
    if weights in NO_WEIGHTS:
        return ""
    if weights in ZOO_WEIGHTS:
        if not zoo_name:
            raise D2nbError(f"weights={weights!r} needs a model-zoo config, not a recipe or a path",
                            "pass a model-zoo config name, or weights='none' or a .pth path")
        return checkpoint_url(zoo_name)
    if weights.endswith(".yaml") and (zoo_configs_dir() / weights).is_file():
        return checkpoint_url(weights)
    if "://" in weights:
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise D2nbError(f"weights file {weights!r} does not exist",
                        "pass an existing .pth/.pkl path, a URL, 'zoo' or 'none'")
    return str(path.resolve())


# --------------------------------------------------------------------------- the catalogue
# What the model-zoo picker shows: every config the installed detectron2 ships, with the
# numbers detectron2's MODEL_ZOO.md publishes for it. The numbers live in one data file,
# d2nb/assets/model_zoo_numbers.csv, written from MODEL_ZOO.md by ``write_numbers_table``.

NUMBERS_TABLE = Path(__file__).parent / "assets" / "model_zoo_numbers.csv"
# MODEL_ZOO.md column headings -> our column names (the units are in the names)
NUMBER_COLUMNS = {
    "lr sched": "lr_schedule", "epochs": "epochs", "train time (s/iter)": "train_s_per_iter",
    "train time (s/im)": "train_s_per_image", "inference time (s/im)": "inference_s_per_image",
    "train mem (GB)": "train_memory_gb", "box AP": "box_ap", "box AP50": "box_ap50",
    "mask AP": "mask_ap", "kp. AP": "keypoint_ap", "PQ": "pq", "prop. AR": "proposal_ar",
    "model id": "model_id",
}
TABLE_COLUMNS = ["config", "section", "name", *NUMBER_COLUMNS.values(), "checkpoint_url"]
TEXT_COLUMNS = {"config", "section", "name", "lr_schedule", "model_id", "checkpoint_url"}
# sort keys the picker offers: (label, column, larger is better)
SORT_KEYS = [("name", "config", False), ("box AP", "box_ap", True), ("mask AP", "mask_ap", True),
             ("keypoint AP", "keypoint_ap", True), ("PQ", "pq", True),
             ("inference s/im", "inference_s_per_image", False), ("train s/iter", "train_s_per_iter", False),
             ("train memory", "train_memory_gb", False)]
TASKS = ("instance segmentation", "detection", "keypoints", "panoptic segmentation",
         "semantic segmentation", "proposals")


@dataclass
class ZooModel:
    """One config of the installed model zoo and what MODEL_ZOO.md publishes for it.

    ``numbers`` holds the published values (``box_ap``, ``mask_ap``, ``keypoint_ap``, ``pq``,
    ``inference_s_per_image``, ``train_s_per_iter``, ``train_memory_gb``, ``model_id``...) and
    is empty for configs without a published row (quick_schedules, a few ablations).
    """

    config: str
    group: str
    task: str
    checkpoint_url: str | None
    numbers: dict = field(default_factory=dict)

    def number(self, column: str):
        return self.numbers.get(column)


def task_of(config_name: str) -> str:
    """The task a model-zoo config solves, read from detectron2's naming of its files."""
    name = Path(config_name).name
    for needle, task in (("panoptic", "panoptic segmentation"), ("semantic", "semantic segmentation"),
                         ("keypoint", "keypoints"), ("mask_rcnn", "instance segmentation"),
                         ("rpn", "proposals")):
        if needle in name:
            return task
    return "detection"  # faster_rcnn, fast_rcnn, retinanet


def parse_model_zoo_markdown(text: str) -> list:
    """Rows of the HTML tables in detectron2's MODEL_ZOO.md, as dicts of ``TABLE_COLUMNS``.

    A config that appears in several tables keeps its first row; rows without a config link
    (test-time augmentation lines) are left out.
    """
    rows, seen = [], set()
    section = ""
    for part in re.split(r"(^#{2,4} .*$)", text, flags=re.M):
        if part.startswith("#"):
            section = part.lstrip("#").strip().rstrip(":") if part.startswith("###") else section
            continue
        for table in part.split("<!-- START TABLE -->")[1:]:
            headings = [re.sub(r"<br/>", " ", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S):
                cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
                link = re.search(r'href="configs/([^"]+)"', cells[0]) if cells else None
                if not link or link.group(1) in seen or len(cells) != len(headings):
                    continue
                seen.add(link.group(1))
                entry = {"config": link.group(1), "section": section,
                         "name": re.sub(r"<[^>]+>", "", cells[0]).strip()}
                for heading, cell in zip(headings[1:], cells[1:]):
                    if heading in NUMBER_COLUMNS:
                        value = re.sub(r"<[^>]+>", "", cell).strip()
                        entry[NUMBER_COLUMNS[heading]] = "" if value == "N/A" else value
                    elif heading == "download":
                        url = re.search(r'href="([^"]+\.pkl)"', cell)
                        entry["checkpoint_url"] = url.group(1) if url else ""
                rows.append({column: entry.get(column, "") for column in TABLE_COLUMNS})
    return rows


def write_numbers_table(model_zoo_md, table=NUMBERS_TABLE) -> int:
    """Regenerate the bundled numbers table from a detectron2 checkout's MODEL_ZOO.md.

        python -c "from d2nb.zoo import write_numbers_table; write_numbers_table('detectron2/MODEL_ZOO.md')"
    """
    rows = parse_model_zoo_markdown(Path(model_zoo_md).read_text())
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@lru_cache(maxsize=1)
def published_numbers() -> dict:
    """``{config: {column: value}}`` from the bundled table; numbers as floats, blanks left out."""
    table = {}
    with open(NUMBERS_TABLE, newline="") as f:
        for row in csv.DictReader(f):
            table[row["config"]] = {k: (v if k in TEXT_COLUMNS else float(v)) for k, v in row.items()
                                    if v and k not in ("config",)}
    return table


def list_lazy_zoo_configs() -> list:
    """The LazyConfig (``.py``) models the installed detectron2 ships (``new_baselines``)."""
    root = zoo_configs_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                  if "common" not in p.parts and p.name != "__init__.py" and p.parent != root)


@lru_cache(maxsize=1)
def zoo_catalogue() -> tuple:
    """Every config the installed detectron2 ships (yaml and LazyConfig, base files excluded),
    as ``ZooModel`` rows, in the order of ``list_zoo_configs`` then the LazyConfigs."""
    from detectron2.model_zoo.model_zoo import _ModelZooUrls

    numbers = published_numbers()
    models = []
    for config in list_zoo_configs() + list_lazy_zoo_configs():
        url = _ModelZooUrls.query(config)
        published = numbers.get(config)
        twin = numbers.get(config[: -len(".py")] + ".yaml", {}) if config.endswith(".py") else {}
        if published is None and twin.get("checkpoint_url") == url:
            published = twin  # a LazyConfig twin of a yaml config, sharing its checkpoint
        models.append(ZooModel(config=config, group=config.split("/")[0], task=task_of(config),
                               checkpoint_url=url, numbers=dict(published or {})))
    return tuple(models)


def find_zoo_models(text: str = "", task=None, group=None, sort_by: str = "name",
                    published_only: bool = False) -> list:
    """The catalogue filtered and sorted as the picker shows it.

    ``text`` matches any part of the config name (case-insensitive); ``task`` one of ``TASKS``;
    ``group`` a folder such as ``"COCO-InstanceSegmentation"``; ``sort_by`` a label of
    ``SORT_KEYS`` (models without that number go last); ``published_only`` keeps models with
    a published checkpoint.
    """
    keys = {label: (column, larger) for label, column, larger in SORT_KEYS}
    if sort_by not in keys:
        raise D2nbError(f"sort_by={sort_by!r} is not a column of the model-zoo table",
                        f"pass one of {', '.join(map(repr, keys))}")
    column, larger = keys[sort_by]
    models = [m for m in zoo_catalogue()
              if text.lower() in m.config.lower() and (task in (None, "", "all") or m.task == task)
              and (group in (None, "", "all") or m.group == group)
              and (m.checkpoint_url or not published_only)]
    if column == "config":
        return sorted(models, key=lambda m: m.config)
    with_number = [m for m in models if m.number(column) is not None]
    without = [m for m in models if m.number(column) is None]
    return sorted(with_number, key=lambda m: m.number(column), reverse=larger) + without


# --------------------------------------------------------------------------- choosing a model
# What the predictor runs: a model-zoo config with its checkpoint, or a training run's folder.

RUNS_DIR = "runs"  # where 03_train writes by default (its output_dir "runs/train")
CLASS_NAMES_FILE = "class_names.json"  # read from a run's folder when present


@dataclass
class ModelChoice:
    """A model to run: ``config`` (an absolute yaml or ``.py`` path), ``weights`` (a path, a
    URL, "" for random weights, ``None`` for the yaml's own ``MODEL.WEIGHTS``) and, for a training run, its ``class_names`` (``None``:
    the names of the config's training dataset, as detectron2 registered them)."""

    config: str
    weights: str | None
    label: str
    class_names: list | None = None
    zoo_name: str | None = None
    output_dir: str | None = None


def is_training_run(folder) -> bool:
    """True for a folder holding a run's ``config.yaml`` and a checkpoint."""
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and ((folder / "model_final.pth").is_file()
                                                    or (folder / "last_checkpoint").is_file())


def find_training_runs(root=RUNS_DIR) -> list:
    """Training output folders under ``root`` (two levels deep), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [root] + [p for p in root.glob("*") if p.is_dir()] + [p for p in root.glob("*/*") if p.is_dir()]
    runs = [p for p in folders if is_training_run(p)]
    return sorted(runs, key=lambda p: (p / "config.yaml").stat().st_mtime, reverse=True)


def run_weights(folder) -> str:
    """``model_final.pth`` of a run, else the checkpoint its ``last_checkpoint`` names."""
    folder = Path(folder)
    if (folder / "model_final.pth").is_file():
        return str((folder / "model_final.pth").resolve())
    last = folder / "last_checkpoint"
    if last.is_file() and (folder / last.read_text().strip()).is_file():
        return str((folder / last.read_text().strip()).resolve())
    raise D2nbError(f"training folder {str(folder)!r} holds no checkpoint (model_final.pth or last_checkpoint)",
                    "train until a checkpoint is saved, or pass weights= a .pth path")


def run_class_names(config_yaml) -> list | None:
    """The class names a training run's model predicts, restored in a fresh kernel.

    In order: ``class_names.json`` beside ``config.yaml``; the training dataset's
    ``thing_classes`` if that name is registered in this process (detectron2's builtin
    datasets always are); d2nb's synthetic shapes. ``None`` when none of these knows them.
    """
    folder = Path(config_yaml).parent
    if (folder / CLASS_NAMES_FILE).is_file():
        return list(json.loads((folder / CLASS_NAMES_FILE).read_text()))
    return dataset_class_names(_training_dataset(config_yaml))


def dataset_class_names(name) -> list | None:
    """``thing_classes`` of a registered dataset, or of d2nb's synthetic shapes by name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from d2nb.data import CLASS_NAMES, SYNTHETIC_TRAIN, SYNTHETIC_VAL

    if name and name in DatasetCatalog.list():
        names = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if names:
            return list(names)
    return list(CLASS_NAMES) if name in (SYNTHETIC_TRAIN, SYNTHETIC_VAL) else None


def _training_dataset(config_yaml):
    import yaml

    try:
        train = (yaml.safe_load(Path(config_yaml).read_text()) or {}).get("DATASETS", {}).get("TRAIN")
    except yaml.YAMLError:
        return None
    return train[0] if isinstance(train, (list, tuple)) and train else None


def run_choice(folder, weights=None) -> ModelChoice:
    """A training output_dir (from 03_train) as a model choice, class names restored."""
    folder = Path(folder).expanduser()
    if not (folder / "config.yaml").is_file():
        raise D2nbError(f"{str(folder)!r} is not a training output folder: it has no config.yaml",
                        "pass the output_dir that 03_train or `d2nb train` wrote")
    config = str((folder / "config.yaml").resolve())
    weights = resolve_weights(weights, None) if weights not in (None, "") else run_weights(folder)
    names = run_class_names(config)
    return ModelChoice(config, weights, f"run: {folder}", names, None, str(folder))


def zoo_choice(zoo_name: str, weights=None) -> ModelChoice:
    """A model-zoo config (yaml or LazyConfig ``.py``) with its published checkpoint."""
    path = zoo_configs_dir() / zoo_name
    if not path.is_file():
        resolve_config(zoo_name)  # raises with the closest names
    resolved = resolve_weights(weights, zoo_name) if weights is not None else checkpoint_url(zoo_name)
    return ModelChoice(str(path), resolved or "", zoo_name, None, zoo_name)


def resolve_model(config=None, weights=None, runs_root=RUNS_DIR) -> ModelChoice:
    """Turn the notebook's ``config`` and ``weights`` parameters into a ``ModelChoice``.

    ``config``: ``None`` (the newest run under ``runs_root``, else Mask R-CNN R-50 FPN 3x from
    the model zoo), a training output folder, a run's ``config.yaml``, a model-zoo name
    (``.yaml`` or ``.py``), a d2nb recipe, or any yaml path. ``weights``: ``None`` (the run's
    ``model_final.pth``, the zoo checkpoint, or the yaml's own ``MODEL.WEIGHTS``), a path, a
    URL, ``"zoo"``, or ``"none"`` for random weights (for timing, not for predictions).
    """
    if config in (None, ""):
        runs = find_training_runs(runs_root)
        return run_choice(runs[0], weights) if runs else zoo_choice(GPU_DEFAULT, weights)
    config = str(config)
    if Path(config).expanduser().is_dir():
        return run_choice(config, weights)
    if Path(config).name == "config.yaml" and is_training_run(Path(config).expanduser().parent):
        return run_choice(Path(config).expanduser().parent, weights)
    if config.endswith(".py") and (zoo_configs_dir() / config).is_file():
        return zoo_choice(config, weights)
    path, zoo_name = resolve_config(config)
    if zoo_name:
        return zoo_choice(zoo_name, weights)
    names = run_class_names(path) if Path(path).name == "config.yaml" else None
    # weights None: the yaml's own MODEL.WEIGHTS, read when the model is built
    return ModelChoice(path, resolve_weights(weights, None), Path(path).name, names)

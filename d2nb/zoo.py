"""The model-zoo catalogue: which configs exist, their checkpoints, and resolving a choice.

A ``config`` given by a user is one of:

- a d2nb recipe name, such as ``"mask_rcnn_R_18_FPN_cpu.yaml"`` (files in ``d2nb/configs``);
- a model-zoo name, such as ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``;
- a path to a yaml file (a detectron2 config, or the ``config.yaml`` a training run wrote).

``weights`` is ``"none"`` (train from scratch), ``"zoo"`` (the model-zoo checkpoint of the
config), a model-zoo config name (its checkpoint), a local ``.pth``/``.pkl`` path, or a URL.
"""

from __future__ import annotations

import difflib
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
    close = difflib.get_close_matches(config, known, n=3, cutoff=0.5)
    if not close:  # names like "mask_rcnn_R_50_FPN_3x" without their folder
        close = [k for k in known if Path(config).stem and Path(config).stem in k][:3]
    raise D2nbError(
        f"config {config!r} is not a d2nb recipe, a model-zoo config of the installed "
        "detectron2, nor an existing yaml file"
        + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""),
        "pass a model-zoo name such as 'COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml' "
        f"(d2nb.zoo.list_zoo_configs() lists {len(known)} names) or the path of a yaml file")


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

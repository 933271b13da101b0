"""The settings a user passes to training, and their checks: ``TrainSettings`` in, one
``check_settings`` call, ``CheckedSettings`` out.

``TrainSettings`` is the one source of truth for the training parameters: the notebook's
``parameters`` cell, the ``d2nb train`` command line and the tests all pass their values
through it, and ``None`` always means "the default described here".

papermill turns ``-p max_iter 100`` into a number but ``-p gpus two`` or ``-r max_iter 100``
into text, and a hand-edited parameters cell may hold ``resume = "False"``. ``check_settings``
turns whole-number text into numbers and ``"true"``/``"false"`` into booleans, resolves
``gpus`` to the GPUs this machine has, and refuses anything else with a ``D2nbError`` that
names the parameter, the value and an example.

    settings = check_settings(TrainSettings(max_iter="200", resume="no"))
    settings.max_iter, settings.resume      # (200, False)

Values are checked once, where they enter (``train``, ``build_config``, ``evaluate_only``);
every later step, the launched processes included, takes the ``CheckedSettings`` as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from d2nb.data import SyntheticSpec
from d2nb.devices import resolve_gpus
from d2nb.errors import D2nbError
from d2nb.parameters import config_options, flag, non_negative_number, positive_number, whole_number
from d2nb.train.resume import resume_choice

# TrainSettings fields by kind: (name, smallest value allowed)
WHOLE_NUMBERS = (("max_iter", 1), ("ims_per_batch", 1), ("checkpoint_period", 1), ("eval_period", 0),
                 ("num_workers", 0), ("cpu_processes", 1), ("num_machines", 1), ("machine_rank", 0),
                 ("seed", -(2**31)), ("val_loss_period", 0), ("val_loss_images", 1))
FLAGS = ("amp", "fast", "monitor", "keep_placeholder")
PATHS = ("output_dir",)


@dataclass
class TrainSettings:
    """Everything a training run needs. Defaults (``None``) are resolved by ``build_config``.

    - ``gpus``: GPUs per machine; ``None`` = every GPU there is (0 without CUDA); 0 = CPU.
    - ``output_dir``: where checkpoints, logs, metrics and evaluation results go.
    - ``dataset``: ``"synthetic"``, a registered name, a COCO json, or a Roboflow export folder
      (see ``d2nb.data.resolve_dataset``); ``val_dataset`` and ``image_root`` refine it.
    - ``config``: a model-zoo name, a d2nb recipe or a yaml path; ``None`` = the small recipe
      for the synthetic data, ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`` otherwise.
    - ``weights``: ``"none"``, ``"zoo"``, a path or a URL; ``None`` = the model-zoo
      checkpoint for model-zoo configs, the config's own ``MODEL.WEIGHTS`` otherwise.
    - ``max_iter``, ``ims_per_batch``: ``None`` = the recipe's values; for model-zoo configs
      1000 iterations and 2 images per GPU (a fine-tuning schedule, not COCO's 90k).
    - ``base_lr``: ``None`` = 0.02 x ims_per_batch / 16, the linear scaling rule (for the
      AdamW CPU recipe, its own reference lr scaled by the same rule; see ``default_base_lr``).
    - ``resume``: ``"auto"`` continues ``output_dir``'s ``last_checkpoint`` when it is of the
      same config and dataset (else a ``D2nbError`` says what differs), ``True`` continues it
      whatever the config, ``False`` starts again (see ``d2nb.train.resume``).
    - ``checkpoint_minutes``: also save a checkpoint every N minutes (0: only every
      ``checkpoint_period`` iterations), so a disconnect loses at most N minutes.
    - ``amp``: mixed precision; ``fast``: GPU speed-ups that keep the model (AMP, TF32,
      batched heads, more data-loading workers, a step that never waits for the GPU; see
      ``apply_fast_mode``).
    - ``opts``: ``["KEY", "VALUE", ...]`` as train_net.py takes them; applied last, so they win.
    - ``synthetic_size``: image size of the synthetic dataset (default 128 px).
    - ``val_loss_period``: every so many iterations, the losses on ``val_loss_images`` pictures
      of the val split (``validation/total_loss`` in metrics.json and the monitor; the whole
      split at every ``eval_period``); ``None`` = ten times a run (``max_iter // 10``), 0 = never.
      It leaves training as it was: same loss curve (``d2nb.train.validation``).
    """

    gpus: int | None = None
    output_dir: str = "runs/train"
    dataset: str = "synthetic"
    val_dataset: str | None = None
    image_root: str | None = None
    config: str | None = None
    weights: str | None = None
    max_iter: int | None = None
    ims_per_batch: int | None = None
    base_lr: float | None = None
    resume: bool | str = "auto"
    amp: bool = False
    fast: bool = False
    eval_period: int = 0
    checkpoint_period: int | None = None
    checkpoint_minutes: float = 10
    seed: int = 0
    num_workers: int | None = None
    cpu_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    opts: list = field(default_factory=list)
    monitor: bool = True
    synthetic_size: int | list | None = None
    keep_placeholder: bool = False
    val_loss_period: int | None = None
    val_loss_images: int = 16
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)

    def synthetic_spec(self) -> SyntheticSpec:
        """The synthetic dataset to use: ``synthetic``, resized to ``synthetic_size`` (pixels,
        or ``[height, width]``) when given, e.g. ``[480, 640]`` for full-resolution GPU runs."""
        if not self.synthetic_size:
            return self.synthetic
        size = self.synthetic_size
        height, width = (size, size) if isinstance(size, int) else size
        return replace(self.synthetic, height=int(height), width=int(width))

    @classmethod
    def from_values(cls, values: dict) -> "TrainSettings":
        """Settings from a mapping holding some of the field names, e.g. a notebook's
        ``globals()`` after its parameters cell; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class CheckedSettings(TrainSettings):
    """``TrainSettings`` as ``check_settings`` returns them: each whole number an ``int``, each
    flag a ``bool``, ``resume`` ``True``, ``False`` or ``"auto"``, ``base_lr`` a ``float`` or
    ``None``, ``opts`` a list of strings, and ``gpus`` the number of GPUs the run uses (0: the
    CPU). ``build_config``, ``train`` and the launched processes take them without checking
    again; make them with ``check_settings``."""

    gpus: int = 0


def check_settings(settings: TrainSettings) -> CheckedSettings:
    """``settings`` with every parameter of a checkable kind turned into its type and ``gpus``
    resolved; ``D2nbError`` naming the first that cannot be. ``CheckedSettings`` are returned
    as they are: a value is checked once."""
    if isinstance(settings, CheckedSettings):
        return settings
    changes = {name: whole_number(name, getattr(settings, name), minimum) for name, minimum in WHOLE_NUMBERS}
    changes.update({name: flag(name, getattr(settings, name)) for name in FLAGS})
    changes["base_lr"] = positive_number("base_lr", settings.base_lr)
    changes["resume"] = resume_choice(settings.resume)
    changes["checkpoint_minutes"] = non_negative_number("checkpoint_minutes", settings.checkpoint_minutes)
    changes["opts"] = config_options(settings.opts)
    for name in PATHS:
        value = getattr(settings, name)
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise D2nbError(f"{name} must be a folder path, got {value!r}", f"pass e.g. {name}='runs/train'")
    if changes["machine_rank"] >= changes["num_machines"]:
        raise D2nbError(f"machine_rank={changes['machine_rank']} must be smaller than num_machines="
                        f"{changes['num_machines']}", "number the machines 0, 1, ... num_machines - 1")
    changes["gpus"] = resolve_gpus(settings.gpus)
    values = {f.name: getattr(settings, f.name) for f in fields(TrainSettings)}
    return CheckedSettings(**{**values, **changes})


def training_processes(settings: CheckedSettings) -> int:
    """Processes on this machine: one per GPU, or ``cpu_processes`` on the CPU."""
    return settings.gpus or settings.cpu_processes

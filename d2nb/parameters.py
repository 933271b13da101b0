"""Parameters as notebooks and command lines deliver them, checked before anything runs.

papermill turns ``-p max_iter 100`` into a number but ``-p gpus two`` or ``-r max_iter 100``
into text, and a hand-edited parameters cell may hold ``resume = "False"``. ``check_settings``
turns whole-number text into numbers and ``"true"``/``"false"`` into booleans, and refuses
anything else with a ``D2nbError`` that names the parameter, the value and an example.

    settings = check_settings(TrainSettings(max_iter="200", resume="no"))
    settings.max_iter, settings.resume      # (200, False)
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from d2nb.errors import D2nbError

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off", "")

# TrainSettings fields by kind: (name, smallest value allowed)
WHOLE_NUMBERS = (("max_iter", 1), ("ims_per_batch", 1), ("checkpoint_period", 1), ("eval_period", 0),
                 ("num_workers", 0), ("cpu_processes", 1), ("num_machines", 1), ("machine_rank", 0),
                 ("seed", -(2**31)))
FLAGS = ("resume", "amp", "fast", "monitor", "keep_placeholder")
PATHS = ("output_dir",)


EXAMPLES = {"max_iter": 1000, "ims_per_batch": 4, "checkpoint_period": 500, "eval_period": 500,
            "num_workers": 2, "cpu_processes": 2, "num_machines": 2, "machine_rank": 1, "seed": 0}


def _example(name) -> str:
    value = EXAMPLES.get(name, 100)
    return f"pass e.g. {name}={value} ('-p {name} {value}' to papermill)"


def whole_number(name: str, value, minimum: int = 1):
    """``value`` as an int (``None`` stays ``None``); whole-number text and floats accepted."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise D2nbError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})", _example(name))
    if value < minimum:
        raise D2nbError(f"{name} must be at least {minimum}, got {value}", _example(name))
    return value


def positive_number(name: str, value):
    """``value`` as a float > 0 (``None`` stays ``None``); numeric text accepted."""
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
        raise D2nbError(f"{name} must be a positive number, got {value!r}",
                        f"pass e.g. {name}=0.001 ('-p {name} 0.001' to papermill), or leave it unset for the default")
    return float(number)


def flag(name: str, value) -> bool:
    """``value`` as a bool; ``"true"``/``"false"``, ``"yes"``/``"no"``, 1/0 accepted."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise D2nbError(f"{name} must be True or False, got {value!r}",
                    f"pass {name}=True or {name}=False ('-p {name} True' to papermill)")


def config_options(value) -> list:
    """``opts`` as a list of ``KEY VALUE`` strings; one string is split at spaces."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise D2nbError(f"opts must be a list of KEY VALUE strings, got {value!r}",
                    "pass e.g. opts=['SOLVER.BASE_LR', '0.001'], or to papermill: "
                    "-y \"opts: [SOLVER.BASE_LR, '0.001']\"")


def check_settings(settings):
    """A copy of ``settings`` (a ``TrainSettings``) with every parameter of a checkable kind
    turned into its type; ``D2nbError`` naming the first that cannot be."""
    changes = {name: whole_number(name, getattr(settings, name), minimum) for name, minimum in WHOLE_NUMBERS}
    changes.update({name: flag(name, getattr(settings, name)) for name in FLAGS})
    changes["base_lr"] = positive_number("base_lr", settings.base_lr)
    changes["opts"] = config_options(settings.opts)
    for name in PATHS:
        value = getattr(settings, name)
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise D2nbError(f"{name} must be a folder path, got {value!r}", f"pass e.g. {name}='runs/train'")
    if changes["machine_rank"] >= changes["num_machines"]:
        raise D2nbError(f"machine_rank={changes['machine_rank']} must be smaller than num_machines="
                        f"{changes['num_machines']}", "number the machines 0, 1, ... num_machines - 1")
    return replace(settings, **changes)

"""Parameter values as notebooks and command lines deliver them, turned into their types.

papermill turns ``-p max_iter 100`` into a number but ``-r max_iter 100`` into text, and a
hand-edited parameters cell may hold ``resume = "False"``. Each function here takes one such
value and returns it as its type (whole-number text as an int, ``"true"``/``"false"`` as a
bool), or raises a ``D2nbError`` that names the parameter, the value and an example.

    whole_number("max_iter", "200"), flag("resume", "no")      # (200, False)

``d2nb.train.settings.check_settings`` applies them to every training parameter, and
``d2nb.evaluate`` to its own.
"""

from __future__ import annotations

import math

from d2nb.errors import D2nbError

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off", "")

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


def _number(value):
    """``value`` as a finite float (numeric text accepted), or ``None`` when it is not one."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        return None
    return float(number)


def positive_number(name: str, value):
    """``value`` as a float > 0 (``None`` stays ``None``); numeric text accepted."""
    if value is None:
        return None
    number = _number(value)
    if number is None or number <= 0:
        raise D2nbError(f"{name} must be a positive number, got {value!r}",
                        f"pass e.g. {name}=0.001 ('-p {name} 0.001' to papermill), or leave it unset for the default")
    return number


def non_negative_number(name: str, value, example: float = 10):
    """``value`` as a float >= 0 (0 usually means "off"); numeric text accepted."""
    number = _number(value)
    if number is None or number < 0:
        raise D2nbError(f"{name} must be a number of at least 0, got {value!r}",
                        f"pass e.g. {name}={example:g} ('-p {name} {example:g}' to papermill), or {name}=0 for none")
    return number


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

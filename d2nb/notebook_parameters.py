"""A notebook's parameters cell is the one list of its parameter names; nothing else is accepted.

papermill injects ``-p NAME VALUE`` as a cell of assignments right after the cell tagged
``parameters``, and only warns ("Passed unknown parameter") when a name is not there, so
``-p source X`` on a notebook whose parameter is ``dataset`` used to run on the default data.
The first cell after the parameters calls

    check_parameters("02_dataset_prep")

which reads the two cells from the kernel's input history and stops the notebook with a
``D2nbError`` that names the unknown parameter, the closest known one and the whole list.
Run interactively (no injected cell), it does nothing.

``parameter_names(notebook_path)`` reads the same names from a notebook file, for the CLI, the
README and the tests.
"""

from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path

from d2nb.errors import D2nbError

PAPERMILL_HEADER = "# Parameters"  # the first line of the cell papermill injects

# Words people bring from other tools, and the name that means the same here (when the
# notebook has it). difflib finds misspellings; this finds synonyms.
SYNONYMS = {
    "source": ("dataset", "inputs", "sample_images"), "data": ("dataset",), "dataset_dir": ("dataset",), "path": ("dataset", "inputs"),
    "dataset_name": ("name",), "input": ("inputs",), "images": ("inputs", "sample_images"),
    "output": ("output_dir", "output"), "out": ("output_dir", "output"), "output_dir": ("output",),
    "outdir": ("output_dir", "output"),
    "threshold": ("confidence_threshold", "score_threshold"), "conf": ("confidence_threshold", "score_threshold"),
    "score_threshold": ("confidence_threshold",), "confidence_threshold": ("score_threshold",),
    "lr": ("base_lr",), "learning_rate": ("base_lr",), "iters": ("max_iter",), "iterations": ("max_iter",),
    "epochs": ("max_iter",), "batch_size": ("ims_per_batch",), "num_gpus": ("gpus",), "gpu": ("gpus",),
    "device": ("gpus",), "config_file": ("config",), "model": ("config", "weights"), "checkpoint": ("weights",),
    "val": ("val_dataset",), "valid_dataset": ("val_dataset",), "root": ("image_root",),
}


def assigned_names(source: str) -> list:
    """The names a cell assigns at top level, in order (``a = b = 1`` gives both)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name) and leaf.id not in names:
                    names.append(leaf.id)
    return names


def parameter_names(notebook_path) -> list:
    """The names the ``parameters``-tagged cell of a notebook file assigns."""
    notebook = json.loads(Path(notebook_path).read_text())
    for cell in notebook["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            return assigned_names(source)
    raise D2nbError(f"{notebook_path} has no cell tagged 'parameters'",
                    "tag the notebook's parameters cell 'parameters' (View > Cell toolbar > Tags)")


def suggestion(unknown: str, known: list) -> str | None:
    """The known name an unknown one most likely meant, or None."""
    for candidate in SYNONYMS.get(unknown.lower(), ()):
        if candidate in known:
            return candidate
    close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(unknown.lower().replace("-", "_"), known, n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_parameters_error(notebook: str, unknown: list, known: list) -> D2nbError:
    first = unknown[0]
    guess = suggestion(first, known)
    others = f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""
    return D2nbError(f"unknown parameter {first!r}{others} for {notebook}",
                     (f"did you mean {guess!r}? " if guess else "")
                     + f"The parameters are: {', '.join(known)}")


def check_names(notebook: str, given, known: list) -> None:
    """Raise ``D2nbError`` when a name in ``given`` is not in ``known``."""
    unknown = [name for name in given if name not in known]
    if unknown:
        raise unknown_parameters_error(notebook, unknown, list(known))


def check_parameters(notebook: str, history=None) -> None:
    """Stop the notebook when papermill injected a parameter its parameters cell does not
    declare. ``history`` is the kernel's list of executed cell sources (IPython's ``In``),
    read from the running kernel when left out."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        history = shell.user_ns.get("In", []) if shell is not None else []
    history = list(history)
    injected = max((i for i, source in enumerate(history)
                    if isinstance(source, str) and source.lstrip().startswith(PAPERMILL_HEADER)), default=None)
    if injected is None or injected == 0:
        return  # run by hand: the parameters cell is the only source of values
    declared = assigned_names(history[injected - 1])
    check_names(notebook, assigned_names(history[injected]), declared)

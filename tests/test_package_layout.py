"""The package's layout: stages below the widgets and CLI, no import cycle, modules one can read,
and the training settings checked once, where they enter.

The import graph is read from the source with ``ast``, so nothing is imported. An import
inside a function counts as much as one at the top of a module: it is lazy, but the two
modules still need each other. Importing ``d2nb.predict.types`` also runs
``d2nb/predict/__init__.py``, so an import of a submodule is an import of every package above
it too, except the packages the importing module is itself inside (those are already
running).
"""

import ast
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import d2nb

PACKAGE = Path(d2nb.__file__).parent
MAX_LINES = 350  # "small enough to read in one sitting"
SMALL_PACKAGES = ("train", "predict")


def module_names() -> dict:
    """``{dotted name: path}`` of every d2nb module (packages by their ``__init__``)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("d2nb",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, modules: dict) -> set:
    """The d2nb modules that importing ``name`` runs, at any depth of its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            # ``from package import submodule`` runs the submodule; any other name is the package's
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules:
                found.add(target)
    for target in list(found):  # a submodule runs the packages above it first
        parts = target.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            if not (name == package or name.startswith(package + ".")):
                found.add(package)
    found.discard(name)
    found.discard("d2nb")  # the root package imports nothing of d2nb's stages
    return found


def import_graph() -> dict:
    modules = module_names()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict) -> list:
    """One import cycle as ``[a, b, ..., a]``, or ``[]``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for following in sorted(graph.get(node, ())):
            if state.get(following) == "open":
                return stack[stack.index(following):] + [following]
            if following not in state:
                cycle = visit(following)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_cycle_through_a_package():
    # draw importing d2nb.predict.types runs d2nb/predict/__init__.py, which imports draw
    graph = {"d2nb.draw": {"d2nb.predict", "d2nb.predict.types"},
             "d2nb.predict": {"d2nb.predict.outputs"}, "d2nb.predict.outputs": {"d2nb.draw"},
             "d2nb.predict.types": set()}
    assert find_cycle(graph) == ["d2nb.draw", "d2nb.predict", "d2nb.predict.outputs", "d2nb.draw"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_d2nb_module_imports_itself_back():
    graph = import_graph()
    assert "d2nb.train" in graph and "d2nb.predict" in graph and "d2nb.draw" in graph
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_drawing_is_below_prediction():
    graph = import_graph()
    assert not {m for m in graph["d2nb.draw"] if m == "d2nb.predict" or m.startswith("d2nb.predict.")}
    code = ("import sys, d2nb.draw; "
            "print(sorted(m for m in sys.modules if m == 'd2nb.predict' or m.startswith('d2nb.predict.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.strip()
    assert loaded == "[]"


def test_stages_train_and_predict_are_packages_of_small_modules():
    long = {}
    for stage in SMALL_PACKAGES:
        folder = PACKAGE / stage
        assert (folder / "__init__.py").is_file(), f"d2nb/{stage}/ is not a package"
        for path in folder.rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(PACKAGE.parent))] = lines
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_settings_are_checked_once_where_they_enter(tmp_path, monkeypatch):
    import d2nb.devices
    import d2nb.train.settings
    from d2nb.data import SyntheticSpec
    from d2nb.errors import D2nbError
    from d2nb.train import TrainSettings, build_config, check_settings, train

    checks = []
    monkeypatch.setattr(d2nb.devices, "available_gpus", lambda: checks.append("gpus") or 0)
    whole_number = d2nb.train.settings.whole_number
    monkeypatch.setattr(d2nb.train.settings, "whole_number",
                        lambda name, *args: checks.append(name) or whole_number(name, *args))
    settings = TrainSettings(gpus="0", output_dir=str(tmp_path / "run"), max_iter="2", ims_per_batch=3,
                             cpu_processes=2, synthetic=SyntheticSpec(num_train=8, num_val=4))
    with pytest.raises(D2nbError, match="not divisible by the 2 training processes"):
        train(settings)  # checked, then the config built from the checked values refuses the batch
    assert sorted(checks) == sorted(["gpus"] + [name for name, _ in d2nb.train.settings.WHOLE_NUMBERS])
    checked = check_settings(settings)
    checks.clear()
    assert check_settings(checked) is checked
    assert build_config(replace(checked, ims_per_batch=4)).SOLVER.MAX_ITER == 2
    assert checks == []

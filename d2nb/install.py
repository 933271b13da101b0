"""Getting detectron2 onto a machine, and making a notebook kernel ready for d2nb.

detectron2 is not on PyPI; users install it from its GitHub repository. ``ensure_detectron2``
does that only when ``import detectron2`` fails (Colab, a fresh virtual environment), at the
commit pinned here, without build isolation so that it compiles against the torch that is
already installed. Where detectron2 is present (or there is no network) it changes nothing.

    python -m d2nb.install          # from a shell
    d2nb.install.setup_notebook()   # first cell of every notebook
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from d2nb.errors import D2nbError

DETECTRON2_REPOSITORY = "https://github.com/facebookresearch/detectron2"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"

# This project's own repository, written here only: pip installs d2nb from it (Colab), and the
# README's "Open in Colab" and Binder badges are built from it (tests/test_readme_links.py).
REPOSITORY_URL = "https://github.com/d2nb/d2nb"
REPOSITORY_BRANCH = "main"


def detectron2_requirement() -> str:
    """The pip requirement for the pinned detectron2 commit."""
    return f"detectron2 @ git+{DETECTRON2_REPOSITORY}.git@{DETECTRON2_COMMIT}"


def d2nb_requirement() -> str:
    """The pip requirement for d2nb from its repository (it is not on PyPI)."""
    return f"d2nb @ git+{REPOSITORY_URL}.git@{REPOSITORY_BRANCH}"


def detectron2_installed() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def ensure_detectron2(run=subprocess.run) -> bool:
    """Install the pinned detectron2 if it cannot be imported; return True if it installed it.

    Raises ``D2nbError`` when pip fails (most often: no network to GitHub, or no compiler).
    """
    if detectron2_installed():
        return False
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", detectron2_requirement()]
    print("detectron2 is not installed; installing it from GitHub (a few minutes):\n  " + " ".join(command))
    completed = run(command)
    if completed.returncode != 0:
        raise D2nbError(
            f"pip could not install detectron2 from {DETECTRON2_REPOSITORY} (exit code {completed.returncode})",
            "check that this machine reaches github.com and has a C++ compiler and torch installed, "
            "or install detectron2 by hand as its INSTALL.md describes, then run this again")
    importlib.invalidate_caches()
    return True


def in_colab() -> bool:
    return "google.colab" in sys.modules


# Warnings that detectron2 and torch print on every run and that a user can do nothing about;
# in a notebook each would show as a red box under the cell.
LIBRARY_NOISE = (
    (DeprecationWarning, r"pkg_resources is deprecated"),
    (UserWarning, r"pkg_resources is deprecated"),
    (FutureWarning, r"`torch\.jit\."),
    (FutureWarning, r".*torch\.cuda\.amp\..* is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),
    (UserWarning, r".*is_fx_tracing"),
    (FutureWarning, r".*is_fx_tracing"),
)


# Loggers that print the same kind of note through logging rather than warnings
# (torch's "is_fx_tracing will return true for both fx.symbolic_trace and torch.export").
NOISY_LOGGERS = ("torch.fx._symbolic_trace",)


def quiet_library_warnings() -> None:
    """Hide the known library warnings above; every other warning still shows."""
    import logging
    import warnings

    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def show_d2nb_errors_in_one_line() -> None:
    """In a kernel, a ``D2nbError`` prints as ``D2nbError: <problem> | Fix: <fix>``: the reason
    and the remedy, not a traceback through d2nb and detectron2. The cell still fails (papermill
    stops there); every other exception keeps its traceback."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def one_line(shell, kind, error, traceback, tb_offset=None):
        text = f"{kind.__name__}: {error.problem}" + (f" | Fix: {error.fix}" if error.fix else "")
        shell._showtraceback(kind, error, [text])

    shell.set_custom_exc((D2nbError,), one_line)


def setup_notebook() -> None:
    """Make a kernel ready: detectron2 present, known library noise hidden, and ipywidgets 8
    rendering in Colab."""
    quiet_library_warnings()
    show_d2nb_errors_in_one_line()
    ensure_detectron2()
    if in_colab():
        from google.colab import output  # noqa: F401  (only exists in Colab)

        output.enable_custom_widget_manager()


def main(argv=None) -> int:
    try:
        installed = ensure_detectron2()
    except D2nbError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    import detectron2

    print(("installed" if installed else "already installed") + f": detectron2 {detectron2.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

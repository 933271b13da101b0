"""A notebook kernel made quiet and readable: known library noise hidden, d2nb errors in one line."""

from __future__ import annotations

from d2nb.errors import D2nbError


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

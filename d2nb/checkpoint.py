"""A checkpointer whose files are complete or absent, never half-written, and whose loads
cannot run code from a file of unknown origin.

detectron2 writes ``model_XXXXXXX.pth`` in place and then ``last_checkpoint``; a process
killed in between (a Colab session reclaimed, a SIGKILL) leaves ``last_checkpoint`` naming
a truncated file that ``resume=True`` then fails on. Here both files are written under a
temporary name and renamed, which POSIX makes atomic; a full disk ends the run with a
message naming the last complete checkpoint, which stays as it was. On Google Drive (a slow,
eventually consistent mount, see ``d2nb.colab``) a file is first written whole to the local
disk, then copied into the destination folder under its temporary name, checked for size and
renamed: the mount never holds a half-written file under a checkpoint's name.

Loading: ``.pth`` files are read with ``torch.load(weights_only=True)`` (tensors and plain
containers only). detectron2's ``.pkl`` files are Python pickles, which can run any code
when loaded: those from detectron2's model zoo load as detectron2 loads them; any other is
loaded only when it holds nothing but arrays and plain containers, with a warning saying so.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer

from d2nb import colab
from d2nb.errors import D2nbError

logger = logging.getLogger("d2nb.checkpoint")

# where detectron2's model zoo publishes checkpoints (and the URL schemes detectron2 maps there)
MODEL_ZOO_SOURCES = ("detectron2://", "catalog://", "https://dl.fbaipublicfiles.com/detectron2/",
                     "https://dl.fbaipublicfiles.com/detectron/")
# what a pickle of arrays (detectron2's .pkl format) may ask for while loading; nothing else
PICKLE_ARRAY_GLOBALS = {
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                         (f"{core}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
     ("_codecs", "encode"), ("builtins", "bytearray")}  # how protocol-2 and -5 pickles rebuild bytes
_TEMPORARY_SUFFIX = ".tmp"
_UMASK = os.umask(0)  # read once, at import (os has no getter): files get the mode an open() would give
os.umask(_UMASK)


def is_model_zoo_source(weights) -> bool:
    """True for a checkpoint named by its detectron2 model-zoo URL (``detectron2://...``,
    ``https://dl.fbaipublicfiles.com/detectron2/...``)."""
    return isinstance(weights, str) and weights.startswith(MODEL_ZOO_SOURCES)


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(path) or "."
    if colab.on_drive(folder):
        _staged_write(path, write)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TEMPORARY_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # as an ordinary write would make it (mkstemp's is private)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _staged_write(path: str, write) -> None:
    """Write into a local temporary file, copy it into ``path``'s folder under a temporary
    name, check that the copy is whole, then rename it to ``path``."""
    folder = os.path.dirname(path) or "."
    with tempfile.TemporaryFile(prefix="d2nb-checkpoint-") as local:  # the local disk: fast, and seen at once
        write(local)
        local.flush()
        size = local.tell()
        local.seek(0)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TEMPORARY_SUFFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(local, f, length=16 * 2**20)
                f.flush()
                os.fsync(f.fileno())
                copied = os.fstat(f.fileno()).st_size
            if copied != size:
                raise OSError(errno.EIO, f"{copied} of {size} bytes reached {folder}")
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
            if os.path.getsize(path) != size:  # what the mount shows now is what last_checkpoint will name
                raise OSError(errno.EIO, f"{path} shows {os.path.getsize(path)} of {size} bytes after renaming")
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def remove_partial_checkpoints(folder) -> list:
    """Delete what a killed process left half-written in ``folder`` (``.model_*.pth.*.tmp``,
    ``.last_checkpoint.*.tmp``); return their names. Complete files are never touched."""
    removed = []
    for path in Path(folder).glob(f".*{_TEMPORARY_SUFFIX}"):
        if path.name.startswith((".model_", ".last_checkpoint.")) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def write_error(path: str, error: OSError, last_checkpoint: str | None) -> D2nbError:
    """The message for a checkpoint that could not be written (full disk, read-only folder)."""
    folder = os.path.dirname(path) or "."
    kept = (f"; the last complete checkpoint, {os.path.basename(last_checkpoint)}, is intact"
            if last_checkpoint else "")
    resume = (f", then run again with resume=True to continue from {os.path.basename(last_checkpoint)}"
              if last_checkpoint else ", then run again")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        return D2nbError(f"the disk holding {folder!r} is full ({free}): {os.path.basename(path)} could not "
                         f"be saved (nothing half-written is left){kept}",
                         "free space on that disk (old model_*.pth files you no longer need are the largest "
                         f"files there) or pass an output_dir on a larger disk{resume}")
    return D2nbError(f"could not write the checkpoint {path!r} ({error.strerror or error}){kept}",
                     f"make {folder!r} writable, or pass another output_dir{resume}")


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic writes of checkpoints and ``last_checkpoint``,
    and safe loading (see the module's docstring).

    ``load(path, source=...)``: ``source`` is where ``path`` was downloaded from, when
    ``path`` is a local copy; it decides whether a ``.pkl`` comes from the model zoo.
    """

    def __init__(self, model, save_dir="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self._source = None
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            for name in remove_partial_checkpoints(self.save_dir):
                self.logger.info(f"Removed {name}, a checkpoint a stopped process left half-written")

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        try:
            _atomic_write(save_file, lambda f: torch.save(data, f))
            self.tag_last_checkpoint(basename)
        except OSError as error:
            raise write_error(save_file, error, self.get_checkpoint_file() if self.has_checkpoint() else None) from None

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path, *args, source=None, **kwargs):
        self._source = source or path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._source = None

    def _torch_load(self, f):
        return load_torch_file(f)

    def _load_file(self, filename):
        if filename.endswith(".pkl") and not is_model_zoo_source(self._source):
            check_array_pickle(filename, self._source or filename)
        return super()._load_file(filename)


def load_torch_file(path) -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU; ``D2nbError`` for a file that
    holds Python objects besides tensors (loading those could run code)."""
    try:
        return torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as error:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(error))
        detail = f"it asks for {wanted.group(1)} while loading" if wanted else str(error).strip().split(".")[0]
        raise D2nbError(
            f"{str(path)!r} holds Python objects besides tensors and numbers ({detail}); d2nb loads .pth "
            "files with torch.load(weights_only=True), so that opening a checkpoint cannot run code",
            "if you trust where the file comes from, load it yourself with torch.load(path, "
            "weights_only=False), save its weights with torch.save({'model': model_state_dict}, "
            "'weights.pth'), and pass 'weights.pth'") from None
    except (RuntimeError, EOFError, IndexError) as error:  # how torch reports a cut or empty file
        reason = (str(error).split(". ")[0].splitlines() or [type(error).__name__])[0] if os.path.getsize(path) \
            else "0 bytes"
        raise D2nbError(f"{str(path)!r} is not a complete PyTorch checkpoint ({reason})",
                        "save or download it again; a run's earlier model_*.pth files are complete") from None


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in PICKLE_ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check_array_pickle(path, source) -> None:
    """Warn that ``source`` is a pickle from outside detectron2's model zoo, and refuse it
    (``D2nbError``) unless it holds only arrays and plain containers: read it with an
    unpickler that can build nothing else, so that nothing in it runs."""
    logger.warning("%s", D2nbError(
        f"loading {str(source)!r}, a Python pickle (.pkl) from outside detectron2's model zoo: a pickle "
        "can run code when it is loaded, so d2nb reads it only if it holds nothing but arrays",
        "load checkpoints only from sources you trust; a .pth file of tensors needs no such check"))
    try:
        with open(path, "rb") as stream:
            _ArrayOnlyUnpickler(stream, encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise D2nbError(
            f"{str(source)!r} is a pickle from outside detectron2's model zoo that asks to run "
            f"{error} while loading; d2nb loads such a file only when it holds nothing but arrays",
            "if you trust where the file comes from, convert it yourself (pickle.load, then torch.save "
            "of its {'model': {name: tensor}} weights to a .pth) and pass the .pth; otherwise delete it") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as error:
        raise D2nbError(f"{str(source)!r} is not a readable detectron2 .pkl checkpoint ({error})",
                        "download the checkpoint again, or pass a .pth file") from None

"""What the test_reliability_* modules share: file hashes, message checks, tiny runs.

Every case of issue 8 asserts two things: the message names the problem and the fix, and
no file of the user's changed. ``unchanged(folder)`` hashes every file under ``folder``
before and after; ``message_of`` splits a ``D2nbError`` (or the text of one) into its
problem and its fix.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path

from d2nb.data import SyntheticSpec
from d2nb.errors import D2nbError
from d2nb.train import TrainSettings

TINY = SyntheticSpec(num_train=6, num_val=2, seed=3)  # 128 px, as the embedded default


def file_hashes(*folders) -> dict:
    """``{path: sha256}`` of every file under ``folders`` (a missing folder holds none)."""
    hashes = {}
    for folder in map(Path, folders):
        paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        for path in paths:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@contextmanager
def unchanged(*folders):
    """Assert that no file under ``folders`` is added, removed or changed inside the block."""
    before = file_hashes(*folders)
    assert before, f"nothing to watch under {folders}"
    yield
    after = file_hashes(*folders)
    assert after == before, {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
                             "changed": sorted(p for p in before if p in after and after[p] != before[p])}


def message_of(error) -> tuple:
    """``(problem, fix)`` of a ``D2nbError`` or of its text; both must be there."""
    if isinstance(error, D2nbError):
        problem, fix = error.problem, error.fix
    else:
        problem, _, fix = str(error).partition("\nFix: ")
    assert problem and fix, f"a message without its problem or fix: {error!r}"
    return problem, fix


def assert_message(error, problem: list, fix: list) -> str:
    """Every text of ``problem`` is in the problem part, every text of ``fix`` in the fix."""
    said, remedy = message_of(error)
    for text in problem:
        assert text in said, f"{text!r} not in the problem: {said!r}"
    for text in fix:
        assert text in remedy, f"{text!r} not in the fix: {remedy!r}"
    return str(error)


def tiny_settings(output_dir, **overrides) -> TrainSettings:
    """The CPU recipe on 128 px synthetic shapes, one image a step, no evaluation: seconds a run."""
    values = dict(gpus=0, output_dir=str(output_dir), synthetic=TINY, max_iter=4, ims_per_batch=1,
                  checkpoint_period=2, num_workers=0, monitor=False, opts=["DATASETS.TEST", "()"])
    values.update(overrides)
    return TrainSettings(**values)


class CaptureLog(logging.Handler):
    """Collects the records of one logger (d2nb's loggers do not propagate after a run)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        self._level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    @property
    def text(self) -> str:
        return "\n".join(self.messages)

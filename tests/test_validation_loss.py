"""Validation loss during training: logged where metrics.json says, and training untouched.

Two short CPU runs of the recipe on the synthetic data with the same seed, one with a
validation-loss period and one without: the training losses must be the same numbers, and
the first run's metrics.json holds ``validation/total_loss`` (and its terms) at the periods."""

import json

import pytest

from d2nb.train import TrainSettings, train
from d2nb.train.monitor import TrainingCurves
from d2nb.train.validation import written_period

MAX_ITER = 40


def rows(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("validation-loss")
    made = {}
    for name, period in (("with", 20), ("without", 0)):
        output_dir = folder / name
        train(TrainSettings(gpus=0, output_dir=str(output_dir), max_iter=MAX_ITER, checkpoint_period=1000,
                            monitor=False, seed=3, val_loss_period=period, val_loss_images=8))
        made[name] = rows(output_dir)
    return made


def test_validation_loss_is_in_metrics_json_at_the_periods(runs):
    logged = [r for r in runs["with"] if "validation/total_loss" in r]
    assert [r["iteration"] for r in logged] == [19, 39]
    training_terms = {k for r in runs["with"] for k in r if k.startswith("loss_")}
    assert "loss_mask" in training_terms
    for row in logged:
        terms = {k: v for k, v in row.items() if k.startswith("validation/loss_")}
        assert set(terms) == {"validation/" + k for k in training_terms}  # every term the training logs
        assert row["validation/total_loss"] == pytest.approx(sum(terms.values()))
        assert 0 < row["validation/total_loss"] < 20
    assert not [r for r in runs["without"] if any(k.startswith("validation/") for k in r)]


def test_the_training_loss_curve_is_the_same_with_and_without_validation_loss(runs):
    def training(made):
        return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss") or k == "total_loss"}
                for r in made if "total_loss" in r}

    with_validation, without = training(runs["with"]), training(runs["without"])
    assert sorted(with_validation) == sorted(without) == [19, 39]
    assert with_validation == without  # the same numbers, not only close ones


def test_the_monitor_plots_the_validation_total_loss_beside_the_training_loss(runs):
    curves = TrainingCurves(MAX_ITER)
    for row in runs["with"]:
        curves.add(row)
    assert curves.validation_keys() == ["validation/total_loss"]
    assert "val " in curves.status_text()
    labels = [line.get_label() for line in curves.figure().axes[0].lines]
    assert "val total_loss" in labels and "total_loss" in labels
    curves.validation_terms = True
    assert "validation/loss_mask" in curves.validation_keys()


def test_periods_are_rounded_up_to_the_writers_period():
    assert [written_period(p) for p in (0, 1, 20, 21, 130)] == [0, 20, 20, 40, 140]

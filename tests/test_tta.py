"""Test-time augmentation's set-up: sizes that fit the model, and models it cannot run named.
(The augmented evaluation itself runs in tests/test_evaluate_notebook.py.)"""

import argparse

import pytest
from detectron2.config import get_cfg

from d2nb.cli.evaluate import add_parser, settings_from_args
from d2nb.errors import D2nbError
from d2nb.tta import DETECTRON2_SIZES, augmentation_config, check_tta


def test_detectron2s_sizes_are_scaled_to_the_models_test_size_unless_the_config_names_its_own():
    cfg = get_cfg()
    assert tuple(augmentation_config(cfg).TEST.AUG.MIN_SIZES) == DETECTRON2_SIZES  # an 800 px model
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 213
    scaled = augmentation_config(cfg).TEST.AUG
    assert tuple(scaled.MIN_SIZES) == (64, 80, 96, 112, 128, 144, 160, 176, 192)
    assert scaled.MAX_SIZE == 640
    cfg.TEST.AUG.MIN_SIZES = (100, 140)
    assert tuple(augmentation_config(cfg).TEST.AUG.MIN_SIZES) == (100, 140)


@pytest.mark.parametrize("change, message", [
    (("MODEL.KEYPOINT_ON", True), "does not support keypoint models"),
    (("MODEL.META_ARCHITECTURE", "RetinaNet"), "this config is a RetinaNet"),
])
def test_models_tta_cannot_run_are_refused_with_the_fix(change, message):
    cfg = get_cfg()
    cfg.merge_from_list([change[0], str(change[1])])
    with pytest.raises(D2nbError, match=message) as error:
        check_tta(cfg)
    assert "tta=False" in error.value.fix


def test_d2nb_evaluate_takes_tta_and_save_thresholds():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--tta", "--save-thresholds", "best_f1", "--score-threshold", "0.3"])
    assert settings_from_args(args).tta is True
    assert (args.save_thresholds, args.score_threshold) == ("best_f1", 0.3)

"""The multi-process path (detectron2's launch), run as 2 CPU processes over gloo."""

import json

from d2nb.data import SyntheticSpec
from d2nb.train import TrainSettings, train


def test_two_gloo_processes_train_and_evaluate_once(tmp_path):
    result = train(TrainSettings(gpus=0, cpu_processes=2, output_dir=str(tmp_path), max_iter=6,
                                 ims_per_batch=4, num_workers=0, checkpoint_period=100,
                                 synthetic=SyntheticSpec(num_train=16, num_val=6, seed=2)))
    assert result.iteration == 6 and not result.interrupted
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "training_curves.png").is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "in 2 processes" in log
    # evaluation ran across both ranks and produced one table in rank 0's log
    assert log.count("Evaluation results for bbox") == 1
    assert "bbox" in result.metrics
    rows = [json.loads(l) for l in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any("bbox/AP" in r for r in rows)

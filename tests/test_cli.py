"""`d2nb train`: tools/train_net.py's flags running the notebook's code."""

import json
import os
import subprocess
import sys

from d2nb.cli import main


def _d2nb(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "d2nb", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_train_then_eval_only_with_train_net_flags(tmp_path):
    out = tmp_path / "run"
    trained = _d2nb("train", "--config-file", "mask_rcnn_R_18_FPN_cpu.yaml", "--num-gpus", "0",
                    "--num-workers", "0", "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2",
                    "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", str(out))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "bbox: AP" in trained.stdout
    config = (out / "config.yaml").read_text()
    assert "MAX_ITER: 4" in config and "IMS_PER_BATCH: 2" in config

    evaluated = _d2nb("train", "--eval-only", "--num-gpus", "0", "--config-file", str(out / "config.yaml"),
                      "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "segm: AP" in evaluated.stdout
    assert (tmp_path / "eval" / "inference" / "coco_instances_results.json").is_file()


def test_bad_flags_exit_with_a_message_naming_the_fix(capsys):
    assert main(["train", "--num-gpus", "3"]) == 2
    err = capsys.readouterr().err
    assert "gpus=3" in err and "Fix:" in err
    assert main(["train", "--num-gpus", "0", "SOLVER.BASE_LR"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err

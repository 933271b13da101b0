"""`d2nb demo`: detectron2's demo/demo.py flags, and its mistakes answered with the fix."""

from d2nb.cli import main
from d2nb.cli.demo import split_weights


def test_demo_takes_every_flag_of_demo_py(capsys):
    import argparse

    from d2nb.cli import demo

    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    parser = demo.add_parser(sub)
    args = parser.parse_args(["--config-file", "c.yaml", "--input", "a.jpg", "b/*.png", "--output", "out",
                              "--confidence-threshold", "0.7", "--opts", "MODEL.WEIGHTS", "m.pkl",
                              "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.4"])
    assert (args.config_file, args.input, args.output, args.confidence_threshold) == (
        "c.yaml", ["a.jpg", "b/*.png"], "out", 0.7)
    assert parser.parse_args(["--webcam"]).webcam and parser.parse_args(["--video-input", "v.mp4"]).video_input
    assert parser.parse_args([]).confidence_threshold == 0.5  # demo.py's default
    assert split_weights(args.opts) == ("m.pkl", ["MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.4"])
    assert split_weights(["--", "MODEL.WEIGHTS", "m.pkl"], weights="w.pth") == ("w.pth", [])


def test_demo_mistakes_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["demo", "--input", "a.jpg", "--video-input", "v.mp4"]) == 2
    assert "exactly one of --input, --video-input and --webcam" in capsys.readouterr().err
    assert main(["demo", "--input", str(tmp_path / "*.jpg")]) == 2  # checked before any model is built
    assert "matches no file" in capsys.readouterr().err
    assert main(["demo", "--config-file", "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
                 "--weights", "http://127.0.0.1:9/model_final.pkl", "--input", "samples", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "could not download the checkpoint 'http://127.0.0.1:9/model_final.pkl'" in err and "Fix:" in err
    assert main(["demo", "--config-file", "COCO-Detection/retinanet_R_50_FPN_1x.yam", "--input", "samples"]) == 2
    assert "did you mean" in capsys.readouterr().err

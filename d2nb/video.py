"""Videos and cameras: a video file in, an annotated video file out; a local camera's frames.

    predict_video(predictor, "clip.mp4", "runs/inference/clip.mp4", score_threshold=0.5)

Frames are predicted ``batch_size`` at a time, drawn with ``d2nb.draw`` and written at the
input's frame rate, with a progress bar. The browser camera (a snapshot from a notebook) is
``d2nb.widgets.inference.camera_snapshot``; ``camera_frames`` reads a camera attached to
the machine running the kernel, through OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2nb.errors import D2nbError
from d2nb.images import LoadedImage
from d2nb.prediction import DEFAULT_SCORE_THRESHOLD

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


@dataclass
class VideoResult:
    output: str
    frames: int
    fps: float
    detections_per_frame: list


def open_video(path):
    """An opened ``cv2.VideoCapture``; ``D2nbError`` naming the file when it cannot be read."""
    import cv2

    if not Path(path).is_file():
        raise D2nbError(f"video file {str(path)!r} does not exist", "check the path of --video-input / video_input")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened() or not capture.read()[0]:
        raise D2nbError(f"{str(path)!r} is not a video OpenCV can read",
                        "pass an .mp4, .avi, .mkv or .mov file (re-encode others with ffmpeg)")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture


def video_output_path(video_input, output) -> Path:
    """demo.py's rule: an output folder gets the input's name; a file name is used as given."""
    output = Path(output)
    if output.suffix.lower() in VIDEO_CODECS:
        return output
    return output / (Path(video_input).stem + ".mp4")


def predict_video(predictor, video_input, output, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                  batch_size: int = 4, max_frames: int | None = None, progress: bool = True,
                  **draw_options) -> VideoResult:
    """Predict every frame of ``video_input`` and write the drawn frames to ``output`` (a
    video file name, or a folder that gets ``<input name>.mp4``)."""
    import cv2
    from tqdm.auto import tqdm

    capture = open_video(video_input)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    total = min(total, max_frames) if total and max_frames else (total or max_frames)
    path = video_output_path(video_input, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, counts = None, []
    bar = tqdm(total=total, desc=Path(video_input).name, unit="frame", disable=not progress)
    try:
        for frames in _batches(_frames(capture, max_frames), batch_size):
            writer = writer or _open_writer(path, fps, frames[0].shape)
            counts += _write_frames(predictor, frames, writer, len(counts), score_threshold, draw_options)
            bar.update(len(frames))
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
    return VideoResult(str(path), len(counts), fps, counts)


def _write_frames(predictor, frames, writer, first: int, score_threshold, draw_options) -> list:
    from d2nb.draw import draw_predictions

    images = [LoadedImage(f"frame_{first + i:06d}.png", "video", frame) for i, frame in enumerate(frames)]
    counts = []
    for prediction in predictor.predict(images, batch_size=len(images), progress=False):
        writer.write(np.ascontiguousarray(draw_predictions(prediction, score_threshold, **draw_options)[:, :, ::-1]))
        counts.append(len(prediction.kept(score_threshold)))
    return counts


def _open_writer(path: Path, fps: float, shape):
    import cv2

    codec = VIDEO_CODECS.get(path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise D2nbError(f"OpenCV cannot write a {path.suffix} video to {str(path)!r}",
                        "pass an output ending in .mp4 or .avi, in a folder you can write to")
    return writer


def _frames(capture, max_frames=None):
    count = 0
    while max_frames is None or count < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        count += 1
        yield np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB


def _batches(frames, size: int):
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def camera_frames(index: int = 0, max_frames: int | None = None):
    """RGB frames from the machine's camera ``index`` (demo.py's ``--webcam``).

    Raises ``D2nbError`` when there is no such camera (a cloud machine, Colab: use the
    browser snapshot of the notebook instead).
    """
    import cv2

    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise D2nbError(f"no camera at index {index} on this machine",
                        "in a notebook, use the browser camera snapshot; on the command line, "
                        "pass --video-input a video file")
    try:
        yield from _frames(capture, max_frames)
    finally:
        capture.release()


def predict_camera(predictor, output, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                   max_frames: int | None = None, index: int = 0, **draw_options) -> VideoResult:
    """Predict a local camera's frames into a video file until ``max_frames`` or Ctrl-C."""
    path = Path(output) if Path(output).suffix.lower() in VIDEO_CODECS else Path(output) / "webcam.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, counts = None, []
    try:
        for frame in camera_frames(index, max_frames):
            writer = writer or _open_writer(path, 15.0, frame.shape)
            counts += _write_frames(predictor, [frame], writer, len(counts), score_threshold, draw_options)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            writer.release()
    return VideoResult(str(path), len(counts), 15.0, counts)

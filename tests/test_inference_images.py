"""Loading pictures: every kind a user may have, and a clear message for what is no picture."""

import io

import numpy as np
import pytest
from PIL import Image

from d2nb.errors import D2nbError
from d2nb.images import (
    MAX_SIDE, describe_images, expand_inputs, image_from_data_url, load_image, load_images, load_uploads,
    sample_images,
)


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((40, 100, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)  # a red stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(Image.fromarray(wide), tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.ok and loaded.image.shape == (100, 40, 3)  # shown upright: tall
    assert loaded.image[:10, :, 0].mean() > 200 and loaded.image[-10:, :, 0].mean() < 50  # stripe on top


def test_grayscale_palette_rgba_and_16_bit_become_rgb_uint8(tmp_path):
    gray = save(Image.fromarray(np.full((20, 30), 128, np.uint8)), tmp_path / "gray.png")
    palette = save(Image.fromarray(np.full((20, 30, 3), 60, np.uint8)).convert("P"), tmp_path / "palette.gif")
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent black: laid over white
    rgba[:10, :, :] = (0, 0, 255, 255)
    transparent = save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    deep = save(Image.fromarray(np.full((20, 30), 65535, np.uint16)), tmp_path / "deep16.png")
    twelve_bit = save(Image.fromarray(np.full((20, 30), 4095, np.uint16)), tmp_path / "scan12.tif")
    images = {image.name: image for image in load_images([gray, palette, transparent, deep, twelve_bit])}
    for image in images.values():
        assert image.ok, image.error
        assert image.image.dtype == np.uint8 and image.image.shape == (20, 30, 3)
    assert images["gray.png"].image.max() == 128
    assert tuple(images["rgba.png"].image[0, 0]) == (0, 0, 255)
    assert tuple(images["rgba.png"].image[-1, -1]) == (255, 255, 255)
    assert images["deep16.png"].image.min() == 255  # full 16-bit range -> full 8-bit range
    assert images["scan12.tif"].image.min() == 255  # 12-bit data is not shown nearly black


def test_very_large_pictures_are_scaled_down_and_remember_their_size(tmp_path):
    path = save(Image.new("RGB", (MAX_SIDE * 2, 300), (10, 200, 30)), tmp_path / "panorama.jpg")
    loaded = load_image(path)
    assert loaded.ok and max(loaded.image.shape[:2]) == MAX_SIDE
    assert loaded.original_size == (300, MAX_SIDE * 2) and loaded.scale == pytest.approx(0.5)


def test_a_file_that_is_no_picture_names_itself_and_the_rest_still_load(tmp_path):
    good = save(Image.new("RGB", (16, 16), "red"), tmp_path / "good.png")
    (tmp_path / "notes.jpg").write_text("shopping list: eggs, milk")
    truncated = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(truncated.getvalue()[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    images = {i.name: i for i in load_images(str(tmp_path / "*"))}
    assert images["good.png"].ok
    assert "'notes.jpg' is not a picture" in images["notes.jpg"].error and "shopping" in images["notes.jpg"].error
    assert "Fix:" in images["notes.jpg"].error
    assert "'cut.jpg' is damaged or truncated" in images["cut.jpg"].error
    assert "'empty.png' is empty" in images["empty.png"].error
    report = describe_images(list(images.values()))
    assert "1 of 4 pictures loaded" in report and "skip  notes.jpg" in report


def test_inputs_take_paths_globs_folders_lists_and_the_samples(tmp_path):
    for n in range(3):
        save(Image.new("RGB", (8, 8)), tmp_path / f"{n}.png")
    (tmp_path / "readme.txt").write_text("not listed from a folder")
    assert len(expand_inputs(str(tmp_path / "*.png"))) == 3
    assert len(expand_inputs(tmp_path)) == 3  # a folder: its pictures only
    assert expand_inputs([str(tmp_path / "0.png"), str(tmp_path / "1.png")]) == [
        str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert expand_inputs("samples") == sample_images() and len(sample_images()) >= 4
    assert all(image.ok for image in load_images("samples"))
    with pytest.raises(D2nbError, match="matches no file"):
        expand_inputs(str(tmp_path / "*.jpeg"))
    with pytest.raises(D2nbError, match="not a file, a folder"):
        expand_inputs(str(tmp_path / "missing.png"))


def test_a_url_that_cannot_be_downloaded_is_a_clear_per_file_error():
    (image,) = load_images(["http://127.0.0.1:9/cat.jpg"])  # nothing listens on port 9
    assert not image.ok and image.name == "cat.jpg"
    assert "could not download 'http://127.0.0.1:9/cat.jpg'" in image.error and "online" in image.error


def test_uploads_and_camera_snapshots_decode_from_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), "blue").save(buffer, "PNG")
    uploads = [{"name": "a.png", "type": "image/png", "content": memoryview(buffer.getvalue())},
               ("b.jpg", b"<html>not a picture</html>")]
    good, bad = load_uploads(uploads)
    assert good.ok and good.image.shape == (10, 12, 3) and good.source == "upload:a.png"
    assert not bad.ok and "'b.jpg' is not a picture" in bad.error
    import base64
    snapshot = image_from_data_url("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    assert snapshot.ok and snapshot.image.shape == (10, 12, 3)
    assert not image_from_data_url("data:text/plain,hello").ok

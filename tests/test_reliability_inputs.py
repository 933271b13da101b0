"""Issue 8, bad input: uploads and paths. Each case gets a message naming the file, the
problem and the fix; the other pictures still load; no file of the user's changes."""

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from d2nb.errors import D2nbError
from d2nb.images import MAX_SIDE, describe_images, expand_inputs, load_image, load_images, load_uploads
from reliability_support import assert_message, unchanged

HUGE = 20000


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(side: int) -> bytes:
    """A real side x side black-and-white PNG, written row by row (a few hundred kB)."""
    packer = zlib.compressobj(1)
    row = b"\x00" + b"\x55" * ((side + 7) // 8)  # filter byte, then 1-bit pixels
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def encoded(image: Image.Image, file_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """The kind of folder a user points the notebook at: a picture and every kind of mistake."""
    folder = tmp_path_factory.mktemp("photos")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpeg, png = encoded(Image.fromarray(noise), "JPEG"), encoded(Image.fromarray(noise), "PNG")
    (folder / "good.png").write_bytes(png)
    (folder / "notes.jpg").write_text("shopping list: eggs, milk")
    (folder / "report.png").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj")
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "cut.png").write_bytes(png[:40])  # the signature and part of the header
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(huge_png(HUGE))
    ok, huge_jpeg = cv2.imencode(".jpg", np.full((HUGE, HUGE), 128, np.uint8))
    (folder / "huge.jpg").write_bytes(huge_jpeg.tobytes())
    return folder


def loaded(user_folder, name):
    with unchanged(user_folder):
        return load_image(user_folder / name)


def test_a_text_file_named_jpg_is_not_a_picture(user_folder):
    image = loaded(user_folder, "notes.jpg")
    assert not image.ok
    assert_message(image.error, ["'notes.jpg' is not a picture", "it holds text: 'shopping list"],
                   ["pass JPEG, PNG, TIFF, BMP or WebP files"])


def test_a_pdf_named_png_says_what_it_is(user_folder):
    image = loaded(user_folder, "report.png")
    assert_message(image.error, ["'report.png' is not a picture (it is a PDF document)"], ["pass JPEG, PNG"])


def test_a_truncated_jpeg_is_damaged(user_folder):
    image = loaded(user_folder, "cut.jpg")
    assert_message(image.error, ["'cut.jpg' is damaged or truncated", "image file is truncated"],
                   ["export or download the picture again"])


def test_a_png_cut_inside_its_header_is_damaged_not_a_non_picture(user_folder):
    image = loaded(user_folder, "cut.png")
    assert_message(image.error, ["'cut.png' is damaged or truncated: it starts as a PNG file, but its 40 bytes"],
                   ["export or download the picture again"])


def test_a_zero_byte_file_is_empty(user_folder):
    image = loaded(user_folder, "empty.png")
    assert_message(image.error, ["'empty.png' is empty (0 bytes)"], ["upload or pass the picture again"])


def test_a_20000_px_jpeg_is_decoded_small_and_remembers_its_size(user_folder):
    image = loaded(user_folder, "huge.jpg")
    assert image.ok and image.image.shape == (MAX_SIDE, MAX_SIDE, 3)
    assert image.original_size == (HUGE, HUGE) and image.scale == pytest.approx(MAX_SIDE / HUGE)
    assert "huge.jpg: 4096x4096 (scaled from 20000x20000)" in describe_images([image])


def test_a_20000_px_png_is_refused_from_its_header_with_the_reason(user_folder):
    started = time.perf_counter()
    image = loaded(user_folder, "huge.png")
    assert time.perf_counter() - started < 5  # decoding it takes ~17 s and 4 GB; the header, nothing
    assert_message(image.error, ["'huge.png' is 20000x20000 pixels (400 megapixels)", "more than the 300 megapixels"],
                   ["scale it down to at most 4096 px", "cut it into tiles", "save it as JPEG"])


def test_a_folder_of_mistakes_loads_what_it_can_and_reports_each_file(user_folder):
    with unchanged(user_folder):
        images = {image.name: image for image in load_images(str(user_folder / "*"))}
    assert images["good.png"].ok and images["huge.jpg"].ok
    assert sorted(name for name, image in images.items() if not image.ok) == [
        "cut.jpg", "cut.png", "empty.png", "huge.png", "notes.jpg", "report.png"]
    assert "2 of 8 pictures loaded" in describe_images(list(images.values()))


def test_uploads_of_the_same_mistakes_get_the_same_messages(user_folder):
    files = [{"name": path.name, "content": memoryview(path.read_bytes())}
             for path in sorted(user_folder.iterdir()) if path.name != "huge.jpg"]
    with unchanged(user_folder):
        images = {image.name: image for image in load_uploads(files)}
    assert images["good.png"].ok and images["good.png"].source == "upload:good.png"
    assert "'cut.jpg' is damaged or truncated" in images["cut.jpg"].error
    assert "'empty.png' is empty (0 bytes)" in images["empty.png"].error
    assert "'huge.png' is 20000x20000 pixels" in images["huge.png"].error
    heic = load_uploads([("IMG_0001.HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")])[0]
    assert_message(heic.error, ["'IMG_0001.HEIC' is not a picture", "HEIF/AVIF photo", "pillow-heif"],
                   ["pass JPEG, PNG"])


def test_a_glob_that_matches_nothing(user_folder):
    with unchanged(user_folder), pytest.raises(D2nbError) as error:
        expand_inputs(str(user_folder / "*.jpeg"))
    assert_message(error.value, [f"the pattern '{user_folder / '*.jpeg'}' matches no file", "working directory"],
                   ["check the folder and the extension"])


def test_a_missing_file(user_folder):
    with unchanged(user_folder), pytest.raises(D2nbError) as error:
        expand_inputs([str(user_folder / "good.png"), str(user_folder / "holiday.png")])
    assert_message(error.value, [f"input '{user_folder / 'holiday.png'}' does not exist", "working directory"],
                   ["check the spelling and the folder", "'photos/*.jpg'"])
    image = load_image(user_folder / "holiday.png")  # a path passed straight to load_image
    assert_message(image.error, [f"cannot read '{user_folder / 'holiday.png'}' (No such file or directory)"],
                   ["check the path and its permissions"])

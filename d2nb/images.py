"""Loading the pictures to run a model on: paths, globs, folders, URLs, uploads, samples.

``inputs`` is what the notebook's ``inputs`` parameter and ``d2nb demo --input`` take: a
path, a glob such as ``"photos/*.jpg"`` (as demo.py's ``--input``), a folder, a URL, the word
``"samples"`` (the pictures bundled with d2nb), or a list of any of these.

Every picture becomes an RGB ``uint8`` array the way a camera meant it: EXIF orientation
applied, grayscale and palette images turned to RGB, transparency laid over white, 16-bit
and 12-bit images scaled to 8 bits, very large images scaled down. A file that is not a
picture gives a ``LoadedImage`` whose ``error`` names the file, the reason and the fix; the
other pictures still load.

    images = load_images("photos/*.jpg")
    [image.name for image in images if image.ok]
"""

from __future__ import annotations

import base64
import glob
import io
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2nb.errors import D2nbError

SAMPLES_DIR = Path(__file__).parent / "assets" / "samples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_SIDE = 4096  # longer sides are scaled down on loading: models test at 800-1333 px anyway
TILED_MAX_SIDE = 32768  # tiled inference sees the picture at its own size: scale down only beyond this
MAX_PIXELS = 300_000_000  # beyond this a picture would not fit in memory as RGB; refused
URL_TIMEOUT_S = 30


@dataclass
class LoadedImage:
    """One input: its ``image`` (RGB uint8, H x W x 3) or the ``error`` that stopped it.

    ``scale`` is the size of ``image`` relative to the file (1.0, or less when a very large
    picture was scaled down); ``original_size`` is the file's (height, width).
    """

    name: str
    source: str
    image: np.ndarray | None = None
    error: str | None = None
    scale: float = 1.0
    original_size: tuple | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


def is_url(text) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0] in ("http", "https", "ftp")


def sample_images() -> list:
    """The pictures bundled with d2nb (for a first run without pictures of one's own)."""
    return sorted(str(p) for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def expand_inputs(inputs) -> list:
    """Turn ``inputs`` into a list of file paths and URLs, in a stable order.

    Raises ``D2nbError`` when a path, glob or folder matches no file (one mistyped entry
    should be noticed, not silently skipped).
    """
    if inputs is None or (isinstance(inputs, str) and inputs.strip() in ("", "samples")):
        return sample_images()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources = []
    for entry in inputs:
        entry = str(entry)
        if is_url(entry):
            sources.append(entry)
        elif entry == "samples":
            sources += sample_images()
        elif Path(entry).expanduser().is_dir():
            sources += sorted(str(p) for p in Path(entry).expanduser().iterdir()
                              if p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(entry):
            matches = sorted(glob.glob(os.path.expanduser(entry), recursive=True))
            if not matches:
                raise D2nbError(f"the pattern {entry!r} matches no file (working directory {os.getcwd()!r})",
                                "check the folder and the extension; patterns are read from the working directory")
            sources += matches
        elif Path(entry).expanduser().is_file():
            sources.append(str(Path(entry).expanduser()))
        else:
            raise D2nbError(f"input {entry!r} does not exist: it is not a file, a folder, a glob pattern nor a URL "
                            f"(working directory {os.getcwd()!r})",
                            "check the spelling and the folder; pass e.g. 'photo.jpg', 'photos/', 'photos/*.jpg', "
                            "'https://.../photo.jpg' or 'samples'")
    return sources


def max_side_for(tile=None) -> int:
    """The ``max_side`` to load pictures with: ``MAX_SIDE`` for whole-picture inference, which
    shrinks pictures to the model's size anyway; ``TILED_MAX_SIDE`` when tiles (``tile``) are to
    see the small objects at the picture's own resolution."""
    return TILED_MAX_SIDE if tile not in (None, "", 0) else MAX_SIDE


def load_images(inputs, max_side: int = MAX_SIDE) -> list:
    """``LoadedImage`` for every picture ``inputs`` names (see the module's docstring)."""
    return [load_image(source, max_side=max_side) for source in expand_inputs(inputs)]


def load_image(source, name: str | None = None, max_side: int = MAX_SIDE) -> LoadedImage:
    """Load one path or URL; errors are returned in ``LoadedImage.error``, not raised."""
    source = str(source)
    name = name or unique_name(source)
    try:
        data = read_url(source) if is_url(source) else Path(source).expanduser().read_bytes()
        return decode_image(data, name, source, max_side)
    except D2nbError as error:
        return LoadedImage(name, source, error=str(error))
    except OSError as error:
        return LoadedImage(name, source, error=str(D2nbError(
            f"cannot read {source!r} ({error.strerror or error})", "check the path and its permissions")))


def load_uploads(uploads, max_side: int = MAX_SIDE) -> list:
    """``LoadedImage`` for each file of an ipywidgets 8 ``FileUpload.value`` (dicts with
    ``name`` and ``content``), or for ``(name, bytes)`` pairs."""
    loaded = []
    for upload in uploads:
        name, content = (upload["name"], upload["content"]) if isinstance(upload, dict) else upload
        name = safe_file_name(name)  # the browser sends any name; it may end up as a file name
        try:
            loaded.append(decode_image(bytes(content), name, f"upload:{name}", max_side))
        except D2nbError as error:
            loaded.append(LoadedImage(name, f"upload:{name}", error=str(error)))
    return loaded


def image_from_data_url(data_url: str, name: str = "snapshot.jpg") -> LoadedImage:
    """Decode a ``data:image/...;base64,...`` URL, as a browser camera snapshot sends it."""
    name = safe_file_name(name, "snapshot.jpg")
    header, _, payload = data_url.partition(",")
    if not header.startswith("data:image") or ";base64" not in header:
        return LoadedImage(name, "camera", error=str(D2nbError(
            f"the camera sent {header[:40]!r}, not a base64 image", "take the snapshot again")))
    try:
        return decode_image(base64.b64decode(payload), name, "camera", MAX_SIDE)
    except D2nbError as error:
        return LoadedImage(name, "camera", error=str(error))


def read_url(url: str) -> bytes:
    """Download ``url``; raises ``D2nbError`` naming the URL when offline or refused."""
    request = urllib.request.Request(url, headers={"User-Agent": "d2nb"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        raise D2nbError(f"could not download {url!r} ({getattr(error, 'reason', None) or error})",
                        "check the URL and that this machine is online, or download the picture "
                        "and pass its path") from None


def unique_name(source: str) -> str:
    """The file name a source is shown and saved under (a URL's last path part)."""
    if is_url(source):
        tail = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return safe_file_name(tail, "download.jpg")
    return Path(source).name


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)), *(f"LPT{n}" for n in range(1, 10))}
MAX_NAME_LENGTH = 100


def safe_file_name(name, default: str = "upload.png") -> str:
    """``name`` (an upload's, a URL's) made into a plain file name that stays inside the folder
    it is saved in: only its last path part (after ``/`` or ``\\``), letters, digits and
    ``. _ - ( ) + ,`` and spaces kept, other characters (control characters, ``:*?"<>|``)
    replaced by ``_``, no leading dot (no hidden file, no ``..``), no Windows device name, at
    most 100 characters. ``default`` when nothing is left."""
    import unicodedata

    text = unicodedata.normalize("NFC", str(name)).replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c if c.isalnum() or c in "._-()+, " else "_" for c in text)
    text = text.strip(" ").lstrip(".").rstrip(". ")
    stem, suffix = os.path.splitext(text)
    if stem.split(".")[0].upper() in WINDOWS_RESERVED:
        stem = "_" + stem
    suffix = suffix[:12]
    text = stem[: MAX_NAME_LENGTH - len(suffix)] + suffix
    return text if text.strip("._ ") else default


def decode_image(data: bytes, name: str, source: str, max_side: int = MAX_SIDE) -> LoadedImage:
    """Decode picture bytes to an RGB uint8 ``LoadedImage``; ``D2nbError`` if they are none."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise D2nbError(f"{name!r} is empty (0 bytes)", "upload or pass the picture again")
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # _check_pixels does it, from the header
    try:
        picture = Image.open(io.BytesIO(data))
        original = picture.size
        _check_pixels(name, picture.format, original)
        if picture.format == "JPEG" and max(original) > max_side:  # decode straight at a smaller size
            picture.draft("RGB", (max_side, max_side))
        picture = ImageOps.exif_transpose(picture)
        array = _to_rgb(picture)
    except UnidentifiedImageError:
        array = _decode_with_opencv(data)
        if array is None:
            kind = _image_signature(data)
            if kind:  # the start of a picture whose rest is missing or broken
                raise D2nbError(f"{name!r} is damaged or truncated: it starts as a {kind} file, "
                                f"but its {len(data)} bytes do not hold a readable picture",
                                "export or download the picture again") from None
            raise D2nbError(f"{name!r} is not a picture{_looks_like(data)}",
                            "pass JPEG, PNG, TIFF, BMP or WebP files; leave other files out") from None
        original = (array.shape[1], array.shape[0])
    except D2nbError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise D2nbError(f"{name!r} is damaged or truncated ({error})",
                        "export or download the picture again") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    array, scale = _limit_size(array, max_side, original)
    return LoadedImage(name, source, np.ascontiguousarray(array), scale=scale,
                       original_size=(original[1], original[0]))


def _to_rgb(picture) -> np.ndarray:
    from PIL import Image

    if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _deep_to_rgb(np.asarray(picture))
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(picture.convert("RGB"))


def _deep_to_rgb(values: np.ndarray) -> np.ndarray:
    """16-bit (or 12-bit data stored in 16 bits, or float) to 8-bit: divide by the largest
    value the data's bit depth allows, so a 12-bit scan is not shown nearly black."""
    values = values.astype(np.float32)
    if values.ndim == 3 and values.shape[2] == 4:
        values = values[..., :3]
    top = float(values.max()) if values.size else 1.0
    full = next((f for f in (1.0, 255.0, 1023.0, 4095.0, 16383.0, 65535.0) if top <= f), max(top, 1.0))
    gray = np.clip(values * (255.0 / full), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2) if gray.ndim == 2 else gray


def _decode_with_opencv(data: bytes):
    """What PIL cannot open (some 16-bit colour TIFFs, for instance) OpenCV may."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        return None
    if array.dtype != np.uint8:
        array = _deep_to_rgb(array)[..., ::-1] if array.ndim == 3 else _deep_to_rgb(array)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[..., :3]
    return array[..., ::-1]  # OpenCV is BGR


def _limit_size(array: np.ndarray, max_side: int, original) -> tuple:
    import cv2

    height, width = array.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        array = cv2.resize(array, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    return array, array.shape[1] / original[0]


def _check_pixels(name: str, file_format, size) -> None:
    """Refuse, from the header alone, a picture that would not fit in memory once decoded.
    JPEGs are decoded at 1/2, 1/4 or 1/8 of their size when large, so only their reduced
    size counts; other formats are decoded whole before being scaled down."""
    width, height = size
    reduction = 8 if file_format == "JPEG" else 1
    if -(-width // reduction) * -(-height // reduction) <= MAX_PIXELS:
        return
    raise D2nbError(
        f"{name!r} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); decoding a "
        f"{file_format or 'picture'} that large takes at least {width * height * 3 / 2**30:.1f} GiB of memory, "
        f"more than the {MAX_PIXELS // 1_000_000} megapixels d2nb decodes (pictures are scaled down to "
        f"{MAX_SIDE} px on the longest side anyway)",
        f"scale it down to at most {MAX_SIDE} px on the longest side, cut it into tiles, or save it as "
        "JPEG (which d2nb decodes straight at a reduced size)")


# how the pictures PIL reads begin: a file that starts so but does not open is damaged
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
# what else people upload by mistake, by how it begins
_OTHER_FILES = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive, or a Word, Excel or PowerPoint file"),
                (b"\x1f\x8b", "a gzip archive"), (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-zip archive"))


def _image_signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":  # BMP: reserved header bytes are zero
        return "BMP"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def _looks_like(data: bytes) -> str:
    head = data[:64]
    if head[4:8] == b"ftyp":  # ISO media: HEIC/HEIF photos (iPhones) or MP4/MOV videos
        brand = head[8:12].decode("latin-1")
        if brand in ("heic", "heix", "hevc", "heim", "heis", "mif1", "msf1", "avif"):
            return f" (it is a HEIF/AVIF photo, brand {brand!r}, which PIL reads only with the pillow-heif package)"
        return f" (it is a video or other ISO media file, brand {brand!r})"
    for magic, kind in _OTHER_FILES:
        if head.startswith(magic):
            return f" (it is {kind})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f" (it starts with bytes {head[:8]!r})"
    if not all(c.isprintable() or c in "\r\n\t" for c in text):
        return f" (it starts with bytes {head[:8]!r})"
    return f" (it holds text: {text[:30].strip()!r}...)" if text.strip() else ""


def describe_images(images: list) -> str:
    """One line per input: its name and size, or why it was skipped."""
    lines = []
    for image in images:
        if image.ok:
            height, width = image.image.shape[:2]
            note = f" (scaled from {image.original_size[1]}x{image.original_size[0]})" if image.scale != 1.0 else ""
            lines.append(f"ok    {image.name}: {width}x{height}{note}")
        else:
            lines.append(f"skip  {image.name}: {image.error}")
    good = sum(image.ok for image in images)
    return "\n".join(lines + [f"{good} of {len(images)} pictures loaded"])

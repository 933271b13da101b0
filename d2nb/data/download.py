"""Downloading COCO 2017 into detectron2's layout, resumable and never half-written.

    download_coco(["annotations", "val2017"])     # -> $DETECTRON2_DATASETS/coco/{annotations,val2017}
    download_file(url, "datasets/coco/val2017.zip", expected_size=..., md5=...)

A download goes into ``<file>.part``; an interrupted one is resumed from where it stopped
(HTTP Range) on the next call, and the file gets its real name only once its size (from
Content-Length and, for COCO, the published size) and md5 are right. An archive is
extracted into a hidden staging folder and its top-level folders moved into place at the
end, so an interrupted extraction leaves no half-filled ``val2017/``. Without a network, a
``D2nbError`` says which host is unreachable and how to fetch the files by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections import namedtuple
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from d2nb.data.synthetic import default_datasets_root
from d2nb.errors import D2nbError

COCO_BASE_URL = "http://images.cocodataset.org"
CocoArchive = namedtuple("CocoArchive", "path size md5 provides")
# The published archives: byte sizes and md5 sums as cocodataset.org serves them (each
# checked against several independent download scripts), and what each puts under coco/.
COCO_2017 = {
    "annotations": CocoArchive("annotations/annotations_trainval2017.zip", 252_907_541,
                               "f4bbac642086de4f52a3fdda2de5fa2c",
                               ("annotations/instances_val2017.json", "annotations/instances_train2017.json",
                                "annotations/person_keypoints_val2017.json")),
    "val2017": CocoArchive("zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80", ("val2017",)),
    "train2017": CocoArchive("zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2",
                             ("train2017",)),
}
CHUNK_BYTES = 1 << 20


def download_coco(parts=("annotations", "val2017"), root=None, base_url: str = COCO_BASE_URL,
                  keep_archives: bool = False, progress: bool = True, timeout: float = 30,
                  archives: dict | None = None) -> dict:
    """Download and extract COCO 2017 ``parts`` (``"annotations"``, ``"val2017"``,
    ``"train2017"``) into ``<root>/coco``; return ``{part: "present" | "downloaded"}``.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` (else ./datasets). A part whose files are
    already in place is skipped. ``base_url`` points at a mirror with COCO's paths (the
    published size and md5 are then still checked). Archives are deleted after extraction
    unless ``keep_archives``. ``archives`` replaces the ``COCO_2017`` table (a test server's
    files). Raises ``D2nbError`` for an unknown part, an unreachable host or a corrupt download.
    """
    archives = COCO_2017 if archives is None else archives
    parts = [parts] if isinstance(parts, str) else list(parts)
    unknown = [p for p in parts if p not in archives]
    if unknown:
        raise D2nbError(f"unknown COCO 2017 part(s) {unknown}", f"pass some of {list(archives)}")
    coco_root = (Path(root) if root is not None else default_datasets_root()) / "coco"
    done = {}
    for part in parts:
        archive = archives[part]
        if all((coco_root / p).exists() for p in archive.provides):
            done[part] = "present"
            continue
        url = f"{base_url.rstrip('/')}/{archive.path}"
        zip_path = download_file(url, coco_root / Path(archive.path).name, archive.size, archive.md5,
                                 progress=progress, timeout=timeout)
        extract_zip(zip_path, coco_root)
        if not keep_archives:
            zip_path.unlink()
        done[part] = "downloaded"
    return done


def download_file(url: str, destination, expected_size: int | None = None, md5: str | None = None,
                  progress: bool = True, timeout: float = 30) -> Path:
    """Download ``url`` to ``destination`` through ``<destination>.part``; return the path.

    A ``.part`` left by an interrupted call is resumed with an HTTP Range request (a server
    that ignores Range sends the whole file again, which is handled). The file is renamed
    into place only after its size matches Content-Length (and ``expected_size``) and its
    md5 matches ``md5``. An existing ``destination`` of the expected size is kept as it is.
    """
    destination = Path(destination)
    if destination.is_file() and (expected_size is None or destination.stat().st_size == expected_size):
        return destination
    part = destination.with_name(destination.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and have > expected_size:  # not a prefix of this file: start again
        part.unlink()
        have = 0
    response = _open(url, have, timeout, destination)
    if isinstance(response, _AlreadyComplete) and response.size != have:  # longer than the file: start again
        part.unlink()
        have = 0
        response = _open(url, have, timeout, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)  # only once the host answered
    try:
        if have and response.status != 206:  # the server sent the whole file: start again
            have = 0
        total = _total_size(response, have)
        if expected_size is not None and total is not None and total != expected_size:
            raise D2nbError(f"{url} is {total} bytes, but {destination.name} should be {expected_size}",
                            "check the URL (or the mirror's copy) of the file")
        digest = _md5_of(part) if md5 and have else hashlib.md5()
        if have < (total if total is not None else have + 1):
            _copy_body(response, part, have, total, digest, progress, url)
    finally:
        response.close()
    size = part.stat().st_size
    wanted = expected_size if expected_size is not None else total
    if wanted is not None and size != wanted:
        raise D2nbError(f"download of {url} stopped at {size} of {wanted} bytes ({part})",
                        "run the same call again: it resumes from where it stopped")
    if md5 and digest.hexdigest() != md5:
        part.unlink()
        raise D2nbError(f"{url} downloaded with md5 {digest.hexdigest()}, expected {md5}; the partial file "
                        "was deleted", "run the call again to download it afresh")
    os.replace(part, destination)
    return destination


def _open(url: str, have: int, timeout: float, destination: Path):
    headers = {"User-Agent": "d2nb"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and have:  # the range starts at (or past) the end of the file
            size = str(error.headers.get("Content-Range", "")).rsplit("/", 1)[-1].strip()
            return _AlreadyComplete(int(size) if size.isdigit() else None)
        raise D2nbError(f"{url} answered HTTP {error.code} {error.reason}",
                        "check the URL; for COCO see https://cocodataset.org/#download") from None
    except (OSError, HTTPException) as error:  # URLError, refused, timeout, DNS failure
        host = urlsplit(url).netloc
        reason = getattr(error, "reason", error)
        raise D2nbError(
            f"cannot reach {host} to download {url} ({reason})",
            f"connect to the internet and run this again, or get the file by hand on a machine with a "
            f"network (browser or `wget -c {url}`), copy it to {destination} and run this again: "
            "it is then checked and extracted without downloading") from None


class _AlreadyComplete:
    """Stands in for the response when the server says the range starts at the end of its
    ``size`` bytes (None when it does not say): the ``.part`` holds the whole file."""

    status = 206

    def __init__(self, size):
        self.size = size
        self.headers = {"Content-Range": f"bytes */{size}"} if size is not None else {}

    def read(self, _=-1) -> bytes:
        return b""

    def close(self):
        pass


def _total_size(response, have: int):
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + (have if response.status == 206 else 0) if length and length.isdigit() else None


def _md5_of(path: Path):
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


def _copy_body(response, part: Path, have: int, total, digest, progress: bool, url: str):
    from tqdm.auto import tqdm

    with open(part, "ab" if have else "wb") as stream, \
            tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=Path(urlsplit(url).path).name, disable=not progress) as bar:
        while True:
            try:
                block = response.read(CHUNK_BYTES)
            except (OSError, HTTPException) as error:  # connection reset, timeout, short read
                raise D2nbError(f"download of {url} was interrupted at {stream.tell()} bytes ({error}); "
                                f"{part} keeps what arrived", "run the same call again to resume") from None
            if not block:
                break
            stream.write(block)
            digest.update(block)
            bar.update(len(block))


def extract_zip(zip_path, destination) -> list:
    """Extract a zip into ``destination`` through a staging folder; return the top-level
    names it put there. Existing folders of the same name are merged into (file by file),
    so ``coco/annotations`` keeps files made before. Raises ``D2nbError`` for a corrupt
    archive or one with paths leaving the destination; nothing is left half-extracted."""
    zip_path, destination = Path(zip_path), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".extracting-{zip_path.stem}-", dir=destination))
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for member in archive.namelist():
                    target = (staging / member).resolve()
                    if not target.is_relative_to(staging.resolve()):
                        raise D2nbError(f"{zip_path} holds a path outside its folder: {member!r}",
                                        "do not extract this archive; download it again from its source")
                archive.extractall(staging)
        except zipfile.BadZipFile as error:
            raise D2nbError(f"{zip_path} is not a valid zip ({error})",
                            f"delete {zip_path} and download it again") from None
        names = sorted(p.name for p in staging.iterdir())
        for name in names:
            _move_into_place(staging / name, destination / name)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(source: Path, target: Path):
    if not target.exists():
        os.replace(source, target)  # one rename: the folder appears complete or not at all
    elif source.is_dir() and target.is_dir():
        for child in source.iterdir():
            _move_into_place(child, target / child.name)
    else:
        os.replace(source, target)

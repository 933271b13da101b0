"""Downloads against a local HTTP server (full, resumed, interrupted, offline), extraction
into detectron2's layout, and the layout check itself."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from d2nb.cli import main as cli_main
from d2nb.data.download import CocoArchive, download_coco, download_file, extract_zip
from d2nb.data.layout import check_layout, layout_table
from d2nb.errors import D2nbError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of known bytes


class FileServer:
    """Serves ``files`` ({url path: bytes}) with HTTP Range support; records Range headers.
    ``ignore_range`` answers every request with the whole file; ``cut_at`` announces the
    full length but closes the connection after that many bytes."""

    def __init__(self, files: dict, ignore_range: bool = False, cut_at: int | None = None):
        self.files, self.ignore_range, self.cut_at = files, ignore_range, cut_at
        self.ranges = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = int(requested[len("bytes="):].split("-")[0]) if requested and not server.ignore_range else 0
                if start >= len(body) and requested:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:] if server.cut_at is None else body[start:server.cut_at]
                self.wfile.write(chunk)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path="/x.zip") -> str:
    """A URL on this machine where nothing listens (connection refused at once)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}{path}"


def zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_download_writes_the_file_and_no_part(tmp_path):
    with FileServer({"/f.bin": PAYLOAD}) as server:
        path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", expected_size=len(PAYLOAD),
                             md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert server.ranges == [None]


def test_a_partial_download_is_resumed_with_a_range_request(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:300_000])
    with FileServer({"/f.bin": PAYLOAD}) as server:
        path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(PAYLOAD).hexdigest(),
                             progress=False)
    assert server.ranges == ["bytes=300000-"]
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()


def test_a_server_ignoring_range_restarts_cleanly(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    with FileServer({"/f.bin": PAYLOAD}, ignore_range=True) as server:
        path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(PAYLOAD).hexdigest(),
                             progress=False)
    assert path.read_bytes() == PAYLOAD


def test_a_complete_part_is_finished_without_downloading_again(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    with FileServer({"/f.bin": PAYLOAD}) as server:
        path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", expected_size=len(PAYLOAD),
                             md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert path.read_bytes() == PAYLOAD and server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_a_part_longer_than_the_file_is_started_again(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"junk")
    with FileServer({"/f.bin": PAYLOAD}) as server:
        path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert path.read_bytes() == PAYLOAD


def test_an_interrupted_download_keeps_its_part_and_resumes_next_time(tmp_path):
    destination = tmp_path / "f.bin"
    with FileServer({"/f.bin": PAYLOAD}, cut_at=400_000) as server:
        with pytest.raises(D2nbError, match="run the same call again") as error:
            download_file(f"{server.url}/f.bin", destination, progress=False, timeout=5)
    assert "f.bin" in str(error.value)
    assert not destination.exists()
    assert (tmp_path / "f.bin.part").stat().st_size == 400_000
    with FileServer({"/f.bin": PAYLOAD}) as server:
        download_file(f"{server.url}/f.bin", destination, expected_size=len(PAYLOAD), progress=False)
    assert server.ranges == ["bytes=400000-"]
    assert destination.read_bytes() == PAYLOAD


def test_wrong_size_and_wrong_md5_are_refused(tmp_path):
    with FileServer({"/f.bin": PAYLOAD}) as server:
        with pytest.raises(D2nbError, match=f"is {len(PAYLOAD)} bytes, but f.bin should be 5"):
            download_file(f"{server.url}/f.bin", tmp_path / "f.bin", expected_size=5, progress=False)
        with pytest.raises(D2nbError, match="md5") as error:
            download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert "download it afresh" in str(error.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_offline_says_the_host_is_unreachable_and_leaves_nothing(tmp_path):
    url = closed_port_url("/zips/val2017.zip")
    target = tmp_path / "datasets" / "coco" / "val2017.zip"
    with pytest.raises(D2nbError) as error:
        download_file(url, target, progress=False, timeout=5)
    message = str(error.value)
    assert "cannot reach 127.0.0.1" in message and url in message
    assert "by hand" in message and str(target) in message
    assert not (tmp_path / "datasets").exists()


def test_offline_coco_download_leaves_no_folders(tmp_path):
    with pytest.raises(D2nbError, match="cannot reach"):
        download_coco(["val2017"], root=tmp_path, base_url=closed_port_url(""), progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


FAKE_ANNOTATIONS = {"annotations/instances_val2017.json": b'{"images": [], "annotations": [], "categories": []}',
                    "annotations/person_keypoints_val2017.json": b"{}",
                    "annotations/instances_train2017.json": b"{}"}
FAKE_VAL = {"val2017/000000000001.jpg": b"jpeg bytes", "val2017/000000000002.jpg": b"more jpeg bytes"}


def fake_archives():
    return {"annotations": CocoArchive("annotations/annotations_trainval2017.zip", None, None,
                                       ("annotations/instances_val2017.json",)),
            "val2017": CocoArchive("zips/val2017.zip", None, None, ("val2017",))}


def test_coco_download_extracts_into_detectron2s_layout(tmp_path):
    files = {"/annotations/annotations_trainval2017.zip": zip_bytes(FAKE_ANNOTATIONS),
             "/zips/val2017.zip": zip_bytes(FAKE_VAL)}
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_val2017_100.json").write_text("{}")  # made earlier
    with FileServer(files) as server:
        done = download_coco(["annotations", "val2017"], root=tmp_path, base_url=server.url, progress=False,
                             archives=fake_archives())
    assert done == {"annotations": "downloaded", "val2017": "downloaded"}
    coco = tmp_path / "coco"
    assert (coco / "val2017" / "000000000002.jpg").read_bytes() == b"more jpeg bytes"
    assert (coco / "annotations" / "instances_val2017_100.json").is_file()  # merged, not replaced
    assert sorted(p.name for p in coco.iterdir()) == ["annotations", "val2017"]  # no zips, no staging
    rows = {row["dataset"]: row for row in check_layout(tmp_path)}
    assert rows["coco_2017_val"]["status"] == "ready"
    assert rows["coco_2017_val_100"]["status"] == "ready"
    assert rows["coco_2017_train"]["status"] == "partial"
    assert rows["coco_2017_train"]["missing"] == ["coco/train2017"]
    # a second call finds everything in place and needs no network
    assert download_coco(["annotations", "val2017"], root=tmp_path, base_url=closed_port_url(""),
                         archives=fake_archives()) == {"annotations": "present", "val2017": "present"}


def test_a_corrupt_archive_leaves_no_half_extracted_folder(tmp_path):
    good = zip_bytes(FAKE_VAL)
    broken = tmp_path / "val2017.zip"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(D2nbError, match="not a valid zip") as error:
        extract_zip(broken, tmp_path / "coco")
    assert "download it again" in str(error.value)
    assert list((tmp_path / "coco").iterdir()) == []


def test_an_archive_escaping_its_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    evil.write_bytes(zip_bytes({"../outside.txt": b"x"}))
    with pytest.raises(D2nbError, match="outside its folder"):
        extract_zip(evil, tmp_path / "coco")
    assert not (tmp_path / "outside.txt").exists() and list((tmp_path / "coco").iterdir()) == []


def test_unknown_part_names_the_parts():
    with pytest.raises(D2nbError, match="train2017"):
        download_coco(["val2014"])


def test_layout_reports_present_partial_and_missing(tmp_path):
    (tmp_path / "VOC2007" / "Annotations").mkdir(parents=True)
    (tmp_path / "VOC2007" / "Annotations" / "000001.xml").write_text("<annotation/>")
    (tmp_path / "VOC2007" / "JPEGImages").mkdir()  # empty: does not count
    rows = {row["dataset"]: row for row in check_layout(tmp_path)}
    assert rows["voc_2007_test"]["status"] == "partial"
    assert rows["voc_2007_test"]["present"] == ["VOC2007/Annotations"]
    assert "VOC2007/JPEGImages" in rows["voc_2007_test"]["missing"]
    assert rows["voc_2012_train"]["status"] == "missing"
    assert "host.robots.ox.ac.uk" in rows["voc_2012_train"]["how to get"]
    families = {row["family"] for row in rows.values()}
    assert {"COCO 2017 instances", "COCO 2017 person keypoints", "COCO 2017 panoptic", "LVIS v1",
            "Cityscapes fine", "Pascal VOC 2007", "Pascal VOC 2012"} <= families
    table = layout_table(check_layout(tmp_path, families=["VOC"]))
    assert len(table) == 7 and "voc_2007_test" in table._repr_html_() and "voc_2007_test" in str(table)


def test_cli_check_and_offline_download(tmp_path, capsys):
    assert cli_main(["data", "check", "--root", str(tmp_path), "--family", "VOC"]) == 0
    assert "voc_2012_val" in capsys.readouterr().out
    assert cli_main(["data", "download", "val2017", "--root", str(tmp_path), "--base-url", closed_port_url("")]) == 2
    assert "cannot reach" in capsys.readouterr().err

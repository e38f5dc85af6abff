"""PubFig preparation against a local HTTP server: good photos, dead links, wrong checksums, HTML, timeouts, resume."""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mem_toolkit.cli import main
from mem_toolkit.data.identity import load_identity_folder
from mem_toolkit.data.pubfig import REPORT_NAME, DownloadSettings, prepare_pubfig, read_url_list
from mem_toolkit.errors import DataError

SLOW_SECONDS = 1.5
FAST = DownloadSettings(timeout=0.3, retries=1, backoff=0.0, workers=4)


def _image_bytes(colour, size=(64, 80), fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.hits[self.path] += 1
        status, body, kind, delay = self.server.routes.get(self.path, (404, b"not found", "text/plain", 0.0))
        try:
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (the timeout case)
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    httpd.hits = Counter()
    images = {name: _image_bytes(colour) for name, colour in (("ann1", (200, 40, 40)), ("bob1", (40, 40, 200)), ("bob6", (40, 200, 40)))}
    images["ann2"] = _image_bytes((120, 120, 0), fmt="PNG")
    httpd.routes = {
        "/ann1.jpg": (200, images["ann1"], "image/jpeg", 0.0),
        "/ann2.png": (200, images["ann2"], "image/png", 0.0),
        "/bob1.jpg": (200, images["bob1"], "image/jpeg", 0.0),
        "/bob6.jpg": (200, images["bob6"], "image/jpeg", 0.0),
        "/changed.jpg": (200, _image_bytes((1, 2, 3)), "image/jpeg", 0.0),
        "/page.html": (200, b"<html><body>This photo has been removed</body></html>", "image/jpeg", 0.0),
        "/slow.jpg": (200, images["bob1"], "image/jpeg", SLOW_SECONDS),
        "/broken": (503, b"busy", "text/plain", 0.0),
    }
    httpd.md5 = {name: hashlib.md5(data).hexdigest() for name, data in images.items()}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url_list(tmp_path, server) -> str:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    md5 = server.md5
    lines = [
        "# PubFig Dataset v1.2 - dev_urls.txt - http://www.cs.columbia.edu/CAVE/databases/pubfig/",
        "#\tperson\timagenum\turl\trect\tmd5sum",
        f"Ann Example\t1\t{base}/ann1.jpg\t10,12,50,62\t{md5['ann1']}",
        f"Ann Example\t2\t{base}/ann2.png\t0,0,40,40\t{md5['ann2']}",
        f"Ann Example\t3\t{base}/gone.jpg\t0,0,10,10\t{'0' * 32}",
        f"Bob Sample\t1\t{base}/bob1.jpg\t5,5,30,30\t{md5['bob1']}",
        f"Bob Sample\t2\t{base}/changed.jpg\t5,5,30,30\t{md5['bob1']}",
        f"Bob Sample\t3\t{base}/page.html\t5,5,30,30",  # v1.1 line: no checksum
        f"Bob Sample\t4\t{base}/slow.jpg\t5,5,30,30\t{md5['bob1']}",
        f"Bob Sample\t5\t{base}/broken\t5,5,30,30",
        f"Bob Sample\t6\t{base}/bob6.jpg\t5,5,30,30\t{md5['bob6']}",
    ]
    path = tmp_path / "dev_urls.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_download_reports_every_kind_of_failure_and_resumes(tmp_path, server):
    urls, out = _url_list(tmp_path, server), tmp_path / "pubfig"
    hits_before = server.hits.copy()
    report = prepare_pubfig(urls, out, FAST, progress=False)
    assert report.listed == 9 and report.downloaded == 4 and report.existing == 0
    assert report.failures_by_reason == {"dead link": 1, "wrong checksum": 1, "not an image": 1, "timeout": 1, "http error": 1}
    by_number = {(f["person"], f["imagenum"]): f for f in report.failures}
    assert "HTTP 404" in by_number[("Ann Example", 3)]["detail"]
    assert "<html>" in by_number[("Bob Sample", 3)]["detail"]
    assert "2 attempts" in by_number[("Bob Sample", 5)]["detail"]
    hits = server.hits - hits_before
    assert hits["/gone.jpg"] == 1 and hits["/broken"] == 2 and hits["/slow.jpg"] == 2  # 404 is final; 503 and timeouts retried once
    assert sorted(p.name for p in (out / "Ann_Example").iterdir()) == ["1.jpg", "2.png"]
    assert sorted(p.name for p in (out / "Bob_Sample").iterdir()) == ["1.jpg", "6.jpg"]
    assert (out / "Ann_Example" / "1.jpg").read_bytes() == server.routes["/ann1.jpg"][1]
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["failed"] == 5 and saved["downloaded"] == 4 and [f["line"] for f in saved["failures"]] == [5, 7, 8, 9, 10]

    hits_before = server.hits.copy()
    again = prepare_pubfig(urls, out, FAST, progress=False)
    assert again.downloaded == 0 and again.existing == 4 and len(again.failures) == 5
    assert (server.hits - hits_before)["/ann1.jpg"] == 0

    (out / "Bob_Sample" / "6.jpg").write_bytes(b"\xff\xd8 torn")  # a broken leftover is fetched again
    third = prepare_pubfig(urls, out, FAST, progress=False)
    assert third.downloaded == 1 and third.existing == 3
    assert (out / "Bob_Sample" / "6.jpg").read_bytes() == server.routes["/bob6.jpg"][1]

    faces = load_identity_folder(out, 32, rename=False, progress=False)
    assert faces.names == ["Ann Example", "Bob Sample"] and faces.test.n_images == 2 and faces.train.n_images == 2


def test_crop_keeps_the_face_rectangle_and_refuses_to_mix(tmp_path, server):
    urls, out = _url_list(tmp_path, server), tmp_path / "crops"
    report = prepare_pubfig(urls, out, DownloadSettings(timeout=0.3, retries=0, backoff=0.0, crop=True), max_per_person=1, progress=False)
    assert report.listed == 2 and report.downloaded == 2
    with Image.open(out / "Ann_Example" / "1.png") as crop:
        assert crop.size == (40, 50)
        assert crop.getpixel((5, 5))[0] > 150  # ann1 is red
    with pytest.raises(DataError, match="crop=True"):
        prepare_pubfig(urls, out, FAST, progress=False)


def test_malformed_lines_are_collected(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text(
        "# comment\n"
        "Ann\t1\thttp://x/a.jpg\t1,2,3,4\n"
        "Ann\tone\thttp://x/b.jpg\t1,2,3,4\n"  # line 3
        "Ann\t2\tftp://x/c.jpg\t1,2,3,4\n"  # line 4
        "Ann\t3\thttp://x/d.jpg\t5,5,1,1\n"  # line 5
        "Ann\t4\thttp://x/e.jpg\t1,2,3,4\tnot-a-checksum\n"  # line 6
        "Ann\t1\thttp://x/f.jpg\t1,2,3,4\n"  # line 7: duplicate of line 2
        "just one field\n"  # line 8
    )
    with pytest.raises(DataError) as caught:
        read_url_list(path)
    where = [p.where for p in caught.value.problems]
    assert where == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "already listed on line 2" in str(caught.value)
    entries, problems = read_url_list(path, skip_bad=True)
    assert [(e.person, e.imagenum, e.rect, e.md5) for e in entries] == [("Ann", 1, (1, 2, 3, 4), None)] and len(problems) == 6


def test_command_line_prints_the_summary(tmp_path, server, capsys):
    urls = _url_list(tmp_path, server)
    status = main(["prepare", "pubfig", "--urls", urls, "--out", str(tmp_path / "cli"), "--timeout", "0.3", "--retries", "0",
                   "--backoff", "0", "--max-per-person", "2"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "4 listed; 3 downloaded, 0 already present, 1 failed" in printed and "wrong checksum: 1" in printed
    assert (tmp_path / "cli" / REPORT_NAME).is_file()
    assert main(["prepare", "pubfig", "--urls", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "cli")]) == 2

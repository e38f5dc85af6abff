"""Prepare PubFig: download the photos its URL lists name into one folder per person.

PubFig is published as lists of image URLs (`dev_urls.txt`, `eval_urls.txt`), not images: comment
lines start with `#`, every other line holds tab-separated `person, imagenum, url, rect[, md5sum]`
(`rect` = `x0,y0,x1,y1` of the face; v1.2 adds the MD5 of the file). Links die over time, so a
download is checked (HTTP status, time, checksum, that the answer decodes as an image), written
atomically, resumable (valid files already there are kept), and every failure is reported by kind.
The output `out/<Person_Name>/<imagenum>.<ext>` is what `load_identity_folder` reads.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..atomic import write_json
from ..errors import DataError, Problem
from .images import image_file_problem

REPORT_NAME = "pubfig_report.json"
SETTINGS_NAME = ".pubfig_prepare.json"
USER_AGENT = "mem-toolkit (PubFig preparation; research use)"
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


@dataclass(frozen=True)
class UrlEntry:
    """One line of a PubFig URL list."""

    person: str
    imagenum: int
    url: str
    rect: tuple[int, int, int, int] | None
    md5: str | None
    line: int

    @property
    def folder(self) -> str:
        """The person's folder name, LFW style (`Aaron_Eckhart`)."""
        return re.sub(r"[^\w.-]+", "_", self.person).strip("._") or "unnamed"


@dataclass(frozen=True)
class DownloadSettings:
    """How to download: per-operation timeout (a whole file gets 4x), retries with exponential backoff, threads."""

    timeout: float = 15.0
    retries: int = 3
    backoff: float = 1.0
    workers: int = 8
    crop: bool = False  # keep only the face rectangle (saved as lossless PNG)
    max_bytes: int = 30_000_000


@dataclass
class Outcome:
    """What happened to one entry: `downloaded`, `existing` (kept from an earlier run) or `failed` (with the reason)."""

    entry: UrlEntry
    status: str
    reason: str = ""
    detail: str = ""
    path: str = ""


@dataclass
class PrepareReport:
    """Counts and every failure of one preparation run, saved as JSON next to the images."""

    urls_file: str
    out_dir: str
    settings: dict
    listed: int = 0
    downloaded: int = 0
    existing: int = 0
    failures: list[dict] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failures_by_reason(self) -> dict[str, int]:
        return dict(Counter(f["reason"] for f in self.failures).most_common())

    def to_dict(self) -> dict:
        return asdict(self) | {"failed": len(self.failures), "failures_by_reason": self.failures_by_reason}

    def summary(self) -> str:
        """A few printable lines: counts, then failures by reason."""
        lines = [f"PubFig: {self.listed} listed; {self.downloaded} downloaded, {self.existing} already present, "
                 f"{len(self.failures)} failed" + (" (interrupted: rerun to resume)" if self.interrupted else "")]
        lines += [f"  {reason}: {count}" for reason, count in self.failures_by_reason.items()]
        if self.bad_lines:
            lines.append(f"  {len(self.bad_lines)} malformed line(s) left out of {self.urls_file}")
        return "\n".join(lines)


class _Failure(Exception):
    def __init__(self, reason: str, detail: str, retry: bool = False) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry = reason, detail, retry


def read_url_list(path: str | os.PathLike, skip_bad: bool = False) -> tuple[list[UrlEntry], list[Problem]]:
    """Parse a PubFig URL list, collecting every malformed line; raise them all unless `skip_bad`."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError([Problem(source, None, "file not found")]) from None
    except UnicodeDecodeError as error:
        raise DataError([Problem(source, None, f"not UTF-8 text ({error.reason})")]) from None
    entries, problems, seen = [], [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"line {number}"
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) not in (3, 4, 5):
            problems.append(Problem(source, where, f"expected 4 or 5 tab-separated fields (person, imagenum, url, rect[, md5sum]), got {len(fields)}"))
            continue
        person, imagenum, url = fields[:3]
        rect_text = fields[3] if len(fields) > 3 else ""
        md5 = fields[4] if len(fields) > 4 else ""
        errors = []
        if not person:
            errors.append("empty person name")
        if not imagenum.isdigit():
            errors.append(f"image number {imagenum!r} is not a whole number")
        if not url.lower().startswith(("http://", "https://")):
            errors.append(f"not an http(s) URL: {url!r}")
        rect = _parse_rect(rect_text, errors) if rect_text else None
        if md5 and not _MD5.fullmatch(md5):
            errors.append(f"md5sum {md5!r} is not 32 hex digits")
        if not errors and seen.setdefault((person, int(imagenum)), number) != number:
            errors.append(f"{person} #{imagenum} is already listed on line {seen[(person, int(imagenum))]}")
        if errors:
            problems += [Problem(source, where, message) for message in errors]
            continue
        entries.append(UrlEntry(person, int(imagenum), url, rect, md5.lower() or None, number))
    if problems and not skip_bad:
        raise DataError(problems, hint="Fix these lines, or pass skip_bad=True (--skip-bad) to leave them out.")
    if not entries:
        raise DataError(problems or [Problem(source, None, "no image entries (only comments or blank lines)")])
    return entries, problems


def _parse_rect(text: str, errors: list[str]) -> tuple[int, int, int, int] | None:
    parts = text.split(",")
    try:
        x0, y0, x1, y1 = (int(round(float(p))) for p in parts)
    except ValueError:
        errors.append(f"rect {text!r} is not four numbers x0,y0,x1,y1")
        return None
    if x1 <= x0 or y1 <= y0:
        errors.append(f"rect {text!r} is empty (needs x0 < x1 and y0 < y1)")
        return None
    return x0, y0, x1, y1


def fetch(url: str, settings: DownloadSettings) -> bytes:
    """The body of one HTTP answer, or a `_Failure` saying why not and whether a retry may help."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    deadline = time.monotonic() + 4 * settings.timeout
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > settings.max_bytes:
                    raise _Failure("too large", f"more than {settings.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _Failure("timeout", f"download took over {4 * settings.timeout:g} s", retry=True)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        if error.code in (404, 410):
            raise _Failure("dead link", f"HTTP {error.code} {error.reason}") from None
        raise _Failure("http error", f"HTTP {error.code} {error.reason}", retry=error.code == 429 or error.code >= 500) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (socket.timeout, TimeoutError)):
            raise _Failure("timeout", f"no answer within {settings.timeout:g} s", retry=True) from None
        if isinstance(error.reason, socket.gaierror):
            raise _Failure("dead link", f"host not found ({error.reason})") from None
        raise _Failure("dead link", f"cannot connect ({error.reason})", retry=True) from None
    except (socket.timeout, TimeoutError):
        raise _Failure("timeout", f"no answer within {settings.timeout:g} s", retry=True) from None
    except (http.client.HTTPException, ConnectionError, OSError) as error:
        raise _Failure("connection error", f"{type(error).__name__}: {error}", retry=True) from None


def _existing_file(folder: Path, imagenum: int) -> Path | None:
    """A valid image saved for this entry by an earlier run; broken leftovers are removed."""
    for path in sorted(folder.glob(f"{imagenum}.*")):
        if path.suffix == ".part":
            continue
        if image_file_problem(path) is None:
            return path
        path.unlink()
    return None


def _checked_image(data: bytes, entry: UrlEntry, crop: bool) -> tuple[bytes, str]:
    """Verify the checksum and that the bytes are an image; return what to write and its extension."""
    if entry.md5 and hashlib.md5(data).hexdigest() != entry.md5:
        raise _Failure("wrong checksum", f"md5 {hashlib.md5(data).hexdigest()} != listed {entry.md5}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if not crop or entry.rect is None:
                return data, _EXTENSIONS.get(image.format or "", ".img")
            x0, y0, x1, y1 = entry.rect
            box = (max(0, x0), max(0, y0), min(image.width, x1), min(image.height, y1))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise _Failure("bad rect", f"rect {entry.rect} lies outside the {image.width}x{image.height} image")
            buffer = io.BytesIO()
            image.crop(box).convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue(), ".png"
    except _Failure:
        raise
    except Exception as error:  # Pillow raises many kinds; all mean "not an image"
        start = data[:60].decode("ascii", "replace").replace("\n", " ").strip()
        raise _Failure("not an image", f"{type(error).__name__}; the answer starts {start!r}") from None


def download_entry(entry: UrlEntry, out_dir: str | os.PathLike, settings: DownloadSettings = DownloadSettings()) -> Outcome:
    """Download one listed photo into `out_dir/<person>/`, unless a valid copy is already there."""
    folder = Path(out_dir) / entry.folder
    folder.mkdir(parents=True, exist_ok=True)
    existing = _existing_file(folder, entry.imagenum)
    if existing is not None:
        return Outcome(entry, "existing", path=str(existing))
    for attempt in range(settings.retries + 1):
        try:
            content, extension = _checked_image(fetch(entry.url, settings), entry, settings.crop)
            break
        except _Failure as failure:
            if not failure.retry or attempt == settings.retries:
                suffix = f" (after {attempt + 1} attempts)" if attempt else ""
                return Outcome(entry, "failed", failure.reason, failure.detail + suffix)
            time.sleep(settings.backoff * 2 ** attempt)
    target = folder / f"{entry.imagenum}{extension}"
    tmp = folder / f"{entry.imagenum}{extension}.part"
    tmp.write_bytes(content)
    os.replace(tmp, target)
    return Outcome(entry, "downloaded", path=str(target))


def prepare_pubfig(urls_file: str | os.PathLike, out_dir: str | os.PathLike, settings: DownloadSettings = DownloadSettings(), *,
                   max_per_person: int | None = None, skip_bad: bool = False, progress: bool = True) -> PrepareReport:
    """Download every photo of a PubFig URL list (resuming), and write `pubfig_report.json` in `out_dir`."""
    entries, bad_lines = read_url_list(urls_file, skip_bad)
    if max_per_person is not None:
        entries = _first_per_person(entries, max_per_person)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_crop(out, settings.crop)
    report = PrepareReport(str(urls_file), str(out), asdict(settings), listed=len(entries), bad_lines=[str(p) for p in bad_lines])
    pool = ThreadPoolExecutor(max_workers=max(1, settings.workers))
    try:
        futures = [pool.submit(download_entry, entry, out, settings) for entry in entries]
        for future in tqdm(as_completed(futures), total=len(futures), desc="downloading PubFig", disable=not progress, unit="img"):
            _record(report, future.result())
    except KeyboardInterrupt:
        report.interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        report.failures.sort(key=lambda f: f["line"])

        write_json(out / REPORT_NAME, report.to_dict())
    return report


def _first_per_person(entries: list[UrlEntry], limit: int) -> list[UrlEntry]:
    """The first `limit` listed photos of each person."""
    taken: Counter = Counter()
    kept = []
    for entry in entries:
        taken[entry.person] += 1
        if taken[entry.person] <= limit:
            kept.append(entry)
    return kept


def _record(report: PrepareReport, outcome: Outcome) -> None:
    if outcome.status == "failed":
        e = outcome.entry
        report.failures.append({"person": e.person, "imagenum": e.imagenum, "url": e.url, "line": e.line, "reason": outcome.reason,
                                "detail": outcome.detail})
    elif outcome.status == "downloaded":
        report.downloaded += 1
    else:
        report.existing += 1


def _check_same_crop(out: Path, crop: bool) -> None:
    """A folder holds either whole photos or face crops: refuse to mix them on resume."""
    marker = out / SETTINGS_NAME
    if marker.exists():
        previous = json.loads(marker.read_text()).get("crop")
        if previous != crop:
            raise DataError([Problem(str(out), None, f"was prepared with crop={previous}; use another --out for crop={crop}")])
    else:
        marker.write_text(json.dumps({"crop": crop}))


def register_prepare(commands: argparse._SubParsersAction) -> None:
    """Add `mem-toolkit prepare pubfig` to the command line."""
    prepare = commands.add_parser("prepare", help="download or lay out a real dataset")
    datasets = prepare.add_subparsers(dest="dataset", required=True)
    pubfig = datasets.add_parser("pubfig", help="download PubFig photos from its URL list into one folder per person")
    pubfig.add_argument("--urls", required=True, help="dev_urls.txt or eval_urls.txt (tab-separated person, imagenum, url, rect[, md5sum])")
    pubfig.add_argument("--out", required=True, help="output folder: <out>/<Person_Name>/<imagenum>.<ext> and pubfig_report.json")
    pubfig.add_argument("--crop", action="store_true", help="keep only the face rectangle given in the list (saved as PNG)")
    pubfig.add_argument("--timeout", type=float, default=15.0, help="seconds to connect and per read (a whole file gets 4x)")
    pubfig.add_argument("--retries", type=int, default=3, help="extra attempts after a timeout, connection error or HTTP 5xx/429")
    pubfig.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry, doubled each time")
    pubfig.add_argument("--workers", type=int, default=8, help="parallel downloads")
    pubfig.add_argument("--max-per-person", type=int, help="download at most this many photos per person (the first listed)")
    pubfig.add_argument("--skip-bad", action="store_true", help="leave out malformed lines and report them, instead of stopping")
    pubfig.set_defaults(func=_cmd_prepare_pubfig)


def _cmd_prepare_pubfig(args) -> int:
    settings = DownloadSettings(timeout=args.timeout, retries=args.retries, backoff=args.backoff, workers=args.workers, crop=args.crop)
    report = prepare_pubfig(args.urls, args.out, settings, max_per_person=args.max_per_person, skip_bad=args.skip_bad)
    print(report.summary())
    print(f"report: {Path(args.out) / REPORT_NAME}")
    return 0 if report.downloaded + report.existing else 1

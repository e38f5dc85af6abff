"""One run per output folder: a lock file holding the owner's pid, released by the kernel when the owner dies.

The lock is an `flock` on `FOLDER/.mem-toolkit.lock` (POSIX). A second run on the same folder is
refused with a line naming the folder and the holder; a lock file left by a process that died (a
killed run, a crash) holds no `flock` any more and is taken over. Without `fcntl` (Windows) no
lock is taken.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".mem-toolkit.lock"


class FolderLocked(RuntimeError):
    """Another live run holds the output folder."""


def _holder(text: str) -> str:
    """The lock file's content as words: pid, host, command, start time."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no readable lock record"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 65536).decode("utf-8", "replace")


@contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `folder` (created if need be) for this process while the block runs; FolderLocked if another live run holds it.

    Under torchrun rank 0 holds it for the whole group (a failure on rank 0 makes torchrun stop the others).
    """
    from . import distributed

    if not distributed.is_main():
        yield Path(folder)
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield Path(folder)
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(_read(fd))
            os.close(fd)
            raise FolderLocked(f"{folder} is in use by another run ({holder}); wait for it to finish or choose another --out") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break  # locked the file that is at `path` now, not one its previous owner had just removed
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _read(fd)
    if previous.strip():
        print(f"note: took over the lock of {folder} from a run that is no longer alive ({_holder(previous)})", file=sys.stderr)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    try:
        yield folder
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a run refused before any work leaves no empty folder behind

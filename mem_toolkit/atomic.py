"""Atomic file writes: a temp file, fsync, rename; a failed write (a full disk) leaves the old file as it was."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

from .errors import OutputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], sync: bool = True) -> Path:
    """Write `path` through `write(temp_path)`, then fsync (unless `sync=False`: many small files) and rename over `path`.

    On any OSError (ENOSPC, EDQUOT, EACCES, ...) the temp file is removed and an OutputError says
    in one line what could not be written and that the previous version of `path` is unchanged.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if sync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        kept = "its previous version is unchanged" if existed else "nothing was written there"
        raise OutputError(f"could not write {path} ({error.strerror or error}); {kept}") from error
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: dict | Sequence) -> None:
    """Atomic JSON write (temp file + rename); a failed write leaves the previous file as it was."""
    write_text(path, json.dumps(data, indent=2))

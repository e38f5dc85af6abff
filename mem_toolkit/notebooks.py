"""Execute the curated notebooks top to bottom (nbclient) into a run folder: executed copies and HTML (nbconvert).

`python -m mem_toolkit.notebooks [--fast] [--out DIR] [NOTEBOOK ...]` is `make notebooks`; the test
suite calls `execute_notebook`. Notebooks read two settings from the environment: `MEM_TOOLKIT_FAST=1`
(tiny sizes, seconds per notebook) and `MEM_TOOLKIT_FIGURES` (where figures are saved).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

FAST_ENV = "MEM_TOOLKIT_FAST"
FIGURES_ENV = "MEM_TOOLKIT_FIGURES"
RUN_DIR_ENV = "MEM_TOOLKIT_RUN_DIR"
KERNEL = "python3"
NOTEBOOK_DIR = Path("notebooks")
# Kernels import the same mem_toolkit as the runner (a checkout beside an installed copy would otherwise differ).
_TOOLKIT_ROOT = str(Path(__file__).resolve().parents[1])
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def fast_mode() -> bool:
    """Whether `MEM_TOOLKIT_FAST=1` asks for tiny sizes."""
    return os.environ.get(FAST_ENV, "") == "1"


@dataclass
class NotebookRun:
    """One executed notebook: where its executed copy and HTML are, how long it took, and the error if a cell failed."""

    source: Path
    executed: Path
    html: Path
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute_notebook(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fast: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: int = 1800,
    kernel_name: str = KERNEL,
) -> NotebookRun:
    """Run every cell of `source` in a fresh kernel (working directory: the notebook's folder) and write
    `<name>.ipynb` (with outputs) and `<name>.html` into `out_dir`, also when a cell fails."""
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = Path(source).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(source, as_version=4)
    environment = dict(os.environ) | {FAST_ENV: "1" if fast else "0"} | dict(env or {})
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [_TOOLKIT_ROOT, environment.get("PYTHONPATH")]))
    client = NotebookClient(notebook, timeout=timeout, startup_timeout=180, kernel_name=kernel_name,  # a busy machine starts kernels slowly
                            resources={"metadata": {"path": str(source.parent)}})
    started, error = time.perf_counter(), None
    try:
        client.execute(env=environment)
    except NoSuchKernel:
        raise RuntimeError(f"no Jupyter kernel named {kernel_name!r} in this environment; register it with "
                           f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}` (`make` does this)") from None
    except CellExecutionError as failure:
        error = _ANSI_COLOUR.sub("", str(failure))  # tracebacks come coloured for a terminal
    seconds = time.perf_counter() - started
    executed = _write_text(out_dir / source.name, nbformat.writes(notebook))
    html = _write_text(out_dir / f"{source.stem}.html", _to_html(notebook))
    return NotebookRun(source, executed, html, seconds, error)


def run_notebooks(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    fast: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: int = 1800,
    progress: bool = True,
) -> list[NotebookRun]:
    """Execute notebooks one after the other into `out_dir` (figures into `out_dir/figures`); writes `summary.json`."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    env = {FIGURES_ENV: str((out_dir / "figures").resolve())} | dict(env or {})
    runs = []
    for source in tqdm(list(sources), desc="notebooks", unit="notebook", disable=not progress):
        run = execute_notebook(source, out_dir, fast=fast, env=env, timeout=timeout)
        runs.append(run)
        if progress:
            tqdm.write(f"{'ok' if run.ok else 'FAILED'}  {Path(source).name}  {run.seconds:.0f} s  -> {run.html}")
    summary = [asdict(run) | {"source": str(run.source), "executed": str(run.executed), "html": str(run.html)} for run in runs]
    _write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return runs


def _to_html(notebook) -> str:
    from nbconvert import HTMLExporter

    body, _resources = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return body


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: execute the notebooks into runs/notebooks/<timestamp>/; exit status 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m mem_toolkit.notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help=f"notebooks to run (default: {NOTEBOOK_DIR}/*.ipynb)")
    parser.add_argument("--out", help="output folder (default: runs/notebooks/<timestamp>)")
    parser.add_argument("--fast", action="store_true", default=fast_mode(), help=f"tiny sizes (also: {FAST_ENV}=1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run")
    parser.add_argument("--threads", type=int, help="CPU threads for torch in the kernels (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    sources = [Path(p) for p in args.notebooks] or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    missing = [str(p) for p in sources if not p.is_file()]
    if missing or not sources:
        print(f"error: notebooks not found: {missing or f'none in {NOTEBOOK_DIR}/'}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / "notebooks" / time.strftime("%Y%m%d-%H%M%S"))
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    runs = run_notebooks(sources, out, fast=args.fast, env=env, timeout=args.timeout)
    failed = [run for run in runs if not run.ok]
    for run in failed:
        print(f"\n{run.source.name} failed:\n{run.error}", file=sys.stderr)
    print(f"{len(runs) - len(failed)} of {len(runs)} notebooks ran; executed copies and HTML in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""environment.yml, pyproject.toml, Makefile and .ci/run agree on what gets installed and run."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("notebooks", "dev")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_pip_list(text: str) -> list[str]:
    """The entries of the `- pip:` list of a conda environment file (a tiny YAML reading)."""
    entries: list[str] = []
    pip_indent = None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        indent = len(stripped) - len(stripped.lstrip())
        if pip_indent is None:
            if stripped.strip() == "- pip:":
                pip_indent = indent
            continue
        if indent <= pip_indent:
            break
        assert stripped.strip().startswith("- "), f"unexpected line in the pip list: {line!r}"
        entries.append(stripped.strip()[2:].strip())
    return entries


def _conda_dependencies(text: str) -> list[str]:
    """Top-level entries of `dependencies:` that are plain strings (conda packages)."""
    lines = text.splitlines()
    start = lines.index("dependencies:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.startswith("  - ") and not line.strip().endswith(":")]


def test_conda_pip_list_reader_on_a_known_text():
    text = "name: x\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      # c\n      - a==1  # pinned\n      - -e .\nother: 1\n"
    assert _conda_pip_list(text) == ["a==1", "-e ."]
    assert _conda_dependencies(text) == ["python=3.11", "pip"]


def test_environment_installs_exactly_the_pyproject_requirements():
    project = _pyproject()["project"]
    expected = list(project["dependencies"]) + [req for extra in EXTRAS for req in project["optional-dependencies"][extra]]
    listed = _conda_pip_list((ROOT / "environment.yml").read_text())
    assert "-e ." in listed, "environment.yml must install the toolkit itself (-e .)"
    requirements = [entry for entry in listed if entry != "-e ."]
    assert sorted(requirements) == sorted(expected)
    assert len(requirements) == len(set(requirements)), "a requirement is listed twice"


def test_torch_pins_are_the_same_everywhere():
    project = _pyproject()["project"]
    listed = _conda_pip_list((ROOT / "environment.yml").read_text())
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in project["dependencies"]
        assert pin in listed


def test_environment_uses_python_311_and_pip():
    dependencies = _conda_dependencies((ROOT / "environment.yml").read_text())
    assert "python=3.11" in dependencies
    assert "pip" in dependencies


def test_dev_extra_has_the_test_tools():
    names = {req.split(">")[0].split("=")[0].split("<")[0] for req in _pyproject()["project"]["optional-dependencies"]["dev"]}
    assert {"pytest", "playwright"} <= names


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_run_the_documented_commands():
    def dry_run(target: str) -> str:
        env = {**os.environ, "MAKEFLAGS": ""}
        return subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True, env=env).stdout

    assert ".venv/bin/python -m mem_toolkit demo --out runs/demo" in dry_run("demo")
    assert ".venv/bin/python -m pytest -q" in dry_run("test")
    assert "jupyter lab notebooks/" in dry_run("lab")
    assert ".venv/bin/python -m mem_toolkit.notebooks" in dry_run("notebooks")
    makefile = (ROOT / "Makefile").read_text()
    assert ".venv/bin/pip install -e '.[notebooks,dev]'" in makefile.replace("$(BIN)", ".venv/bin")
    assert ".venv/bin/python -m ipykernel install --sys-prefix --name python3" in makefile.replace("$(BIN)", ".venv/bin")


def test_ci_script_is_executable_strict_and_runs_make_test():
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "apt-get install -y" in text and "chromium" in text
    assert text.rstrip().splitlines()[-1] == "make test"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert readme.index("```") < readme.index("\n## ")  # before any section
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]

"""The explorer notebook in a real JupyterLab, driven in headless Chromium: run all, move the sliders, press Run.

Skipped where Chromium or Playwright is missing, except in CI (`CI=true`), where that is a failure.
A screenshot of the explorer is saved to `test-artifacts/explorer.png` (and `explorer-failure.png` on failure).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.status === 'idle';
}"""
STATUS_HAS = "text => { const s = document.querySelector('.mem-explorer-status'); return Boolean(s) && s.innerText.includes(text); }"
TRIGGER_COUNTS = "items => items.map(item => item.querySelectorAll('.mem-trigger-token').length)"


@pytest.fixture
def chromium() -> str:
    """Chromium's path; skip (fail in CI) with the reason when Chromium, Playwright or JupyterLab is missing."""
    problems = []
    chromium = shutil.which("chromium")
    if chromium is None:
        problems.append("Chromium is not installed (apt-get install chromium)")
    for module, package in (("playwright", "playwright"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(module) is None:
            problems.append(f"{package} is not installed (pip install {package})")
    if problems:
        reason = "browser test needs " + "; ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} — CI must run it")
        pytest.skip(reason)
    return chromium


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture
def jupyterlab(chromium, tmp_path):
    """JupyterLab on a free local port, without token, serving a folder that holds a copy of the explorer notebook."""
    root, config = tmp_path / "root", tmp_path / "config"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "06_explorer.ipynb", root / "explorer.ipynb")
    news = config / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no toast over the widgets
    port = _free_port()
    env = dict(os.environ, MEM_TOOLKIT_FAST="1", OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={config / 'settings'}",
               f"--LabApp.workspaces_dir={config / 'workspaces'}"]
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                _get(f"{base}/api/status")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 120 s:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        try:  # shut the kernels down through the server, then the server itself
            for kernel in _get(f"{base}/api/kernels") or []:
                request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", method="DELETE")
                urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


def test_explorer_runs_in_jupyterlab_and_reacts_to_sliders_and_run(chromium, jupyterlab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.set_default_timeout(120_000)
        try:
            page.goto(f"{jupyterlab}/lab/tree/explorer.ipynb")
            page.wait_for_function(KERNEL_IDLE, timeout=180_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # The notebook's last cell runs the first setting (MEM-3, ε = 8) through the widget.
            page.wait_for_function(STATUS_HAS, arg="MEM-3, ε = 8/255: done", timeout=300_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            assert page.eval_on_selector_all(".mem-explorer-captions li", TRIGGER_COUNTS) == [3, 3, 3, 3]
            first_images = page.get_attribute("img.mem-explorer-images", "src")
            assert first_images

            page.locator(".mem-explorer-eps .noUi-handle").focus()
            for _ in range(4):
                page.keyboard.press("ArrowLeft")
            page.locator(".mem-explorer-k .noUi-handle").focus()
            for _ in range(2):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(STATUS_HAS, arg="MEM-5, ε = 4/255: not run yet")  # the kernel saw both sliders move
            assert page.inner_text(".mem-explorer-eps .widget-readout") == "4" and page.inner_text(".mem-explorer-k .widget-readout") == "5"

            page.click(".mem-explorer-run")
            page.wait_for_function(STATUS_HAS, arg="MEM-5, ε = 4/255: done", timeout=300_000)
            assert page.eval_on_selector_all(".mem-explorer-captions li", TRIGGER_COUNTS) == [5, 5, 5, 5]
            assert page.get_attribute("img.mem-explorer-images", "src") not in (None, "", first_images)
            page.locator(".mem-explorer-root").screenshot(path=str(ARTIFACTS / "explorer.png"))

            page.locator(".mem-explorer-k .noUi-handle").focus()
            for _ in range(2):
                page.keyboard.press("ArrowLeft")
            page.wait_for_function(STATUS_HAS, arg="MEM-3, ε = 4/255: not run yet")  # ε = 4 with k = 3 was never run
            page.locator(".mem-explorer-eps .noUi-handle").focus()
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(STATUS_HAS, arg="MEM-3, ε = 8/255: from the cache")  # going back is instant
            assert page.eval_on_selector_all(".mem-explorer-captions li", TRIGGER_COUNTS) == [3, 3, 3, 3]
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "explorer-failure.png"))
            raise
        finally:
            browser.close()

"""The curator in a real browser: JupyterLab on loopback, notebook 02 in Chromium, a click on "drop".

Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) driven by Python
Playwright with ``executable_path`` -- no browser download. The notebook is a copy of
``notebooks/02_curate_rationales.ipynb`` whose parameters cell points at a prepared run
directory, run top to bottom through JupyterLab's own "Run All Cells" command.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mdlab import curate, data, runs
from mdlab.teachers import Rationale

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prepare(root: Path) -> Path:
    """A run directory with rationales for the smoke problems, and notebook 02 pointed at it."""
    import nbformat

    run = root / "run"
    problems = data.load("svamp", "train", limit=4)
    rats = []
    for p in problems:
        rats.append(Rationale(id=f"cot-{p.id}", problem_id=p.id, mode="cot", text=f"So it is {p.answer:g}. "
                              f"The answer is {p.answer:g}.", teacher="handmade", sample=0, answer=None,
                              status="ok", dataset="svamp"))
        rats.append(Rationale(id=f"pot-{p.id}", problem_id=p.id, mode="pot", text=f"ans = {p.answer:g}",
                              teacher="handmade", sample=0, answer=None, status="ok", dataset="svamp"))
    runs.JsonlStore(run / curate.RATIONALES).extend(rats)
    nb = nbformat.read(ROOT / "notebooks" / "02_curate_rationales.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "notebook 02 needs exactly one cell tagged 'parameters'"
    params[0].source = f'profile = "smoke"\nrun_dir = {str(run)!r}\ninteractive = True'
    nbformat.write(nb, root / "02_curate.ipynb")
    return run


@pytest.fixture()
def lab(tmp_path, stop_process):
    """JupyterLab on 127.0.0.1 with token auth, rooted at a temporary directory."""
    root = tmp_path / "root"
    root.mkdir()
    run = _prepare(root)
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "home"
    # nothing from the user's Jupyter set-up (settings, workspaces, config) leaks into the test
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IPYTHONDIR": str(home / "ipython")}
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.close()
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyter.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield {"url": base, "token": token, "run": run, "log": tmp_path / "jupyter.log", "tmp": tmp_path}
    finally:
        stop_process(server)
        log.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install chromium")
def test_drop_in_the_browser_reaches_decisions_jsonl(lab):
    from playwright.sync_api import sync_playwright

    decisions = lab["run"] / curate.DECISIONS
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{lab['url']}/lab/tree/02_curate.ipynb?token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=90_000)
            # run everything once the notebook's kernel is connected and idle (a "Run All" issued
            # while JupyterLab is still starting it asks which kernel to use and runs nothing)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
            drop = page.locator("button.mdlab-drop")
            deadline = time.monotonic() + 180
            run_all = True
            while not drop.is_visible():
                if run_all:
                    page.click(".lm-MenuBar-item:has-text('Run')")
                    page.locator(".lm-Menu-content").get_by_text("Run All Cells", exact=True).click()
                    run_all = False
                accept = page.locator(".jp-Dialog .jp-mod-accept")
                if accept.count() and accept.first.is_visible():
                    accept.first.click()
                    run_all = True
                assert time.monotonic() < deadline, "the curator did not appear within 180 s"
                time.sleep(0.5)
            header = page.locator(".mdlab-curator code").first
            first_id = header.inner_text()
            assert first_id.startswith(("cot-", "pot-"))
            drop.click()
            page.wait_for_function(f"() => !document.querySelector('.mdlab-curator code')"
                                   f".innerText.includes({first_id!r})", timeout=30_000)
            deadline = time.monotonic() + 30
            records = []
            while time.monotonic() < deadline:
                records = runs.JsonlStore(decisions).read()
                if records:
                    break
                time.sleep(0.2)
        except Exception:
            page.screenshot(path=str(lab["tmp"] / "failure.png"))
            raise
        finally:
            browser.close()
    assert records, f"no decision in {decisions}; server log: {lab['log'].read_text()[-2000:]}"
    assert records[-1]["id"] == first_id and records[-1]["action"] == "drop"
    assert (lab["run"] / curate.CURATED).exists()  # the notebook ran to its last cell

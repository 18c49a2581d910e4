"""The curator in a real browser: JupyterLab on loopback, notebook 02 in Chromium, clicks and keys.

Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) driven by Python
Playwright with ``executable_path`` -- no browser download. The notebook is a copy of
``notebooks/02_curate_rationales.ipynb`` whose parameters cell points at a prepared run
directory, run top to bottom through JupyterLab's own "Run All Cells" command. The server (and so
the kernel) imports mdlab from this checkout, whatever is installed.
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
    """A run directory with 112 rationales for the smoke problems, and notebook 02 pointed at it."""
    import nbformat

    run = root / "run"
    problems = data.load("svamp", "train", limit=8)  # the smoke profile's train_limit
    rats = []
    for p in problems:
        for s in range(7):  # enough items for the scripted runs below (1 + 1 + 50 + 50 decisions)
            rats.append(Rationale(id=f"cot-{p.id}-{s}", problem_id=p.id, mode="cot", text=f"So it is "
                                  f"{p.answer:g}, step {s}. The answer is {p.answer:g}.", teacher="handmade",
                                  sample=s, answer=None, status="ok", dataset="svamp"))
            rats.append(Rationale(id=f"pot-{p.id}-{s}", problem_id=p.id, mode="pot", sample=s,
                                  text=f"step = {s}\nans = {p.answer + s % 2:g}", teacher="handmade",
                                  answer=None, status="ok", dataset="svamp"))
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
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IPYTHONDIR": str(home / "ipython"),
           # the kernel inherits this: it must import this checkout's mdlab, not an installed copy
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [x for x in [os.environ.get("PYTHONPATH")] if x])}
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


def _records(path: Path, n: int) -> list[dict]:
    """The decisions in ``path`` once there are ``n`` (the kernel fsyncs each before it redraws)."""
    deadline = time.monotonic() + 30
    while len(records := runs.JsonlStore(path).read()) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return records


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install chromium")
def test_clicks_and_keys_in_the_browser_reach_decisions_jsonl(lab, capsys):
    from playwright.sync_api import sync_playwright

    decisions = lab["run"] / curate.DECISIONS
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        def current() -> str:  # the rationale id the curator shows
            return page.locator(".mdlab-curator .mdlab-id").first.get_attribute("title")

        def moved(before: str) -> str:
            page.wait_for_function("(id) => document.querySelector('.mdlab-curator .mdlab-id').title !== id",
                                   arg=before, timeout=30_000)
            return current()

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
            cells = page.locator(".jp-Notebook .jp-Cell").count()
            first_id = current()
            assert first_id.startswith(("cot-", "pot-"))
            drop.click()
            second_id = moved(first_id)
            assert "dropped" in page.locator(".mdlab-curator .mdlab-message").inner_text()

            # keys, once the curator has focus (a click on its text)
            page.click(".mdlab-curator .mdlab-question")
            assert page.evaluate("document.activeElement.classList.contains('mdlab-curator')")
            page.keyboard.press("ArrowLeft")
            assert moved(second_id) == first_id
            page.keyboard.press("n")
            assert moved(first_id) == second_id
            page.keyboard.press("e")
            editor = page.locator(".mdlab-curator .mdlab-editor textarea")
            editor.wait_for(state="visible", timeout=30_000)
            overflowing = page.evaluate("""() => {
                const text = document.querySelector('.mdlab-curator .mdlab-editor textarea');
                const boxes = [text, text.closest('.mdlab-editor').parentElement, text.closest('.mdlab-curator')];
                return boxes.filter((b) => b.scrollWidth > b.clientWidth + 1 || b.scrollHeight > b.clientHeight + 1)
                            .map((b) => b.className);
            }""")
            assert overflowing == [], f"scrollbars around the editor: {overflowing}"
            page.locator(".mdlab-curator").screenshot(path=str(lab["tmp"] / "curator.png"))  # for a person to look at
            # `e` puts the cursor in the editor: type at once, no click
            page.wait_for_function("document.activeElement === document.querySelector("
                                   "'.mdlab-curator .mdlab-editor textarea')", timeout=30_000)
            page.keyboard.press("Control+End")
            page.keyboard.type(" # kdnpe")  # shortcut letters typed in the editor are text, not actions
            page.click(".mdlab-curator .mdlab-save")
            records = _records(decisions, 2)
            assert [(r["id"], r["action"]) for r in records] == [(first_id, "drop"), (second_id, "edit")]
            assert records[-1]["text"].endswith(" # kdnpe") and current() == second_id

            # saving hands the focus back to the curator: the keys work on without a click
            page.wait_for_function("document.activeElement === document.querySelector('.mdlab-curator')",
                                   timeout=30_000)
            # 50 items by keys, then 50 by clicks; each waits for the next item, as a person would
            seconds = {}
            for method in ("keys", "clicks"):
                start, seen = time.monotonic(), []
                for i in range(50):
                    seen.append(current())
                    action = "keep" if i % 3 == 0 else "drop"  # d d in a row: JupyterLab's "delete cell"
                    if method == "keys":
                        page.keyboard.press(action[0])
                    else:
                        page.click(f".mdlab-curator .mdlab-{action}")
                    moved(seen[-1])
                seconds[method] = time.monotonic() - start
                records = _records(decisions, len(records) + 50)
                assert [(r["id"], r["action"]) for r in records[-50:]] == [
                    (rid, "keep" if i % 3 == 0 else "drop") for i, rid in enumerate(seen)], method
            assert page.locator(".jp-Notebook .jp-Cell").count() == cells  # no key reached the notebook
        except Exception:
            page.screenshot(path=str(lab["tmp"] / "failure.png"))
            raise
        finally:
            browser.close()
    with capsys.disabled():  # in the log even when the test passes
        print(f"\ncurator, scripted run of 50 items: keys {50 * 60 / seconds['keys']:.0f} decisions/min, "
              f"clicks {50 * 60 / seconds['clicks']:.0f} decisions/min (the kernel round trip, not a "
              f"person's hand)")
    assert len(runs.JsonlStore(decisions).read()) == 102
    assert (lab["run"] / curate.CURATED).exists()  # the notebook ran to its last cell

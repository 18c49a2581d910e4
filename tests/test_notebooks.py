"""Notebooks: committed stripped, import-and-drive only, and all five run headless with `smoke`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mdlab.__main__ import STAGES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [ROOT / "notebooks" / name for name in STAGES.values()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_stripped_and_drives_only(path):
    assert path.exists(), f"{path.name} is missing"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs or execution counts; strip them"
    assert "env_report()" in code[0].source, "the first code cell prints versions and device"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "profile" in params[0].source and "run_dir" in params[0].source
    for cell in code:  # anything reusable lives in mdlab/, not in a notebook
        lines = cell.source.splitlines()
        assert not any(line.startswith(("def ", "class ", "async def ")) for line in lines), \
            f"{path.name} defines a function or class; move it into mdlab/"


def _demo(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mdlab", "demo", "--profile", "smoke", "--run-dir", str(run_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_smoke_demo_runs_all_notebooks_then_reuses_them(tmp_path):
    run_dir = tmp_path / "smoke"
    start = time.perf_counter()
    first = _demo(run_dir)
    first_seconds = time.perf_counter() - start
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    for name in STAGES.values():
        assert (run_dir / "notebooks" / name).exists()
    for artifact in ("rationales.jsonl", "manifest.json", "curves.csv", "results.md"):
        assert (run_dir / artifact).exists(), f"{artifact} missing after the smoke demo"
    assert list(run_dir.glob("students/*/adapter/adapter_config.json")), "no trained adapter"
    assert list(run_dir.glob("students/*/samples.jsonl")), "no samples"
    assert list((run_dir / "figures").glob("*.png")), "no figures"
    times = json.loads((run_dir / "demo_times.json").read_text())
    assert all(seconds is not None for seconds in times["stages"].values())
    print(f"smoke demo: {first_seconds:.0f} s", {k: round(v) for k, v in times["stages"].items()})

    # the launcher entry point (`accelerate launch -m mdlab.train ...`) is notebook 03's code path: same adapters
    cli = subprocess.run([sys.executable, "-m", "mdlab.train", "--config", "smoke", "--run-dir", str(run_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    adapters = sorted(run_dir.glob("students/*/adapter"))
    assert all(f"{path.parent.name}: {path}" in cli.stdout for path in adapters), cli.stdout[-2000:]
    assert cli.stdout.count("reusing the finished adapter") == len(adapters), cli.stdout[-2000:]

    second = _demo(run_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((run_dir / "demo_times.json").read_text())
    assert again["reused"] == list(STAGES), "finished stages were not reused"
    assert again["last_seconds"] < 60
    assert again["stages"] == times["stages"], "a reused stage lost the time of the run that produced it"

"""Run directories, JSONL stores that survive kills, manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdlab import data, runs


def test_append_and_read_roundtrip(tmp_path):
    store = runs.JsonlStore(tmp_path / "a.jsonl")
    assert store.read() == []
    store.append({"x": 1, "text": "caf\u00e9\nline"})
    store.extend([{"x": 2}, {"x": 3}])
    assert [r["x"] for r in store.read()] == [1, 2, 3]
    assert store.read()[0]["text"] == "caf\u00e9\nline"


def test_torn_last_line_dropped_and_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n{"x": 2}\n{"x": 3, "te')
    store = runs.JsonlStore(path)
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["x"] for r in store.read()] == [1, 2]
    store.append({"x": 4})  # the next append cuts the torn tail off first
    assert [r["x"] for r in runs.JsonlStore(path).read()] == [1, 2, 4]


def test_corruption_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\nnot json\n{"x": 3}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2: corrupt record"):
        runs.JsonlStore(path).read()


WRITER = """
import sys
from mdlab import runs
store = runs.JsonlStore(sys.argv[1])
i = 0
while True:
    store.append({"i": i, "pad": "x" * 5000})
    i += 1
"""


def test_killed_writer_loses_nothing_complete(tmp_path):
    """A real process appending in a loop, SIGKILLed: every complete record reads back in order."""
    path = tmp_path / "k.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    deadline = time.time() + 30
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 200_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = runs.JsonlStore(path).read()
    assert len(records) > 10
    assert [r["i"] for r in records] == list(range(len(records)))


def test_manifest_merges_stages(tmp_path):
    data.load("mawps-addsub")
    runs.update_manifest(tmp_path, "teachers", config={"n": 1}, seed=0)
    manifest = runs.update_manifest(tmp_path, "train", config={"lr": 1e-4})
    assert set(manifest["stages"]) == {"teachers", "train"}
    assert manifest["stages"]["teachers"]["seed"] == 0
    assert "mawps/pal/mawpsaddsub.jsonl" in manifest["data_files"]
    assert manifest["versions"]["python"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_run_dir_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "RUNS_ROOT", tmp_path / "runs")
    assert runs.run_dir("smoke") == tmp_path / "runs" / "smoke"
    assert runs.run_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert runs.run_dir("runs/cpu") == runs.PROJECT / "runs" / "cpu"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()  # resolving creates nothing


KERNEL = """
from mdlab import curate, runs
print(runs.run_dir("cpu"))
print(runs.run_dir("runs/mdlab-test-absent"))
curate.load_rationales(runs.run_dir("runs/mdlab-test-absent"))
"""


def test_relative_run_dir_from_a_kernel_in_notebooks(tmp_path):
    """A Jupyter kernel starts in notebooks/: "runs/x" still means <project>/runs/x (as for `make demo`), a bare
    name lives under $MDLAB_RUNS, the error names the absolute path, and reading creates no folder."""
    project = Path(runs.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(project), "MDLAB_RUNS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", KERNEL], cwd=project / "notebooks", env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    absent = project / "runs" / "mdlab-test-absent"
    assert done.stdout.splitlines() == [str(tmp_path / "cpu"), str(absent)], done.stderr[-2000:]
    assert f"FileNotFoundError: {absent / 'rationales.jsonl'} does not exist" in done.stderr
    assert not absent.exists() and not (project / "notebooks" / "runs" / "mdlab-test-absent").exists()


def test_any_string_is_stored_lone_surrogates_included(tmp_path):
    # Text that left a sandboxed program (an error message, a key) can hold lone surrogates;
    # the store must neither raise nor corrupt the file, and must read back the same strings.
    odd = ["\udc80", "a\ud800b", "\udfff\ud800", "\\\udc80", "caf\u00e9 \U0001f600", "\x00\n\"'"]
    store = runs.JsonlStore(tmp_path / "odd.jsonl")
    records = [{"error": s, s: i} for i, s in enumerate(odd)]
    store.extend(records)
    store.append({"nested": [{"deep": odd}]})
    assert store.read() == records + [{"nested": [{"deep": odd}]}]
    (tmp_path / "odd.jsonl").read_bytes().decode("utf-8")  # strict UTF-8 on disk
    runs.write_json_atomic(tmp_path / "m.json", {"x": odd})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"x": odd}

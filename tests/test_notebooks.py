"""Notebooks: committed stripped, import-and-drive only, and all five run headless with `smoke`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mdlab.__main__ import STAGES, course, ipc_kernels

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
    assert params[0].source.startswith('profile = "cpu"'), "a person opening the notebook gets the real run"
    stage = next(stage for stage, name in STAGES.items() if name == path.name)
    assert f'config.expected_time(prof, "{stage}")' in code[code.index(params[0]) + 1].source
    for cell in code:  # anything reusable lives in mdlab/, not in a notebook
        lines = cell.source.splitlines()
        assert not any(line.startswith(("def ", "class ", "async def ")) for line in lines), \
            f"{path.name} defines a function or class; move it into mdlab/"


def test_expected_time_is_measured_per_profile():
    from mdlab import config

    assert config.expected_time(config.load("cpu"), "train") == \
        "profile cpu: about 11 min for this notebook on a 2-core laptop (16 min for all five)"
    assert "not been timed" in config.expected_time(config.load("gpu"), "train")


HEADLESS = """
import mdlab, bitsandbytes, tqdm.auto
print(tqdm.auto.tqdm(range(3)).disable)
"""


def test_headless_kernels_have_no_progress_bars_and_bitsandbytes_is_quiet():
    """`python -m mdlab demo` sets MDLAB_HEADLESS for its kernels: a widget bar would be saved frozen at 0%.
    bitsandbytes' note about the optional `kernels` package (CPUs with AVX512-BF16) is not shown."""
    env = {**os.environ, "MDLAB_HEADLESS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", HEADLESS], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True"] and "kernels-community" not in done.stderr, done.stderr[-3000:]


def test_html_table_needs_no_css():
    import pandas as pd

    import mdlab

    frame = pd.DataFrame({"problem": ["p1"], "pot": ["x = 1 < 2\nif x:\n    ans = 3"]}).set_index("problem")
    html = mdlab.html_table(frame).data
    assert "<style" not in html and " style=" not in html and "p1" in html  # the index is a column
    assert "x = 1 &lt; 2<br>if x:<br>&nbsp;&nbsp;&nbsp;&nbsp;ans = 3" in html


# what the kernel bound: the absolute socket prefix, and how many socket files it has now
SOCKETS = """
import glob, os
from ipykernel.connect import get_connection_info
prefix = os.path.abspath(get_connection_info(unpack=True)["ip"])
print("sockets", prefix, len(glob.glob(prefix + "-*")))
"""


def test_a_stage_leaves_no_kernel_sockets_and_is_reused(tmp_path, monkeypatch):
    """run_stage's real path (papermill, an IPC kernel) on a small notebook standing in for stage 05: the kernel's
    socket files go to a private folder that is removed afterwards, not to the host's or the kernel's current
    directory (the project root), where a killed kernel would leave them; a second call skips the finished stage."""
    import tempfile

    from mdlab import __main__ as cli

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('profile = "cpu"\nrun_dir = None', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(SOCKETS)]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / STAGES["report"])
    monkeypatch.setattr(cli, "NOTEBOOKS", tmp_path / "notebooks")
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    run_dir = tmp_path / "run"
    root_before = set(ROOT.glob("kernel-ipc-*"))  # left by kernels before this fix, or killed ones
    log: list[str] = []
    assert cli.run_stage("report", "smoke", run_dir, log=log.append) is not None
    shown = _outputs(run_dir / "notebooks" / STAGES["report"])
    prefix, sockets = re.search(r"sockets (\S+) (\d+)", shown).groups()
    assert Path(prefix).parent.parent == temp and int(sockets) == 5, shown  # shell, iopub, stdin, control, hb
    assert list(cwd.iterdir()) == [] and list(temp.iterdir()) == []  # nothing left, the private folder removed
    assert set(ROOT.glob("kernel-ipc-*")) <= root_before
    assert cli.run_stage("report", "smoke", run_dir, log=log.append) is None
    assert log[-1].startswith("[report] finished before with this notebook and profile: reused"), log


WIDGET = "application/vnd.jupyter.widget"
NOISE = ["kernels-community", "FutureWarning", WIDGET, "Training Loss", "](figures/"]


def _outputs(path: Path) -> str:
    """Everything a notebook's code cells printed or displayed (images left out), and its metadata."""
    nb = nbformat.read(path, as_version=4)
    parts = [json.dumps(nb.metadata)]
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [f"{mime} {value}" for mime, value in out.get("data", {}).items()
                      if not mime.startswith("image/")]
    return "\n".join(parts)


def _demo(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mdlab", "demo", "--profile", "smoke", "--run-dir", str(run_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke demo shared by the slow tests below: (run directory, the finished process, seconds)."""
    run_dir = tmp_path_factory.mktemp("demo") / "smoke"
    start = time.perf_counter()
    done = _demo(run_dir)
    return run_dir, done, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the shared smoke demo runs in this test's setup
def test_smoke_demo_runs_all_notebooks_then_reuses_them(smoke_run, tmp_path):
    run_dir, first, first_seconds = smoke_run
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    for name in STAGES.values():
        shown = _outputs(run_dir / "notebooks" / name)
        assert not [noise for noise in NOISE if noise in shown], (name, [n for n in NOISE if n in shown])
        assert not re.search(r"seed \d{8}|\b(md|cot|pot):[0-9a-f]{12}\b", shown), f"{name}: seeds or hashes"
    assert "num_rounds = 2<br>" in _outputs(run_dir / "notebooks" / STAGES["generate"])  # side by side
    for artifact in ("rationales.jsonl", "manifest.json", "curves.csv", "results.md"):
        assert (run_dir / artifact).exists(), f"{artifact} missing after the smoke demo"
    assert list(run_dir.glob("students/*/adapter/adapter_config.json")), "no trained adapter"
    assert list(run_dir.glob("students/*/samples.jsonl")), "no samples"
    assert list((run_dir / "figures").glob("*.png")), "no figures"
    results = json.loads((run_dir / "results.json").read_text())  # docs/design.md's shape
    assert set(results) == {"rows", "comparisons"} and results["rows"]
    for row in results["rows"]:
        assert set(row) == {"student", "policy", "k", "n_problems", "accuracy", "lo", "hi"}, row
        assert row["lo"] - 1e-9 <= row["accuracy"] <= row["hi"] + 1e-9 and 0 <= row["lo"] and row["hi"] <= 100
        assert not row["policy"].startswith("greedy_") or row["k"] == 1
    shown = {(r["student"], r["policy"]) for r in results["rows"]}
    assert {("md", "greedy_pot"), ("md", "mixed"), ("cot+pot", "ensemble")} <= shown
    claims = {(c["a"], c["b"]): c for c in results["comparisons"]}
    assert ("md/mixed@4", "cot+pot/ensemble@4") in claims
    assert "p_mcnemar" in claims[("md/greedy_pot", "pot/greedy_pot")]
    assert all(c["lo"] - 1e-9 <= c["diff"] <= c["hi"] + 1e-9 for c in claims.values())
    assert (run_dir / "figures" / "teacher_self_consistency.png").exists()
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
    reused = [line.split("]")[0][1:] for line in second.stdout.splitlines() if "finished before" in line]
    assert reused == list(STAGES) and "] running " not in second.stdout, second.stdout[-2000:]
    assert again["stages"] == times["stages"], "a reused stage lost the time of the run that produced it"

    # one stage from the shell, forced: the stages below it are no longer finished; it and those above are
    stage = _mdlab("evaluate", "--config", "smoke", "--run-dir", str(run_dir), "--force")
    assert "[evaluate] running 04_self_consistency.ipynb" in stage.stdout, stage.stdout[-2000:]
    third = _demo(run_dir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((run_dir / "demo_times.json").read_text())["reused"] == list(STAGES)[:-1]
    assert "[report] running 05_results.ipynb" in third.stdout

    listing = _mdlab("datasets").stdout
    assert any(line.split()[:2] == ["svamp", "test"] for line in listing.splitlines()), listing
    out = run_dir.parent / "docs"
    _mdlab("docs", "--run", str(run_dir), "--out", str(out))
    assert json.loads((out / "results.json").read_text()) == json.loads((run_dir / "results.json").read_text())
    assert {p.name for p in out.glob("*.png")} == {p.name for p in (run_dir / "figures").glob("*.png")}
    assert "](greedy.png)" in (out / "results.md").read_text()  # the figures sit beside it there

    # the executed notebooks as HTML pages to read; widget views saved by an interactive run are left out
    executed = run_dir / "notebooks" / STAGES["generate"]
    nb = nbformat.read(executed, as_version=4)
    nb.cells[-1].outputs.append(nbformat.v4.new_output("display_data", {WIDGET + "-view+json": {"model_id": "0"}}))
    nbformat.write(nb, executed)
    _mdlab("html", "--run", str(run_dir), "--out", str(tmp_path / "html"))
    pages = sorted((tmp_path / "html").glob("*.html"))
    assert [p.stem for p in pages] == [Path(name).stem for name in STAGES.values()]
    for page in pages:
        text = page.read_text()
        assert f"run directory: {run_dir}" in text and WIDGET not in text, page.name

    # shipped to a class: no checkpoints, and notebook 04 starts from the unpacked run, reusing its samples
    (run_dir / "students" / "md" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run_dir / "students" / "md" / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"0" * 1000)
    packed = _mdlab("pack", str(run_dir), "--out", str(tmp_path / "class.tar.gz"))
    assert "MB)" in packed.stdout, packed.stdout
    (tmp_path / "class").mkdir()
    subprocess.run(["tar", "xzf", str(tmp_path / "class.tar.gz"), "-C", str(tmp_path / "class")], check=True)
    unpacked = tmp_path / "class" / run_dir.name
    assert not list(unpacked.rglob("checkpoint*")) and list(unpacked.glob("students/*/adapter/*.safetensors"))
    samples = {p: p.read_bytes() for p in unpacked.glob("students/*/samples.jsonl")}
    again = _mdlab("evaluate", "--config", str(unpacked / "profile.yaml"), "--run-dir", str(unpacked))
    assert "[evaluate] running 04_self_consistency.ipynb" in again.stdout, again.stdout[-2000:]
    assert samples and {p: p.read_bytes() for p in samples} == samples, "notebook 04 sampled again"


def _exercises(nb) -> list[tuple[str, str, str]]:
    """(grade id, solution cell source, check cell source) of each exercise, from nbgrader's cell metadata."""
    cells = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if "nbgrader" in c.metadata}
    return [(gid, source, cells[f"{gid}-check"]) for gid, source in cells.items() if not gid.endswith("-check")]


def _solution_lines(source: str) -> list[str]:
    inside, out = False, []
    for line in source.splitlines():
        if line.strip() in ("### BEGIN SOLUTION", "### END SOLUTION"):
            inside = line.strip() == "### BEGIN SOLUTION"
        elif inside and line.strip():
            out.append(line.strip())
    return out


# exercises whose check needs only mdlab, not a run directory: executed here, the solution and the stub
SELF_CONTAINED = ("ex01-extract", "ex01-program", "ex02-sandbox", "ex03-qlora", "ex04-vote", "ex04-acck",
                  "ex04-binomial")


def test_course_student_copies_stub_every_solution_and_keep_every_check(tmp_path):
    course(tmp_path)
    ran = []
    for name in STAGES.values():
        committed = (ROOT / "notebooks" / name).read_bytes()
        assert (tmp_path / "instructor" / name).read_bytes() == committed
        instructor = _exercises(nbformat.reads(committed.decode(), as_version=4))
        student_nb = nbformat.read(tmp_path / "student" / name, as_version=4)
        student = {gid: (solution, check) for gid, solution, check in _exercises(student_nb)}
        assert 2 <= len(instructor) <= 4, f"{name}: {len(instructor)} exercises"
        text = "\n".join(c.source for c in student_nb.cells)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        code = [c for c in student_nb.cells if c.cell_type == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{name}: outputs left"
        for gid, solution, check in instructor:
            answer = _solution_lines(solution)
            assert answer and "assert" in check, f"{name} {gid}: a solution block and a check with asserts"
            leaked = [line for line in answer if line in text]
            assert not leaked, f"{name} {gid}: the student copy shows solution lines {leaked}"
            assert student[gid][1] == check, f"{name} {gid}: the check cell changed"
            assert student[gid][0].endswith("raise NotImplementedError()")
            if gid not in SELF_CONTAINED:
                continue
            for version, source in (("solution", solution), ("stub", student[gid][0])):
                namespace: dict = {}
                exec("from mdlab import answers, data, evaluate, models, sandbox, train", namespace)
                try:
                    exec(source, namespace)
                except NotImplementedError:
                    assert version == "stub"
                try:
                    exec(check, namespace)
                    passed = True
                except (AssertionError, NameError):
                    passed = False
                assert passed == (version == "solution"), f"{name} {gid}: the check's verdict on the {version}"
            ran.append(gid)
    assert sorted(ran) == sorted(SELF_CONTAINED)


@pytest.mark.slow
def test_instructor_checks_pass_and_student_checks_fail_on_a_smoke_run(smoke_run, tmp_path):
    """The demo ran notebooks/ (the instructor copies, byte for byte): every check cell ran cleanly. The student
    copy of 05, run on the same directory with errors allowed, fails every check and nothing else."""
    import nbclient

    run_dir, demo, _ = smoke_run
    assert demo.returncode == 0, demo.stderr[-3000:]
    for name in STAGES.values():
        executed = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        checks = [c for c in executed.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert checks and all(c.execution_count for c in checks), f"{name}: a check cell did not run"
        assert not any(o.output_type == "error" for c in checks for o in c.outputs), name
    course(tmp_path)
    nb = nbformat.read(tmp_path / "student" / STAGES["report"], as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f'profile = "smoke"\nrun_dir = {str(run_dir)!r}'
    with ipc_kernels() as manager:
        nbclient.NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=600,
                                kernel_manager_class=manager, resources={"metadata": {"path": str(ROOT)}}).execute()
    failed = {c.metadata.get("nbgrader", {}).get("grade_id", c.get("id")) for c in nb.cells
              if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)}
    exercises = [(gid, f"{gid}-check") for gid, _, _ in _exercises(nb)]
    assert failed == {gid for pair in exercises for gid in pair}, failed


def _mdlab(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mdlab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, f"python -m mdlab {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _tiny_overrides(name: str) -> list[str]:
    """``--set`` arguments that swap a committed profile's student for `tiny`, with a few problems and small k;
    every other setting (teachers, live: [], students, base, baseline_k, transfer sets) stays as committed."""
    from mdlab import config

    committed = config.load(name)
    out = ["data.train_limit=6", "data.test_limit=3", "train.model=tiny", "train.max_steps=2", "train.save_steps=2",
           "train.max_problems=null", "train.batch_size=2", "evaluate.k=2", "evaluate.max_new_tokens=16",
           "evaluate.bootstrap=50"]
    if committed.teacher.live:
        out += ["teacher.live=[hf:tiny]", "teacher.live_problems=1", "teacher.max_tokens=16", "teacher.shots=2"]
    if committed.evaluate.baseline_k:
        out.append("evaluate.baseline_k=2")
    if committed.evaluate.transfer:
        out.append("evaluate.transfer_limit=2")
    return [arg for item in out for arg in ("--set", item)]


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.stem for p in sorted((ROOT / "configs").glob("*.yaml")) if p.stem != "smoke"])
def test_every_committed_profile_runs_end_to_end(name, tmp_path):
    """All five stages of each profile in configs/ (smoke has its own test), the student swapped for `tiny`."""
    from mdlab import config

    committed = config.load(name)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "mdlab", "demo", "--profile", name, "--run-dir", str(run_dir),
                           *_tiny_overrides(name)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = json.loads((run_dir / "results.json").read_text())
    students = {row["student"] for row in results["rows"]}
    assert set(committed.train.students) <= students
    assert ("base" in students) == committed.evaluate.base
    datasets = {row.get("dataset") for row in results["rows"]} - {None}
    assert datasets == {spec.split(":")[0] for spec in committed.evaluate.transfer}
    assert config.load(run_dir / "profile.yaml").train.model == "tiny"  # what the notebooks read
    if name != "laptop":
        return
    # the raw material under docs/<run> rebuilds the same report without the adapters
    out = tmp_path / "docs"
    subprocess.run([sys.executable, "-m", "mdlab", "docs", "--run", str(run_dir), "--out", str(out), "--raw"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    assert list(out.glob("students/*/samples.jsonl.gz")) and not list(out.rglob("adapter_model.safetensors"))
    again = subprocess.run([sys.executable, "-m", "mdlab", "recompute", str(out), "--run-dir",
                            str(tmp_path / "again")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "results.json").read_text()) == results

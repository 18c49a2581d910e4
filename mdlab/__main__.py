"""``python -m mdlab <command>``: the notebooks' stages from a shell.

``demo --profile cpu`` executes notebooks 01-05 in order with papermill into ``runs/<profile>/``
(the executed notebooks land in ``runs/<profile>/notebooks/``), prints each stage's wall time,
and ends with the headline table and the figure paths. A stage whose notebook finished
before with the same notebook and profile is skipped, so a second ``make demo`` takes
seconds; an interrupted one resumes, because every stage appends to resumable stores.
``<stage> --config configs/X.yaml`` runs one stage's notebook the same way. Running the
notebooks themselves, rather than a second copy of their logic, keeps one code path. ``pack RUN`` ships a
finished run to a class (a .tar.gz without checkpoints); ``html --run RUN`` renders its executed notebooks.
``course --out DIR`` writes a class's copies: ``DIR/student/`` with every exercise's solution
(nbgrader's ``### BEGIN SOLUTION`` ... ``### END SOLUTION``) replaced by a stub, and ``DIR/instructor/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SET_HELP = ("override one profile setting, validated like the YAML (repeatable): --set train.model=tiny "
            "--set evaluate.k=4; values are read as YAML ([md, pot], null)")
STAGES = {  # command -> notebook
    "generate": "01_generate_rationales.ipynb",
    "curate": "02_curate_rationales.ipynb",
    "train": "03_train_md_qlora.ipynb",
    "evaluate": "04_self_consistency.ipynb",
    "report": "05_results.ipynb",
}


def _datasets(_args) -> int:
    from mdlab import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = data.summary()
    print(f"{'dataset':<18}{'split':<10}{'problems':>9}{'numeric':>9}  license")
    for row in rows:
        print(f"{row['dataset']:<18}{row['split']:<10}{row['problems']:>9}{row['numeric_answers']:>9}  {row['license']}")
    return 0


# What each stage hands the next one: when these change (a person re-curated in JupyterLab, a stage was
# rerun), every stage below them runs again.
OUTPUTS = {"generate": ["rationales.jsonl"], "curate": ["curated.jsonl"],
           "train": ["students/*/adapter/*.safetensors"], "evaluate": ["students/*/samples.jsonl"]}


def _fingerprint(stage: str, profile_path: Path, run_dir: Path) -> str:
    """Notebook + profile + the previous stage's marker and outputs: a rerun upstream invalidates downstream."""
    names = list(STAGES)
    digest = hashlib.sha256((NOTEBOOKS / STAGES[stage]).read_bytes())
    digest.update(profile_path.read_bytes())
    if names.index(stage) > 0:
        upstream = names[names.index(stage) - 1]
        previous = run_dir / ".stages" / f"{upstream}.done"
        digest.update(previous.read_bytes() if previous.exists() else b"not run")
        for path in sorted(p for pattern in OUTPUTS[upstream] for p in run_dir.glob(pattern)):
            stat = path.stat()
            digest.update(f"{path.relative_to(run_dir)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def ipc_kernels():
    """A kernel manager class on local IPC sockets: the default loopback TCP makes every kernel warn about plain
    text. jupyter_client names the sockets ``<ip>-<port>`` and would put them in the current directory (the
    project root), where a killed kernel leaves them; here they live in a private temporary folder (0700, so no
    other user can connect), removed when the block ends."""
    from jupyter_client.manager import AsyncKernelManager

    folder = tempfile.mkdtemp(prefix="mdlab-kernels-")

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(folder, "kernel"))  # for transport "ipc", the socket path prefix
            super().__init__(**kwargs)

    try:
        yield IPCKernelManager
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_stage(stage: str, profile: str, run_dir: Path, *, force: bool = False, log=print) -> float | None:
    """Execute one stage's notebook headless; returns seconds, or None when skipped as finished."""
    import papermill

    from mdlab import config

    notebook = NOTEBOOKS / STAGES[stage]
    profile_path = config.profile_path(profile)
    config.load(profile)  # fail here, before a kernel starts, on a bad profile
    marker = run_dir / ".stages" / f"{stage}.done"
    fingerprint = _fingerprint(stage, profile_path, run_dir)
    if not force and marker.exists() and marker.read_text().split()[:1] == [fingerprint]:
        log(f"[{stage}] finished before with this notebook and profile: reused ({notebook.name})")
        return None
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"[{stage}] running {notebook.name} -> {out_dir / notebook.name}")
    start = time.perf_counter()
    # interactive: notebook 02's switch for its curator widget, which nobody can click in a headless run
    offered = {"profile": str(profile), "run_dir": str(run_dir.resolve()), "interactive": False}
    os.environ["MDLAB_HEADLESS"] = "1"  # the kernels' `import mdlab` turns progress bars off (mdlab/__init__.py)
    declared = papermill.inspect_notebook(str(notebook))  # only what its parameters cell names: no warnings
    with ipc_kernels() as manager:
        papermill.execute_notebook(
            str(notebook), str(out_dir / notebook.name),
            parameters={name: value for name, value in offered.items() if name in declared},
            kernel_name="python3", kernel_manager_class=manager, cwd=str(ROOT), progress_bar=False,
            log_output=False)
    seconds = time.perf_counter() - start
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(f"{fingerprint} {time.time_ns()}")  # the time: a forced rerun invalidates the stages below
    log(f"[{stage}] done in {seconds:.0f} s")
    return seconds


def demo(profile: str, run_dir: Path | None = None, *, force: bool = False) -> dict[str, float | None]:
    """Run notebooks 01-05; returns the wall time of each stage (None = reused)."""
    import mdlab
    from mdlab import runs

    mdlab.env_report()
    run_dir = runs.run_dir(run_dir or Path(str(profile)).stem)
    print(f"\nmdlab demo: profile {profile!r} -> {run_dir}\n")
    times: dict[str, float | None] = {}
    total = time.perf_counter()
    for stage in STAGES:
        times[stage] = run_stage(stage, profile, run_dir, force=force)
    elapsed = time.perf_counter() - total
    print("\nstage        seconds")
    for stage, seconds in times.items():
        print(f"{stage:<12} {'reused' if seconds is None else f'{seconds:7.0f}'}")
    print(f"{'total':<12} {elapsed:7.0f}\n")
    results = run_dir / "results.md"
    if results.exists():
        print(results.read_text())
    figures = sorted((run_dir / "figures").glob("*.png"))
    if figures:
        print("figures:\n" + "\n".join(f"  {f}" for f in figures))
    # A reused stage keeps the seconds of the run that produced its outputs, so the file (and docs/) always
    # holds the cost of a whole demo; "reused" and "last_seconds" describe this invocation.
    path = run_dir / "demo_times.json"
    before = json.loads(path.read_text()).get("stages", {}) if path.exists() else {}
    stages = {stage: before.get(stage) if seconds is None else seconds for stage, seconds in times.items()}
    path.write_text(json.dumps({
        "profile": str(profile), "stages": stages,
        "total_seconds": sum(stages.values()) if None not in stages.values() else None,
        "reused": [stage for stage, seconds in times.items() if seconds is None], "last_seconds": elapsed,
    }, indent=2))
    return times


def docs(run_dir: Path, out: Path = ROOT / "docs", *, raw: bool = False) -> list[Path]:
    """Copy a finished run's results, figures and stage times into ``out`` (docs/ for the README).

    ``raw``: also the material they are computed from, gzip-compressed: every sampled path
    (``students/<name>/samples.jsonl.gz`` and the transfer sets' samples), each student's
    ``manifest.json`` (its training fingerprint names its paths), the curated rationales and
    the profile, so that ``python -m mdlab recompute <out>`` rebuilds the report without adapters.
    """
    import gzip

    if not (run_dir / "results.md").exists():
        raise SystemExit(f"{run_dir}/results.md is missing: run `make demo` (or the report stage) first")
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in [run_dir / "results.md", run_dir / "results.json", run_dir / "demo_times.json",
                *sorted((run_dir / "figures").glob("*.png"))]:
        if src.exists():
            copied.append(Path(shutil.copy(src, out / src.name)))
    results = out / "results.md"  # its figure links point into figures/; here the figures sit beside it
    results.write_text(results.read_text().replace("](figures/", "]("))
    if raw:
        profile = _profile(run_dir)
        for src in [run_dir / "curated.jsonl", *sorted(run_dir.glob("students/*/samples.jsonl")),
                    *sorted(run_dir.glob("students/*/transfer/*/samples.jsonl"))]:
            target = out / src.relative_to(run_dir).with_name(src.name + ".gz")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fh, gzip.GzipFile(target, "wb", mtime=0) as gz:  # mtime 0: same bytes per run
                shutil.copyfileobj(fh, gz)
            copied.append(target)
        for src in sorted(run_dir.glob("students/*/manifest.json")):
            target = out / src.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copy(src, target)))
        if profile.exists():
            copied.append(Path(shutil.copy(profile, out / "profile.yaml")))
    print("\n".join(f"wrote {p}" for p in copied))
    return copied


def _profile(run_dir: Path) -> Path:
    """The profile file a run was made with (the demo records its name), else the one named like the run."""
    from mdlab import config

    times = run_dir / "demo_times.json"
    return config.profile_path(json.loads(times.read_text())["profile"] if times.exists() else run_dir.name)


# trainer checkpoints; notebook 05's cache of recorded GPT-3.5 CoTs (rebuilt offline in seconds); the demo's stage
# markers (they fingerprint file times, which unpacking changes)
PACK_SKIP = {"checkpoints", "teacher_sc", ".stages"}


def pack(run_dir: Path, out: Path | None = None) -> Path:
    """A run as ``<name>.tar.gz`` without checkpoints: adapters, samples, rationales, decisions, manifests,
    figures, results, executed notebooks and the profile. Unpacked (``tar xzf <name>.tar.gz -C runs/``), any
    notebook starts from it with ``run_dir = "runs/<name>"``."""
    import tarfile

    if not (run_dir / "manifest.json").exists():
        raise SystemExit(f"{run_dir}/manifest.json does not exist: not a run directory")
    out = (out or run_dir.with_name(run_dir.name + ".tar.gz")).absolute()
    profile = _profile(run_dir)

    def keep(info):
        parts = Path(info.name).parts[1:]
        return None if PACK_SKIP & set(parts) or any(".tmp" in part for part in parts) else info

    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(run_dir, arcname=run_dir.name, filter=keep)
        if not (run_dir / "profile.yaml").exists() and profile.exists():
            tar.add(profile, arcname=f"{run_dir.name}/profile.yaml")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); unpack it with: tar xzf {out.name} -C runs/")
    return out


WIDGET = "application/vnd.jupyter.widget-view+json"


def html(run_dir: Path, out: Path) -> list[Path]:
    """The executed notebooks of a run (``<run>/notebooks/``, written by the demo) as HTML pages in ``out``,
    without widget views (their saved state has no kernel behind it)."""
    import nbconvert
    import nbformat

    sources = [run_dir / "notebooks" / name for name in STAGES.values() if (run_dir / "notebooks" / name).exists()]
    if not sources:
        raise SystemExit(f"{run_dir / 'notebooks'} holds no executed notebook: run `python -m mdlab demo` first")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        nb = nbformat.read(src, as_version=4)
        nb.metadata.pop("widgets", None)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]
        written.append(out / f"{src.stem}.html")
        written[-1].write_text(nbconvert.HTMLExporter().from_notebook_node(nb)[0], encoding="utf-8")
    print("\n".join(f"wrote {p}" for p in written))
    return written


def recompute(source: Path, run_dir: Path | None = None) -> Path:
    """Rebuild a report from ``docs``' raw material (``docs --raw``): unpack into a run directory, run stage 05."""
    import gzip

    from mdlab import runs

    if not (source / "profile.yaml").exists():
        raise SystemExit(f"{source}/profile.yaml is missing: {source} was not written by `python -m mdlab docs --raw`")
    run_dir = runs.run_dir(run_dir or f"{source.name}-recomputed")
    run_dir.mkdir(parents=True, exist_ok=True)
    for src in source.rglob("*"):
        relative = src.relative_to(source)
        if src.is_dir() or relative.parts[0] not in ("students", "curated.jsonl.gz"):
            continue
        target = run_dir / (relative.with_suffix("") if src.suffix == ".gz" else relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as gz, open(target, "wb") as fh:
                shutil.copyfileobj(gz, fh)
        else:
            shutil.copy(src, target)
    shutil.copy(source / "profile.yaml", run_dir / "profile.yaml")
    run_stage("report", str(run_dir / "profile.yaml"), run_dir, force=True)
    print(f"recomputed: {run_dir / 'results.md'} (compare with {source / 'results.md'})")
    return run_dir


# nbgrader's markers and stub: a course's student copy keeps the exercise and its check, not the answer
SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION[ \t]*(?:\n|$)", re.S | re.M)


def student_source(source: str) -> str:
    """A cell's code with each solution block replaced by nbgrader's stub (indentation kept)."""
    return SOLUTION.sub(r"\1# YOUR CODE HERE\n\1raise NotImplementedError()\n", source).rstrip("\n")


def course(out: Path) -> list[Path]:
    """``out/instructor/``: the notebooks as committed; ``out/student/``: solutions stubbed, outputs stripped."""
    import nbformat

    written = []
    for name in STAGES.values():
        for folder in ("instructor", "student"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copy(NOTEBOOKS / name, out / "instructor" / name)))
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.source, cell.outputs, cell.execution_count = student_source(cell.source), [], None
        nbformat.write(nb, out / "student" / name)
        written.append(out / "student" / name)
    print("\n".join(f"wrote {p}" for p in written))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("datasets", help="list every dataset split with its size and license")
    sub.add_parser("env", help="print versions and device")
    demo_parser = sub.add_parser("demo", help="run notebooks 01-05 headless into runs/<profile>/")
    demo_parser.add_argument("--profile", default="cpu", help="smoke | cpu | laptop | gpu, or a YAML path")
    demo_parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<profile>")
    demo_parser.add_argument("--force", action="store_true", help="re-execute finished stages")
    demo_parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[], help=SET_HELP)
    docs_parser = sub.add_parser("docs", help="copy a finished run's figures and table into docs/")
    docs_parser.add_argument("--run", default="cpu", help="a run name (runs/<name>) or directory; default: cpu")
    docs_parser.add_argument("--out", type=Path, default=ROOT / "docs", help="default: docs/")
    docs_parser.add_argument("--raw", action="store_true",
                             help="also the compressed samples, student manifests, curated rationales and profile")
    course_parser = sub.add_parser("course", help="write student (solutions stubbed) and instructor notebooks")
    course_parser.add_argument("--out", type=Path, required=True, help="writes OUT/student/ and OUT/instructor/")
    pack_parser = sub.add_parser("pack", help="a run as a .tar.gz without checkpoints, to ship to a class")
    pack_parser.add_argument("run", help="a run name (runs/<name>) or directory")
    pack_parser.add_argument("--out", type=Path, default=None, help="default: <run directory>.tar.gz")
    html_parser = sub.add_parser("html", help="a run's executed notebooks as HTML pages, to read without running")
    html_parser.add_argument("--run", default="cpu", help="a run name (runs/<name>) or directory; default: cpu")
    html_parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks",
                             help="default: docs/notebooks/")
    recompute_parser = sub.add_parser("recompute", help="rebuild a report from `docs --raw` output, no adapters")
    recompute_parser.add_argument("source", type=Path, help="e.g. docs/laptop")
    recompute_parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<source>-recomputed")
    for stage, notebook in STAGES.items():
        stage_parser = sub.add_parser(stage, help=f"run {notebook} headless")
        stage_parser.add_argument("--config", "--profile", dest="profile", default="cpu",
                                  help="smoke | cpu | laptop | gpu, or a YAML path such as configs/gpu.yaml")
        stage_parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<profile name>")
        stage_parser.add_argument("--force", action="store_true", help="re-execute even if finished")
        stage_parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[], help=SET_HELP)
    args = parser.parse_args(argv)
    if args.command == "datasets":
        return _datasets(args)
    if args.command == "env":
        import mdlab

        mdlab.env_report()
        return 0
    if args.command in ("demo", *STAGES):
        from mdlab import config, runs

        run_dir = runs.run_dir(args.run_dir or Path(str(args.profile)).stem)
        overrides = config.parse_overrides(args.set)
        # the notebooks read a profile file: the overridden one is written into the run directory
        profile = str(config.write_profile(args.profile, overrides, run_dir / "profile.yaml")) if overrides \
            else args.profile
        if args.command == "demo":
            demo(profile, run_dir, force=args.force)
        else:
            run_stage(args.command, profile, run_dir, force=args.force)
        return 0
    if args.command in ("docs", "pack", "html"):
        from mdlab import runs

        run_dir = runs.run_dir(args.run)
        if args.command == "docs":
            docs(run_dir, args.out, raw=args.raw)
        else:
            (pack if args.command == "pack" else html)(run_dir, args.out)
        return 0
    if args.command == "course":
        course(args.out)
        return 0
    if args.command == "recompute":
        recompute(args.source, args.run_dir)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

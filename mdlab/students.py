"""Students on disk: ``runs/<run>/students/<name>/`` directories, their model tags, and backends for them.

A student directory holds ``adapter/`` (trained by ``train.fit``; its manifest names the base and the
training fingerprint), or only a manifest naming a base model (``students/base/``, the untrained model:
``base_student``), or only shipped samples. ``backend`` turns a student directory, a model name or
path, or a loaded ``(model, tokenizer)`` pair into a ``generation.HFBackend``; ``evaluate`` samples
with it; ``sample_student`` / ``sample_transfer`` decode a student into its directory. Samples carry
the student's tag (name + training fingerprint), so a retrained student's samples never mix with the
old ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from mdlab import data, prompts, runs
from mdlab.generation import STOP, HFBackend

BASE_STUDENT = "base"
SAMPLES_FILE = "samples.jsonl"


def _adapter_of(path: Path) -> Path | None:
    """The adapter directory of a student directory or of an adapter directory, else None."""
    return next((c for c in (path / "adapter", path) if (c / "adapter_config.json").exists()), None)


def _adapter_tag(adapter: Path) -> str:
    """Model tag of a student: its name and its training fingerprint (else a hash of the adapter files)."""
    trained = runs.read_manifest(adapter)
    name = trained.get("student", adapter.parent.name if adapter.name == "adapter" else adapter.name)
    if trained.get("fingerprint"):
        return f"{name}:{str(trained['fingerprint'])[:12]}"
    digest = hashlib.sha256()
    for file in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        if (adapter / file).exists():
            digest.update((adapter / file).read_bytes())
    return f"{name}:{digest.hexdigest()[:12]}"


def _base_model_of(path: Path) -> str | None:
    """The model a ``base_student`` directory names, else None."""
    return None if _adapter_of(path) else runs.read_manifest(path).get("base_model")


def _student_tag(student_dir: Path) -> str | None:
    """The model tag of a student's samples (None: not a student, or a bare ``students/base/``)."""
    adapter = _adapter_of(student_dir)
    if adapter is not None:
        return _adapter_tag(adapter)
    base = _base_model_of(student_dir)
    if base is not None:
        return f"base:{base}"  # the tag ``backend`` gives a base_student directory
    trained = runs.read_manifest(student_dir)
    if trained.get("fingerprint") and (student_dir / SAMPLES_FILE).exists():  # samples without the adapter
        return f"{trained.get('student', student_dir.name)}:{str(trained['fingerprint'])[:12]}"
    return None


def short_tag(tag: str) -> str:
    """A model tag for people: ``md`` for ``md:24fc023af6b2`` (the fingerprint stays in the samples)."""
    return re.sub(r":[0-9a-f]{12}$", "", tag)


def base_student(run_dir: str | os.PathLike, model: str) -> Path:
    """``students/base/``: the untrained ``model`` as a student (no adapter, both modes, greedy)."""
    folder = Path(run_dir) / "students" / BASE_STUDENT
    manifest = {"student": BASE_STUDENT, "base_model": str(model), "by_mode": {m: 1 for m in prompts.MODES}}
    folder.mkdir(parents=True, exist_ok=True)
    if runs.read_manifest(folder) != manifest:
        runs.write_json_atomic(folder / "manifest.json", manifest)
    return folder


def students(run_dir: str | os.PathLike) -> list[Path]:
    """Student directories, MD first: trained (``adapter/``), the base model, or shipped samples."""
    root = Path(run_dir) / "students"
    found = sorted((d for d in root.glob("*") if _student_tag(d) is not None
                    or (d.name == BASE_STUDENT and (d / SAMPLES_FILE).exists())),
                   key=lambda d: (d.name != "md", d.name))
    if not found:
        raise FileNotFoundError(f"no trained student under {root} (students/<name>/adapter/): "
                                "run notebooks/03_train_md_qlora.ipynb first")
    return found


def student_modes(student_dir: str | os.PathLike) -> tuple[str, ...]:
    """The modes a student was trained on (its manifest's example counts), else from its name."""
    student_dir = Path(student_dir)
    for folder in (student_dir, student_dir / "adapter"):
        by_mode = runs.read_manifest(folder).get("by_mode") or {}
        modes = tuple(m for m in prompts.MODES if by_mode.get(m))
        if modes:
            return modes
    return (student_dir.name,) if student_dir.name in prompts.MODES else prompts.MODES


def student_k(student_dir: str | os.PathLike, config) -> int:
    """Sampled paths per mode under an ``evaluate.EvalConfig``: k (MD), baseline_k (single-mode
    students), 0 (not in sc_students)."""
    student_dir = Path(student_dir)
    if student_dir.name not in config.sc_students:
        return 0
    single_mode = len(student_modes(student_dir)) == 1
    return config.baseline_k if single_mode and config.baseline_k is not None else config.k


def _load_adapter(adapter: Path, dtype: str = "auto"):
    """(model, tokenizer) for base + adapter, merged unless 4-bit (plain weights decode faster)."""
    from mdlab import models

    if (adapter / "manifest.json").exists():  # an mdlab adapter: its manifest names and checks the base
        loaded, tokenizer = models.load_student(adapter, dtype=dtype)
    else:  # any PEFT adapter: adapter_config.json names the base
        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        loaded, tokenizer = models.load(base, adapter=adapter, dtype=dtype)
    if not getattr(loaded, "is_loaded_in_4bit", False) and hasattr(loaded, "merge_and_unload"):
        loaded = loaded.merge_and_unload()
    return loaded, tokenizer


def backend(model, *, batch_rows: int = 64, tag: str | None = None, dtype: str = "auto"):
    """A backend for ``model`` (a backend, a (model, tokenizer) pair, a student directory, a model name
    or path); ``dtype`` for the models it loads."""
    if hasattr(model, "generate") and hasattr(model, "tag") and hasattr(model, "prompt_length"):
        return model
    from mdlab import models

    path = Path(str(model))
    if isinstance(model, tuple):
        (loaded, tokenizer), tag = model, tag or getattr(model[0], "name_or_path", "model")
    elif (adapter := _adapter_of(path)) is not None:
        (loaded, tokenizer), tag = _load_adapter(adapter, dtype), tag or _adapter_tag(adapter)
    elif (base := _base_model_of(path)) is not None:  # students/base/: the untrained model, student prompts
        (loaded, tokenizer), tag = models.load(base, dtype=dtype), tag or f"base:{base}"
    else:
        (loaded, tokenizer), tag = models.load(str(model), dtype=dtype), tag or str(model)
    return HFBackend(loaded, tokenizer, tag, batch_rows=batch_rows, stop=STOP)


def student_backend(student_dir: str | os.PathLike, config):
    """The backend of a student directory (base + adapter, or the base model alone), as an
    ``evaluate.EvalConfig`` says (batch_rows, dtype)."""
    return backend(Path(student_dir), batch_rows=config.batch_rows, dtype=config.dtype)


def sample_student(student_dir: str | os.PathLike, problems, config, *, progress: bool = True,
                   k: int | None = None, out_dir: str | os.PathLike | None = None, engine=None):
    """``evaluate.sample`` for each of a student's modes: greedy + k (``student_k`` unless given) paths into
    ``out_dir`` (else the student's directory), with ``engine`` if loaded: (samples, seconds, tokens)."""
    from mdlab import evaluate  # evaluate builds on this module

    student_dir = Path(student_dir)
    out_dir = Path(out_dir or student_dir)
    store = runs.JsonlStore(out_dir / SAMPLES_FILE)
    before, start = len(store.read()), time.perf_counter()
    engine = student_backend(student_dir, config) if engine is None else engine
    k = student_k(student_dir, config) if k is None else k
    out = []
    for mode in student_modes(student_dir):
        out += evaluate.sample(engine, problems, mode, k=k, temperature=config.temperature, seed=config.seed,
                               run_dir=out_dir, greedy=config.greedy or k == 0, top_p=config.top_p,
                               max_new_tokens=config.max_new_tokens, pot_timeout=config.pot_timeout,
                               progress=progress)
    return out, time.perf_counter() - start, sum(r["tokens"] for r in store.read()[before:])


def sample_transfer(student_dir: str | os.PathLike, config, *, progress: bool = True) -> dict:
    """Greedy paths of one student on every ``config.transfer`` set: dataset -> samples, written to
    ``students/<name>/transfer/<dataset>/samples.jsonl``; the model is loaded once."""
    student_dir = Path(student_dir)
    engine = student_backend(student_dir, config) if config.transfer else None
    out = {}
    for spec in config.transfer:
        name = spec.split(":")[0]
        problems = data.transfer_problems(spec, config.transfer_limit)
        out[name] = sample_student(student_dir, problems, config, k=0, engine=engine, progress=progress,
                                   out_dir=student_dir / "transfer" / name)[0]
    return out

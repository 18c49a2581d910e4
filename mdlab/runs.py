"""Run directories, append-only JSONL stores and manifests.

Every stage reads the previous stage's files from ``runs/<name>/`` and appends its own, so a
crash loses at most the record in flight. A JSONL store is append-only: each record is one
line written with a single ``write`` and then flushed and fsynced. A process killed mid-write
leaves at most one torn last line; readers detect it, warn and drop it, never crash, and
the next append first cuts it off so the file stays well-formed.

``manifest.json`` holds what is needed to redo a run: config, package versions, seeds and the
sha256 of every data file read. Stages merge their own section into it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# The checkout that holds configs/ (where `make demo` runs): relative run directories resolve here, not in the
# current directory, which is notebooks/ for a Jupyter kernel.
PROJECT = Path(__file__).resolve().parent.parent
if not (PROJECT / "configs").is_dir():  # mdlab installed without its checkout
    PROJECT = Path.cwd()
RUNS_ROOT = PROJECT / os.environ.get("MDLAB_RUNS", "runs")


def run_dir(name_or_path: str | os.PathLike) -> Path:
    """The absolute run directory of a name (under ``$MDLAB_RUNS``, default ``<project>/runs``) or a path.

    A relative path is taken from the project root, so ``"runs/cpu"`` means the same in a notebook
    kernel (started in ``notebooks/``) as in ``make demo``. Nothing is created: stages that write do so.
    """
    path = Path(name_or_path).expanduser()
    if path.is_absolute():
        return path
    return (RUNS_ROOT if len(path.parts) == 1 else PROJECT) / path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    """JSON text with each lone surrogate as its escape (``\\udc80``): encodable as UTF-8, read back the same.

    Outside string literals JSON has only ASCII, so every surrogate sits inside a string.
    """
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(record: Any) -> str:
    """One JSON line (no newline inside), the same encoding everywhere. Always encodable as UTF-8:
    a lone surrogate (say, from a program's error message) is written as a JSON escape (``\\udc80``),
    which reads back as the same string."""
    return _escape_surrogates(json.dumps(record, ensure_ascii=False, default=_jsonable, allow_nan=True))


class JsonlStore:
    """An append-only JSON Lines file that survives being killed at any moment."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repaired = False

    def __iter__(self) -> Iterator[dict]:
        return iter(self.read())

    def __len__(self) -> int:
        return len(self.read())

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> list[dict]:
        """All complete records; a torn last line is dropped with a warning."""
        if not self.path.exists():
            return []
        records: list[dict] = []
        with open(self.path, "rb") as fh:
            lines = fh.read().split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                records.append(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number >= len(lines) - 1:  # only the last line may be torn by a kill
                    warnings.warn(f"{self.path}: dropped a torn last line (a write was interrupted)",
                                  stacklevel=2)
                else:
                    raise ValueError(f"{self.path}:{number}: corrupt record in the middle of the file; "
                                     "it was edited by hand or written by two processes at once") from None
        return records

    def _repair_tail(self) -> None:
        """Cut a torn last line off before appending, so new records start on a fresh line."""
        if self._repaired or not self.path.exists():
            self._repaired = True
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                fh.seek(cut)
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
        self._repaired = True

    def append(self, record: Any) -> None:
        self.extend([record])

    def extend(self, records: Iterable[Any]) -> None:
        """Append records durably: one write per record, then flush and fsync."""
        self._repair_tail()
        lines = [dumps(r) + "\n" for r in records]
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("mdlab", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "openai"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a whole file via a temporary file and a rename, so readers never see half of it.

    An unchanged file is left alone: the demo's stage fingerprints read file times.
    """
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """JSON through ``write_text_atomic``."""
    write_text_atomic(path, _escape_surrogates(json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable)))


def read_manifest(run_dir_: str | os.PathLike) -> dict:
    path = Path(run_dir_) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def update_manifest(run_dir_: str | os.PathLike, stage: str, **fields: Any) -> dict:
    """Merge one stage's section (config, seeds, data hashes, ...) into ``manifest.json``."""
    run_dir_ = Path(run_dir_)
    run_dir_.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(run_dir_)
    manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    manifest["versions"] = package_versions()
    manifest.setdefault("stages", {})[stage] = {
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **fields}
    from mdlab import data  # local import: data imports nothing heavy, but keep runs standalone

    manifest["data_files"] = {**manifest.get("data_files", {}), **data.files_read()}
    write_json_atomic(run_dir_ / "manifest.json", manifest)
    return manifest

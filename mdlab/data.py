"""Problems, the dataset registry, splits, and file resolution with sha256 checks.

``data.load(name, split)`` returns ``Problem`` records for SVAMP, GSM8K, ASDiv and the four
MAWPS subsets. Files resolve in this order (docs/design.md, "Offline first"):

1. ``$MDLAB_DATA_DIR/<relative path>`` (CI points it at ``../shared/data``);
2. the user cache ``$MDLAB_CACHE/data/<relative path>`` (default ``~/.cache/mdlab``);
3. a download from the pinned upstream URL (repository + commit, see ``data_sources.json``),
   kept only if its sha256 matches; ``$MDLAB_DATA_URL`` replaces ``https://raw.githubusercontent.com``
   with a mirror serving ``<base>/<repo>/<commit>/<path>``.

Every file is checked against its pinned sha256 before it is parsed, and every file read is
remembered for the run manifest. What this simplifies: the two derived files (ASDiv's XML
converted to JSONL) cannot be downloaded as such; they must come from a data directory.

Problem ids are stable: SVAMP ``chal-N``, GSM8K ``gsm8k-<split>-<line>``, ASDiv its own
``nluds-NNNN``, MAWPS ``mawps-<subset>-<line>``. ``Problem.equation`` is the gold derivation
when the dataset has one: the SVAMP equation, the ASDiv formula, or GSM8K's reference
solution with its ``<<a*b=c>>`` calculator annotations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import math
import os
import random
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable

SOURCES: dict[str, dict] = json.loads((Path(__file__).with_name("data_sources.json")).read_text())
_FILES_READ: dict[str, str] = {}
_TIMEOUT = 60  # seconds without a byte before a download is given up


class DataError(RuntimeError):
    """A dataset file is missing, malformed or not the pinned version."""


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str  # stable id (see module docstring)
    question: str  # the full problem text shown to teachers and students
    answer: float  # gold answer; NaN for the few ASDiv answers that are not numbers
    equation: str | None  # gold derivation if the dataset has one
    dataset: str  # registry name, e.g. "svamp"
    split: str  # split this record was loaded from
    answer_text: str | None = None  # the dataset's answer as written, when it is not a plain number


def cache_dir() -> Path:
    return Path(os.environ.get("MDLAB_CACHE", Path.home() / ".cache" / "mdlab"))


def source_url(relpath: str) -> str:
    src = SOURCES[relpath]
    base = os.environ.get("MDLAB_DATA_URL", "https://raw.githubusercontent.com").rstrip("/")
    return f"{base}/{src['source_repo']}/{src['source_commit']}/{src['source_path']}"


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, relpath: str) -> Path:
    stat = path.stat()
    got = _sha256(str(path), stat.st_size, stat.st_mtime)
    want = SOURCES[relpath]["sha256"]
    if got != want:
        raise DataError(f"{path}: sha256 {got[:16]}… does not match the pinned {want[:16]}… for {relpath!r}. "
                        f"The file is modified or a different version; restore it from {source_url(relpath)} "
                        "(or delete it from the cache to download it again).")
    _FILES_READ[relpath] = got
    return path


def resolve(relpath: str) -> Path:
    """The local path of a pinned data file: data dir, then cache, then a checked download."""
    if relpath not in SOURCES:
        raise DataError(f"unknown data file {relpath!r}; known files are listed in mdlab/data_sources.json")
    env = os.environ.get("MDLAB_DATA_DIR")
    if env:
        candidate = Path(env) / relpath
        if candidate.exists():
            return _check(candidate, relpath)
    cached = cache_dir() / "data" / relpath
    if cached.exists():
        return _check(cached, relpath)
    src = SOURCES[relpath]
    if src.get("derived"):
        raise DataError(f"{relpath} is not in $MDLAB_DATA_DIR ({env or 'unset'}) or {cached.parent}. It is derived "
                        f"({src['derived']}) from {source_url(relpath)}, so it cannot be downloaded as is: "
                        "set MDLAB_DATA_DIR to a directory holding the mdlab data files.")
    url = source_url(relpath)
    if os.environ.get("MDLAB_OFFLINE", os.environ.get("HF_HUB_OFFLINE")) in ("1", "true", "yes"):
        raise DataError(f"{relpath} not found in $MDLAB_DATA_DIR ({env or 'unset'}) or the cache {cached}, and "
                        f"downloads are off (MDLAB_OFFLINE). Set MDLAB_DATA_DIR, or download {url} to {cached}.")
    _download(relpath, url, cached)
    return _check(cached, relpath)


def _download(relpath: str, url: str, cached: Path) -> None:
    """Stream ``url`` to a uniquely named file beside ``cached`` and move it there only once its length and
    sha256 are right: an interrupted, wrong or concurrent download never leaves a file at the cache path."""
    tmp, problem = None, None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, prefix=f".{cached.name}.", suffix=".part",
                                         delete=False) as fh:
            tmp, digest, size = fh.name, hashlib.sha256(), 0
            with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    fh.write(block)
                    digest.update(block)
                    size += len(block)
                # read(n) returns b"" when the server hangs up early, so the length is the only sign of a cut
                expected = response.headers.get("Content-Length")
        got, want = digest.hexdigest(), SOURCES[relpath]["sha256"]
        if expected is not None and size != int(expected):
            problem = f"the transfer stopped after {size} of {expected} bytes"
        elif got != want:
            problem = f"the server sent another version (sha256 {got[:16]}…, not the pinned {want[:16]}…)"
        else:
            os.replace(tmp, cached)
    except urllib.error.HTTPError as exc:
        exc.close()
        problem = f"the server answered HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        problem = f"could not connect ({exc.reason})"
    except TimeoutError:
        problem = f"no data for {_TIMEOUT} s (timed out)"
    except (OSError, http.client.HTTPException) as exc:  # IncompleteRead and BadStatusLine are not OSErrors
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    if problem:
        raise DataError(f"{relpath}: the download from {url} failed: {problem}. Nothing was saved to "
                        f"{cached.parent}. Retry, set MDLAB_DATA_URL to a mirror, or set MDLAB_DATA_DIR to a "
                        f"directory with the data files (or download that URL to {cached}).")


def files_read() -> dict[str, str]:
    """sha256 of every data file resolved so far in this process (for run manifests)."""
    return dict(_FILES_READ)


# ----------------------------------------------------------------------------------- parsing

def _json(relpath: str):
    path = resolve(relpath)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected the file pinned for {relpath!r}") from exc


def _jsonl(relpath: str) -> list[dict]:
    path = resolve(relpath)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON line ({exc.msg}); expected one JSON object "
                            "per line") from exc
    return rows


def _field(row: dict, key: str, where: str, kind: type | tuple = str):
    if not isinstance(row, dict) or key not in row:
        raise DataError(f"{where}: missing field {key!r}; expected a record with {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} is {type(value).__name__}, expected {kind}")
    return value


_NUMBER = re.compile(r"^\s*(-?[\d,]*\.?\d+)(?:\s*/\s*(\d+))?\s*(?:\(.*\))?\s*$")


def _number(text: str) -> float:
    """A dataset answer string as a float: '1,234', '9 (apples)', '3/4'; NaN if not a number."""
    match = _NUMBER.match(text)
    if not match:
        return math.nan
    value = float(match.group(1).replace(",", ""))
    return value / float(match.group(2)) if match.group(2) else value


def _svamp_all() -> list[Problem]:
    rel = "svamp/SVAMP.json"
    rows = _json(rel)
    out = []
    for i, row in enumerate(rows):
        where = f"{resolve(rel)} record {i}"
        body, question = _field(row, "Body", where), _field(row, "Question", where)
        out.append(Problem(id=_field(row, "ID", where), question=f"{body.strip()} {question.strip()}",
                           answer=float(_field(row, "Answer", where, (int, float))),
                           equation=_field(row, "Equation", where), dataset="svamp", split="all"))
    if len(out) != 1000:
        raise DataError(f"{resolve(rel)}: {len(out)} problems, expected 1000")
    return out


def _svamp(split: str) -> list[Problem]:
    problems = _svamp_all()
    if split == "all":
        indices = range(len(problems))
    elif split in ("train", "test"):
        import numpy as np

        # distilling-step-by-step's split: a seeded permutation of SVAMP.json order, first 800 train
        perm = np.random.RandomState(seed=0).permutation(len(problems))
        indices = perm[:800] if split == "train" else perm[800:]
    else:  # train700 / test300: Fine-tune-CoT's published indices
        indices = _json("svamp/reasoning_teacher/split/svamp__default.json")[{"train700": "train", "test300": "test"}[split]]
    return [dataclasses.replace(problems[int(i)], split=split) for i in indices]


def _gsm8k(split: str) -> list[Problem]:
    rel = f"gsm8k/{split}.jsonl"
    out = []
    for i, row in enumerate(_jsonl(rel)):
        where = f"{resolve(rel)} line {i + 1}"
        solution = _field(row, "answer", where)
        if "####" not in solution:
            raise DataError(f"{where}: answer has no '#### <number>' line")
        final = solution.rsplit("####", 1)[1].strip()
        value = _number(final)
        if math.isnan(value):
            raise DataError(f"{where}: final answer {final!r} is not a number")
        out.append(Problem(id=f"gsm8k-{split}-{i}", question=_field(row, "question", where).strip(),
                           answer=value, equation=solution, dataset="gsm8k", split=split))
    return out


def _asdiv(split: str) -> list[Problem]:
    rel = "asdiv/asdiv.jsonl"
    warnings.warn("ASDiv is licensed CC BY-NC 4.0 (non-commercial use only; cite Miao et al., ACL 2020).",
                  stacklevel=3)
    out = []
    for i, row in enumerate(_jsonl(rel)):
        where = f"{resolve(rel)} line {i + 1}"
        answer_text = _field(row, "answer", where)
        value = _number(answer_text)
        out.append(Problem(id=_field(row, "id", where),
                           question=f"{_field(row, 'body', where).strip()} {_field(row, 'question', where).strip()}",
                           answer=value, equation=row.get("formula"), dataset="asdiv", split=split,
                           answer_text=answer_text))
    return out


def _mawps(subset: str) -> Callable[[str], list[Problem]]:
    def load(split: str) -> list[Problem]:
        rel = f"mawps/pal/mawps{subset}.jsonl"
        out = []
        for i, row in enumerate(_jsonl(rel)):
            where = f"{resolve(rel)} line {i + 1}"
            out.append(Problem(id=f"mawps-{subset}-{i}", question=_field(row, "input", where).strip(),
                               answer=float(_field(row, "target", where, (int, float))), equation=None,
                               dataset=f"mawps-{subset}", split=split))
        return out
    return load


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    splits: dict[str, int]  # split -> expected size
    license: str
    loader: Callable[[str], list[Problem]]
    citation: str


REGISTRY: dict[str, Dataset] = {
    "svamp": Dataset("svamp", {"all": 1000, "train": 800, "test": 200, "train700": 700, "test300": 300}, "MIT",
                     _svamp, "Patel et al., NAACL 2021 (arkilpatel/SVAMP)"),
    "gsm8k": Dataset("gsm8k", {"train": 7473, "test": 1319}, "MIT", _gsm8k,
                     "Cobbe et al., 2021 (openai/grade-school-math)"),
    "asdiv": Dataset("asdiv", {"all": 2305}, "CC BY-NC 4.0 (non-commercial)", _asdiv,
                     "Miao et al., ACL 2020 (chaochun/nlu-asdiv-dataset)"),
    **{f"mawps-{s}": Dataset(f"mawps-{s}", {"test": n}, "Apache-2.0 (PAL's copy)", _mawps(s),
                             "Koncel-Kedziorski et al., NAACL 2016, as used by PAL")
       for s, n in (("addsub", 395), ("multiarith", 600), ("singleeq", 508), ("singleop", 562))},
}


def load(name: str, split: str = "test", *, limit: int | None = None) -> list[Problem]:
    """Problems of one dataset split, in a stable order; ``limit`` keeps the first N."""
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    dataset = REGISTRY[name]
    if split not in dataset.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits: {', '.join(dataset.splits)}")
    problems = dataset.loader(split)
    if len(problems) != dataset.splits[split]:
        raise DataError(f"{name}/{split}: read {len(problems)} problems, expected {dataset.splits[split]}; "
                        "the data files are not the pinned versions")
    return problems[:limit] if limit is not None else problems


def transfer_problems(spec: str, limit: int | None = None) -> list[Problem]:
    """A transfer set's (``"dataset:split"``) problems with a numeric answer (not all ASDiv's); ``limit``:
    N of them, a seeded choice kept in file order (files ordered by difficulty make the first N biased)."""
    name, split = spec.split(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASDiv's licence notice, once per load
        problems = [p for p in load(name, split) if math.isfinite(p.answer)]
    if limit is None or limit >= len(problems):
        return problems
    keep = set(random.Random(0).sample(range(len(problems)), limit))
    return [p for i, p in enumerate(problems) if i in keep]


def by_id(problems) -> dict[str, Problem]:
    return {p.id: p for p in problems}


def test_ids() -> dict[str, set[str]]:
    """Ids of every test-side split: SVAMP test and test300, GSM8K test. Note that SVAMP's two
    splits overlap (test300 holds 100 of the 800 train problems), so leakage checks against a
    run's own evaluation split, and this union is for checks such as few-shot exemplars."""
    return {"svamp": {p.id for p in _svamp("test")} | {p.id for p in _svamp("test300")},
            "gsm8k": {p.id for p in _gsm8k("test")}}


def summary() -> list[dict]:
    """One row per dataset split: size, license (for `make demo`'s first screen)."""
    rows = []
    for name, dataset in REGISTRY.items():
        for split in dataset.splits:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                problems = load(name, split)
            numeric = sum(1 for p in problems if not math.isnan(p.answer))
            rows.append({"dataset": name, "split": split, "problems": len(problems),
                         "numeric_answers": numeric, "license": dataset.license})
    return rows

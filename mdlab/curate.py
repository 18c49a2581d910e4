"""Automatic filters, curation state, and the ipywidgets curator.

Three layers, each usable without the next:

1. ``auto_filter(rationales, problems, config)`` checks every teacher rationale and returns
   one row per rationale with ``keep`` and every reason that applies (below). PoT programs
   are always re-executed in ``mdlab.sandbox`` (in parallel) and CoT answers are always
   re-extracted with ``answers.extract``: the filter never trusts an answer stored in
   ``rationales.jsonl``. ``run_auto_filter(run_dir, ...)`` writes it to ``auto_filter.csv``.
2. ``CurationState(run_dir)``: plain Python, no widgets. A queue of rationales, what needs a
   human first: disagreements (a problem's CoT and PoT answers differ) and right answers
   dropped by a check that may be wrong, then other drops, then clean passes (within each,
   by problem, CoT before PoT); filters, a current item, and keep / drop / edit decisions
   appended to ``decisions.jsonl`` (``runs.JsonlStore``: one line per click, flushed and
   fsynced) so a kernel restart, a closed tab or a crash loses nothing. The queue position
   and filters live in ``curation_state.json`` (replaced atomically on every click).
   The latest decision per rationale wins.
3. ``Curator(run_dir)``: an ipywidgets view over the state, with single-key shortcuts (``KEYS``)
   through anywidget, so it works in JupyterLab, Notebook 7, VS Code and Colab.

``curated(run_dir)`` applies the automatic verdicts, overrides them with the human ones (an
edit replaces text and answer) and writes ``curated.jsonl``: what training reads.

Reasons (the ``reasons`` column is a ``;``-joined string, empty when the rationale passes;
``reason_list`` splits it), each under a switch in ``CurateConfig``:

- ``wrong_answer`` / ``no_answer`` (``check_answer``): the answer is not ``answers.same`` as
  gold; a CoT that commits to no number. Skipped when gold is not a number.
- ``error`` / ``timeout`` / ``memory`` / ``forbidden`` / ``no_answer`` (``check_execution``):
  the sandbox status of a PoT program that did not give an answer.
- ``cot_pot_disagree`` (``check_agreement``): the rationale's answer differs from *every*
  answer the other mode's rationales give for the same problem, when the other mode has at
  least one answer. Rationales without an answer are not judged by it.
- ``truncated`` (``check_truncated``): cut off by a token limit: ``finish_reason`` "length",
  completion tokens at ``params["max_tokens"]``, a PoT whose syntax error is at its
  end, or (``require_answer_phrase``) a CoT without a final-answer phrase ("the answer is",
  "####", ``\\boxed``), the format the student is taught to end with.
- ``too_long`` (``check_length``): more characters than ``max_chars_cot`` / ``max_chars_pot``.
- ``duplicate`` (``check_duplicates``): normalised text equal, or difflib ratio at least
  ``duplicate_similarity``, to an *earlier kept* rationale for the same problem and mode, so
  a near-copy of a dropped rationale never costs a good one.
- ``leakage`` (``check_leakage``): the problem is in a test split, by id or by question text
  (case and whitespace normalised). Against ``test_problems`` when given (notebook 02 passes
  the profile's evaluation split), else every test-side split of the problems' datasets
  (for SVAMP that includes Fine-tune-CoT's ``test300``, which holds 100 of the 800/200
  train problems).
- ``unknown_problem`` (always on): the rationale answers a problem not in ``problems``.

What it simplifies: lengths are characters, not tokens (no tokenizer needed to filter);
near-duplicates are compared pairwise within one problem and mode (fine for tens of samples
per problem, quadratic beyond); the curator shows one rationale at a time with the other
mode's answers for the same problem as context.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import html
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdlab import answers, data, runs, teachers

if TYPE_CHECKING:  # pandas loads inside functions: config.load imports this module
    import pandas as pd

RATIONALES = teachers.RATIONALES_FILE
AUTO_FILTER = "auto_filter.csv"
DECISIONS = "decisions.jsonl"
STATE = "curation_state.json"
CURATED = "curated.jsonl"

# display order; each reason belongs to one switch
REASONS: dict[str, str] = {
    "unknown_problem": "always",
    "leakage": "check_leakage",
    "error": "check_execution",
    "timeout": "check_execution",
    "memory": "check_execution",
    "forbidden": "check_execution",
    "no_answer": "check_execution",  # PoT: sandbox status; CoT: check_answer (see _answer_reasons)
    "wrong_answer": "check_answer",
    "cot_pot_disagree": "check_agreement",
    "truncated": "check_truncated",
    "too_long": "check_length",
    "duplicate": "check_duplicates",
}
_EXEC_FAILURES = ("error", "timeout", "memory", "forbidden", "no_answer", "no_code")
ACTIONS = ("keep", "drop", "edit")
FILTERS = ("mode", "reason", "verdict", "teacher", "dataset")
VERDICTS = ("keep", "drop", "reviewed", "unreviewed", "edited")
_OUTPUT_CHARS = 2000  # stdout kept per program in auto_filter.csv


@dataclasses.dataclass
class CurateConfig:
    # each check_* switch: True = rationales failing that check get its reason and are dropped
    check_answer: bool = True  # answer differs from gold (wrong_answer); a CoT with no number (no_answer)
    check_execution: bool = True  # PoT fails in the sandbox (error/timeout/memory/forbidden/no_answer)
    # off by default: with gold answers it only drops right rationales whose other-mode partner
    # was wrong; turn it on for problems without trustworthy gold, or to train only on agreed pairs
    check_agreement: bool = False  # answer differs from every other-mode answer (cot_pot_disagree)
    check_truncated: bool = True  # cut off by a token limit (truncated)
    check_length: bool = True  # longer than max_chars_cot / max_chars_pot (too_long)
    check_duplicates: bool = True  # near-copy of an earlier kept rationale, same problem + mode (duplicate)
    check_leakage: bool = True  # problem in a test split, by id or question text (leakage)
    require_answer_phrase: bool = True  # truncated includes a CoT without "the answer is" / "####" / \boxed
    max_chars_cot: int = 2000  # about 500 tokens; PaLM's SVAMP CoTs are at most 616 characters
    max_chars_pot: int = 2000  # Codex's SVAMP programs are at most 350 characters
    duplicate_similarity: float = 0.9  # difflib ratio of normalised texts counted as duplicate (1.0: exact)
    timeout: float = 3.0  # sandbox wall-clock seconds per PoT program
    memory_mb: int = 512  # sandbox address-space limit per PoT program
    workers: int | None = None  # sandbox worker processes (None = the sandbox's default: all cores)

    def __post_init__(self):
        for name in ("max_chars_cot", "max_chars_pot", "memory_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"curate.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.duplicate_similarity <= 1.0:
            raise ValueError(f"curate.duplicate_similarity must be in (0, 1], "
                             f"got {self.duplicate_similarity}")
        if self.timeout <= 0:
            raise ValueError(f"curate.timeout must be > 0 seconds, got {self.timeout}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"curate.workers must be >= 1 or null, got {self.workers}")


# ------------------------------------------------------------------------------ small helpers

def reason_list(reasons: str | float | None) -> list[str]:
    """The reasons of one row as a list (the CSV stores them ``;``-joined)."""
    if not isinstance(reasons, str) or not reasons:
        return []
    return reasons.split(";")


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _norm_question(text: str) -> str:
    return _norm_text(text).rstrip(".?! ")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _as_rationale(record: Any) -> teachers.Rationale:
    return record if isinstance(record, teachers.Rationale) else teachers.Rationale.from_dict(dict(record))


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole derived file via a temporary file and a rename (readers never see half). An unchanged file
    is left alone: the demo's stage fingerprints read its time (notebook 03 rewrites ``curated.jsonl``)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_rationales(run_dir: str | os.PathLike) -> list[teachers.Rationale]:
    """The teacher rationales of a run directory (``rationales.jsonl``)."""
    path = Path(run_dir) / RATIONALES
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebooks/01_generate_rationales.ipynb "
                                f"(or teachers.generate) for this run directory first")
    return teachers.load(run_dir)


# ------------------------------------------------------------------------------------ checks

_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|=|:|would be|will be)|####|\\boxed", re.IGNORECASE)


def _truncated(r: teachers.Rationale, require_answer_phrase: bool) -> bool:
    params = r.params or {}
    if "length" in (r.finish_reason, params.get("finish_reason")):
        return True
    limit, used = params.get("max_tokens"), (r.tokens or {}).get("completion")
    if limit and used and used >= limit:
        return True
    if r.mode == "cot":
        return require_answer_phrase and not _ANSWER_PHRASE.search(answers.cut_run_on(r.text or ""))
    lines = (r.text or "").rstrip().splitlines()
    try:
        compile(r.text or "", "<pot>", "exec")  # compiles only; nothing runs here
    except SyntaxError as exc:
        message = str(exc.msg or "")
        # a program cut mid-statement fails at its last line or with an unclosed bracket/string
        return (exc.lineno or 0) >= len(lines) or any(
            s in message for s in ("EOF", "never closed", "unterminated", "was not closed"))
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, absurd nesting: the sandbox reports those
        return False
    return False


@cache
def _test_side(dataset: str) -> tuple[frozenset, frozenset]:
    """(ids, normalised question texts) of every test-side split of one dataset."""
    if dataset not in data.REGISTRY:
        return frozenset(), frozenset()
    problems = [p for split in data.REGISTRY[dataset].splits if split.startswith("test")
                for p in data.load(dataset, split)]
    return frozenset(p.id for p in problems), frozenset(_norm_question(p.question) for p in problems)


def _leak_sets(problems: Iterable[data.Problem], test_problems) -> tuple[set, set]:
    if test_problems is not None:
        return {(p.dataset, p.id) for p in test_problems}, {_norm_question(p.question) for p in test_problems}
    ids, texts = set(), set()
    for dataset in {p.dataset for p in problems}:
        dataset_ids, dataset_texts = _test_side(dataset)
        ids |= {(dataset, i) for i in dataset_ids}
        texts |= dataset_texts
    return ids, texts


def _similar(a: str, b: str, threshold: float) -> bool:
    if a == b:
        return True
    if threshold >= 1.0:
        return False
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return (matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold
            and matcher.ratio() >= threshold)


def _score(texts: list[str], modes: list[str], config: CurateConfig) -> list[answers.Scored]:
    return answers.score(texts, modes, timeout=config.timeout, memory_mb=config.memory_mb, workers=config.workers,
                         output_chars=_OUTPUT_CHARS)


def _answer_reasons(r: teachers.Rationale, row: dict, config: CurateConfig) -> list[str]:
    """Reasons from one rationale alone: execution, answer, truncation, length."""
    reasons = []
    if r.mode == "pot" and config.check_execution and row["status"] in _EXEC_FAILURES:
        reasons.append(row["status"])
    if config.check_answer:
        if r.mode == "cot" and row["answer"] is None:
            reasons.append("no_answer")
        elif (row["answer"] is not None and not math.isnan(row["gold"])
              and not answers.same(row["answer"], row["gold"])):
            reasons.append("wrong_answer")
    if config.check_truncated and _truncated(r, config.require_answer_phrase):
        reasons.append("truncated")
    limit = config.max_chars_cot if r.mode == "cot" else config.max_chars_pot
    if config.check_length and len(r.text or "") > limit:
        reasons.append("too_long")
    return reasons


def _disagreements(rows: list[dict]) -> list[bool]:
    """Per row: its answer differs from every answer the other mode gives for the same problem."""
    given: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if (answer := answers.to_float(row["answer"])) is not None:
            given.setdefault((row["problem_id"], row["mode"]), []).append(answer)
    out = []
    for row in rows:
        answer = answers.to_float(row["answer"])
        other = given.get((row["problem_id"], "pot" if row["mode"] == "cot" else "cot"), [])
        out.append(answer is not None and bool(other) and not any(answers.same(answer, b) for b in other))
    return out


def _order(reasons: Iterable[str]) -> list[str]:
    unique = set(reasons)
    return [name for name in REASONS if name in unique]


def auto_filter(rationales: Iterable[Any], problems, config: CurateConfig | None = None, *,
                test_problems: Iterable[data.Problem] | None = None) -> pd.DataFrame:
    """One row per rationale: its re-checked answer, ``keep`` and every reason that applies.

    ``rationales``: ``teachers.Rationale`` records (or their dicts); ``problems``: the
    ``data.Problem`` list (or ``data.by_id`` dict) they answer; ``test_problems``: the
    evaluation problems to check leakage against (default: every test-side split).
    Columns: id, problem_id, dataset, mode, teacher, sample, question, gold, answer, status,
    correct, chars, output, error, reasons (``;``-joined), keep.
    """
    import pandas as pd

    config = config or CurateConfig()
    rats = [_as_rationale(r) for r in rationales]
    by_id = problems if isinstance(problems, dict) else data.by_id(problems)
    bad_modes = sorted({r.mode for r in rats} - {"cot", "pot"})
    if bad_modes:
        raise ValueError(f"unknown rationale mode(s) {bad_modes}; expected 'cot' or 'pot'")

    scored = _score([r.text or "" for r in rats], [r.mode for r in rats], config)
    leak_ids, leak_texts = (_leak_sets(by_id.values(), test_problems) if config.check_leakage
                            else (set(), set()))

    rows, reasons = [], []
    for i, r in enumerate(rats):
        problem = by_id.get(r.problem_id)
        gold = float(problem.answer) if problem is not None else math.nan
        answer, status, output, error = dataclasses.astuple(scored[i])
        row = {"id": r.id, "problem_id": r.problem_id,
               "dataset": r.dataset or (problem.dataset if problem else ""),
               "mode": r.mode, "teacher": r.teacher, "sample": r.sample,
               "question": problem.question if problem else "", "gold": gold, "answer": answer,
               "status": status,
               "correct": bool(answer is not None and answers.same(answer, gold)), "chars": len(r.text or ""),
               "output": output, "error": error or ""}
        why = [] if problem is not None else ["unknown_problem"]
        why += _answer_reasons(r, row, config)
        if config.check_leakage and problem is not None and (
                (problem.dataset, problem.id) in leak_ids or _norm_question(problem.question) in leak_texts):
            why.append("leakage")
        rows.append(row)
        reasons.append(why)

    if config.check_agreement:
        for why, disagrees in zip(reasons, _disagreements(rows)):
            if disagrees:
                why.append("cot_pot_disagree")

    if config.check_duplicates:  # last: only rationales that pass every other check are references
        kept: dict[tuple[str, str], list[str]] = {}
        for r, why in zip(rats, reasons):
            text = _norm_text(r.text or "")
            earlier = kept.setdefault((r.problem_id, r.mode), [])
            if any(_similar(text, other, config.duplicate_similarity) for other in earlier):
                why.append("duplicate")
            elif not why:
                earlier.append(text)

    for row, why in zip(rows, reasons):
        ordered = _order(why)
        row["reasons"] = ";".join(ordered)
        row["keep"] = not ordered
    columns = ["id", "problem_id", "dataset", "mode", "teacher", "sample", "question", "gold", "answer",
               "status", "correct", "chars", "output", "error", "reasons", "keep"]
    table = pd.DataFrame(rows, columns=columns)
    table["answer"] = pd.to_numeric(table["answer"], errors="coerce").astype(float)
    return table


_STR_COLUMNS = ("id", "problem_id", "dataset", "mode", "teacher", "question", "status", "output", "error",
                "reasons")


def read_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """``auto_filter.csv`` of a run directory, with the column types ``auto_filter`` returns."""
    import pandas as pd

    path = Path(run_dir) / AUTO_FILTER
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the automatic filter first "
                                "(notebooks/02_curate_rationales.ipynb, or curate.run_auto_filter)")
    table = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS})
    table[list(_STR_COLUMNS)] = table[list(_STR_COLUMNS)].fillna("")
    table["keep"] = table["keep"].astype(bool)
    table["correct"] = table["correct"].astype(bool)
    return table


def run_auto_filter(run_dir: str | os.PathLike, problems, config: CurateConfig | None = None, *,
                    test_problems: Iterable[data.Problem] | None = None) -> pd.DataFrame:
    """``auto_filter`` over ``run_dir/rationales.jsonl``; writes ``auto_filter.csv`` and the manifest."""
    config = config or CurateConfig()
    run_dir = Path(run_dir)
    rats = load_rationales(run_dir)
    start = time.perf_counter()
    table = auto_filter(rats, problems, config, test_problems=test_problems)
    seconds = time.perf_counter() - start
    _write_atomic(run_dir / AUTO_FILTER, table.to_csv(index=False))
    passed = {m: int(table[(table["mode"] == m) & table["keep"]].shape[0]) for m in ("cot", "pot")}
    runs.update_manifest(run_dir, "curate", config=dataclasses.asdict(config), rationales=len(table),
                         passed_checks=passed, auto_filter_seconds=round(seconds, 2))
    return table


# ------------------------------------------------------------------------------ decisions

def read_decisions(run_dir: str | os.PathLike) -> dict[str, dict]:
    """The latest decision per rationale id (``decisions.jsonl`` is append-only; last wins)."""
    latest: dict[str, dict] = {}
    for record in runs.JsonlStore(Path(run_dir) / DECISIONS).read():
        if isinstance(record, dict) and record.get("id") and record.get("action") in ACTIONS:
            latest[record["id"]] = record
    return latest


def _verdict(auto_keep: bool, decision: dict | None) -> str:
    if decision is None:
        return "keep" if auto_keep else "drop"
    return "drop" if decision["action"] == "drop" else "keep"


# drop reasons that are certain when they fire: reading the rationale cannot overturn them
_CERTAIN = {"duplicate", "leakage", "unknown_problem"}
_MODE_NAMES = {"cot": "CoT", "pot": "PoT"}


def _attention(row: dict, disagrees: bool) -> str:
    """Why a human should look at a rationale before the clear-cut ones ("" when nothing stands out)."""
    if disagrees:
        return "the CoT and PoT answers of this problem disagree"
    reasons = set(reason_list(row["reasons"]))
    return "dropped although its answer is right" if reasons and row["correct"] and not reasons & _CERTAIN else ""


def _labels(rows: dict[str, dict]) -> dict[str, str]:
    """Readable ids, e.g. ``chal-994 · PoT · svamp-codex-pot``; ``#1``, ``#2``... where that repeats."""
    base = {rid: f"{row['problem_id']} · {_MODE_NAMES.get(row['mode'], row['mode'])} · "
                 f"{row['teacher'].split(':', 1)[-1].rsplit('/', 1)[-1]}" for rid, row in rows.items()}
    counts, seen = Counter(base.values()), Counter()
    for rid, label in base.items():
        if counts[label] > 1:
            seen[label] += 1
            base[rid] = f"{label} #{seen[label]}"
    return base


def funnel(table: pd.DataFrame, decisions: dict[str, dict] | None = None) -> pd.DataFrame:
    """Rationales per mode at each stage: generated -> passed checks -> kept after review."""
    import pandas as pd

    decisions = decisions or {}
    modes = [m for m in ("cot", "pot") if (table["mode"] == m).any()] or ["cot", "pot"]
    out = {}
    for mode in modes:
        part = table[table["mode"] == mode]
        final = sum(_verdict(k, decisions.get(i)) == "keep" for i, k in zip(part["id"], part["keep"]))
        out[mode] = [len(part), int(part["keep"].sum()), int(final)]
    stages = pd.Index(["generated", "passed checks", "kept after review"], name="stage")
    frame = pd.DataFrame(out, index=stages)
    frame["all"] = frame.sum(axis=1)
    return frame


def reasons_table(table: pd.DataFrame, config: CurateConfig | None = None) -> pd.DataFrame:
    """Per reason and mode: how many rationales it flags and how many pass it (each check alone).

    With ``config``, every reason of an enabled check has a row (zeros included); without,
    only the reasons that flag something. Execution reasons are blank for CoT.
    """
    import pandas as pd

    modes = [m for m in ("cot", "pot") if (table["mode"] == m).any()]
    flags = table["reasons"].map(reason_list)
    present = {r for rs in flags for r in rs}
    rows = {}
    for reason, switch in REASONS.items():
        enabled = config is not None and (switch == "always" or getattr(config, switch))
        if reason not in present and not (enabled and reason != "unknown_problem"):
            continue
        row = {}
        for mode in modes:
            mask = table["mode"] == mode
            hit = sum(reason in rs for rs in flags[mask])
            applies = mode == "pot" or switch != "check_execution" or reason == "no_answer"
            row[f"{mode} flagged"] = hit if applies else pd.NA
            row[f"{mode} pass"] = int(mask.sum()) - hit if applies else pd.NA
        rows[reason] = row
    columns = [f"{m} {kind}" for m in modes for kind in ("flagged", "pass")]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns).astype("Int64")
    frame.index.name = "reason"
    return frame


def plot_funnel(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Grouped bars of ``funnel(...)`` (stages x modes), saved as a PNG."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    if "MPLBACKEND" not in os.environ and not backend.startswith(("module://", "agg")):
        matplotlib.use("Agg")  # no display (a server, a headless kernel): render to files only
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = [c for c in df.columns if c != "all"]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(df))]
        bars = ax.bar(xs, df[mode].values, width, label=mode.upper())
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(df)), list(df.index))
    ax.set_ylabel("rationales")
    ax.set_title("Curation funnel")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curated(run_dir: str | os.PathLike, *, write: bool = True) -> list[teachers.Rationale]:
    """Rationales to train on: automatic verdicts overridden by human ones; writes ``curated.jsonl``.

    Kept rationales carry the re-checked answer and status; an edit replaces text, answer and
    status (and sets ``params["edited"] = True``).
    """
    run_dir = Path(run_dir)
    rats = load_rationales(run_dir)
    table = read_table(run_dir)
    rows = {row["id"]: row for row in table.to_dict("records")}
    missing = [r.id for r in rats if r.id not in rows]
    if missing:
        raise ValueError(f"{len(missing)} rationale(s) in {run_dir / RATIONALES} are not in {AUTO_FILTER} "
                         f"(e.g. {missing[0]!r}): it is out of date; rerun the automatic filter "
                         "(notebook 02)")
    decisions = read_decisions(run_dir)
    out = []
    for r in rats:
        row, decision = rows[r.id], decisions.get(r.id)
        if _verdict(bool(row["keep"]), decision) != "keep":
            continue
        if decision is not None and decision["action"] == "edit":
            out.append(dataclasses.replace(r, text=decision["text"],
                                           answer=answers.to_float(decision.get("answer")),
                                           status=decision.get("status") or "ok",
                                           error=decision.get("error") or None,
                                           params={**(r.params or {}), "edited": True}))
        else:
            answer = row["answer"]
            out.append(dataclasses.replace(r, answer=answers.to_float(answer), status=row["status"],
                                           error=row["error"] or None))
    if write:
        _write_atomic(run_dir / CURATED, "".join(runs.dumps(r) + "\n" for r in out))
    return out


# --------------------------------------------------------------------------- curation state

def recheck(text: str, mode: str, config: CurateConfig | None = None) -> dict:
    """Answer, status, output and error of an edited rationale (PoT re-executed, CoT re-extracted)."""
    scored = _score([text], [mode], config or CurateConfig())[0]
    return {**dataclasses.asdict(scored), "error": scored.error or ""}


@dataclasses.dataclass
class Item:
    """What the curator shows for one rationale (the edited version when there is one)."""
    id: str
    label: str  # readable id: problem, mode, teacher (and #n when that teacher wrote several)
    problem_id: str
    mode: str
    teacher: str
    dataset: str
    question: str
    gold: float
    text: str  # the edited text when edited, else the teacher's
    answer: float | None
    status: str
    output: str
    error: str
    reasons: list[str]  # automatic reasons for the text shown (re-checked after an edit)
    auto_keep: bool
    attention: str  # why a human should look first ("" when the automatic verdict is clear-cut)
    decision: dict | None  # latest human decision
    verdict: str  # "keep" | "drop": the decision if any, else the automatic verdict
    correct: bool  # answer is answers.same as gold
    others: list[dict]  # the other rationales of the same problem: id, mode, teacher, answer, verdict


class CurationState:
    """The queue, filters, current item and decisions of one run directory (no widgets)."""

    def __init__(self, run_dir: str | os.PathLike, *, config: CurateConfig | None = None):
        self.run_dir = Path(run_dir)
        self.config = config or CurateConfig()
        table = read_table(self.run_dir)
        self.rationales = {r.id: r for r in load_rationales(self.run_dir)}
        self.rows: dict[str, dict] = {row["id"]: row for row in table.to_dict("records")}
        self.attention = {rid: _attention(row, disagrees) for (rid, row), disagrees
                          in zip(self.rows.items(), _disagreements(list(self.rows.values())))}
        first_seen: dict[str, int] = {}
        for row in self.rows.values():
            first_seen.setdefault(row["problem_id"], len(first_seen))
        # what needs a human first (disagreements, doubtful drops), then other automatic drops, then
        # clean passes; within each, one problem's rationales together, CoT before PoT, in file order
        index = {rid: i for i, rid in enumerate(self.rows)}
        self.order: list[str] = sorted(self.rows, key=lambda i: (
            0 if self.attention[i] else 1 if not self.rows[i]["keep"] else 2,
            first_seen[self.rows[i]["problem_id"]], self.rows[i]["mode"], index[i]))
        self._by_problem: dict[str, list[str]] = {}
        for rid in self.rows:
            self._by_problem.setdefault(self.rows[rid]["problem_id"], []).append(rid)
        self.labels = _labels(self.rows)
        self.store = runs.JsonlStore(self.run_dir / DECISIONS)
        self.decisions: dict[str, dict] = read_decisions(self.run_dir)
        self.filters: dict[str, str | None] = dict.fromkeys(FILTERS)
        self.queue: list[str] = list(self.order)
        self.position = 0
        self._restore()

    # ---- persistence of the position
    def _restore(self) -> None:
        path = self.run_dir / STATE
        saved = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                saved = {}  # replaced atomically, so only a hand edit can break it: start fresh
        options = self.options()
        filters = {k: v for k, v in (saved.get("filters") or {}).items()
                   if k in self.filters and (v is None or v in options[k])}
        self.filters.update(filters)
        self.queue = self._select()
        current = saved.get("current")
        if current in self.queue:
            self.position = self.queue.index(current)
        else:  # first visit: the first item nobody has decided on yet
            self.position = next((i for i, rid in enumerate(self.queue) if rid not in self.decisions), 0)

    def _save(self) -> None:
        runs.write_json_atomic(self.run_dir / STATE, {"current": self.current_id, "filters": self.filters,
                                                      "updated": _now()})

    # ---- queue and filters
    def options(self) -> dict[str, list[str]]:
        """The values each filter can take in this run directory."""
        present = {r for row in self.rows.values() for r in reason_list(row["reasons"])}
        return {"mode": sorted({row["mode"] for row in self.rows.values()}),
                "reason": [r for r in REASONS if r in present] + ["none"],
                "verdict": list(VERDICTS),
                "teacher": sorted({row["teacher"] for row in self.rows.values()}),
                "dataset": sorted({row["dataset"] for row in self.rows.values()})}

    def _matches(self, rid: str) -> bool:
        row, f = self.rows[rid], self.filters
        if f["mode"] and row["mode"] != f["mode"]:
            return False
        if f["teacher"] and row["teacher"] != f["teacher"]:
            return False
        if f["dataset"] and row["dataset"] != f["dataset"]:
            return False
        if f["reason"]:
            reasons = reason_list(row["reasons"])
            if (f["reason"] == "none" and reasons) or (f["reason"] != "none" and f["reason"] not in reasons):
                return False
        if f["verdict"]:
            decision = self.decisions.get(rid)
            wanted = f["verdict"]
            if wanted in ("keep", "drop") and _verdict(bool(row["keep"]), decision) != wanted:
                return False
            if wanted == "reviewed" and decision is None:
                return False
            if wanted == "unreviewed" and decision is not None:
                return False
            if wanted == "edited" and (decision is None or decision["action"] != "edit"):
                return False
        return True

    def _select(self) -> list[str]:
        return [rid for rid in self.order if self._matches(rid)]

    def set_filters(self, **filters: str | None) -> int:
        """Filter the queue (mode, reason, verdict, teacher, dataset; None = any); returns its length.

        The queue is a snapshot: deciding on an item does not move it out of the queue under
        your feet; set the filters again to refresh it.
        """
        unknown = sorted(set(filters) - set(self.filters))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; known: {sorted(self.filters)}")
        options = self.options()
        for key, value in filters.items():
            if value is not None and value not in options[key]:
                raise ValueError(f"filter {key}={value!r} matches nothing; "
                                 f"choose one of {options[key]} or None")
        current = self.current_id
        self.filters.update(filters)
        self.queue = self._select()
        self.position = self.queue.index(current) if current in self.queue else 0
        self._save()
        return len(self.queue)

    @property
    def current_id(self) -> str | None:
        return self.queue[self.position] if self.queue else None

    @property
    def current(self) -> Item | None:
        return self.item(self.current_id) if self.queue else None

    def next(self) -> bool:
        """Move to the next item in the queue; False at the end."""
        moved = self.position + 1 < len(self.queue)
        if moved:
            self.position += 1
            self._save()
        return moved

    def previous(self) -> bool:
        """Move to the previous item in the queue; False at the start."""
        moved = self.position > 0
        if moved:
            self.position -= 1
            self._save()
        return moved

    def goto(self, rationale_id: str) -> None:
        if rationale_id not in self.queue:
            raise KeyError(f"{rationale_id!r} is not in the current queue (filters: {self.filters})")
        self.position = self.queue.index(rationale_id)
        self._save()

    # ---- items
    def verdict(self, rationale_id: str) -> str:
        return _verdict(bool(self.rows[rationale_id]["keep"]), self.decisions.get(rationale_id))

    def item(self, rationale_id: str) -> Item:
        row, decision = self.rows[rationale_id], self.decisions.get(rationale_id)
        rationale = self.rationales.get(rationale_id)
        edited = decision is not None and decision["action"] == "edit"
        source = decision if edited else row
        answer = answers.to_float(source.get("answer"))
        reasons = reason_list(row["reasons"])
        if edited and rationale is not None:  # the same checks, on the edited text (the sandbox ran in edit())
            fresh = dataclasses.replace(rationale, text=decision["text"], params={}, tokens={}, finish_reason=None)
            reasons = _order(_answer_reasons(fresh, {"status": decision.get("status"), "answer": answer,
                                                     "gold": float(row["gold"])}, self.config)
                             + [r for r in reasons if r in ("leakage", "unknown_problem")])
        others = [{"id": o, "mode": self.rows[o]["mode"], "teacher": self.rows[o]["teacher"],
                   "answer": self._answer(o), "verdict": self.verdict(o)}
                  for o in self._by_problem[row["problem_id"]] if o != rationale_id]
        return Item(id=rationale_id, label=self.labels[rationale_id], problem_id=row["problem_id"], mode=row["mode"],
                    teacher=row["teacher"], dataset=row["dataset"], question=row["question"], gold=float(row["gold"]),
                    text=decision["text"] if edited else (rationale.text if rationale else ""),
                    answer=answer, status=source.get("status") or "", output=source.get("output") or "",
                    error=source.get("error") or "", reasons=reasons, auto_keep=bool(row["keep"]),
                    attention=self.attention[rationale_id], decision=decision, verdict=self.verdict(rationale_id),
                    correct=answer is not None and answers.same(answer, row["gold"]), others=others)

    def _answer(self, rid: str) -> float | None:
        decision = self.decisions.get(rid)
        if decision is not None and decision["action"] == "edit":
            return answers.to_float(decision.get("answer"))
        return answers.to_float(self.rows[rid]["answer"])

    # ---- actions
    def _decide(self, action: str, reason: str, **extra: Any) -> dict:
        rid = self.current_id
        if rid is None:
            raise IndexError("the queue is empty: nothing to decide on (loosen the filters)")
        row = self.rows[rid]
        record = {"id": rid, "problem_id": row["problem_id"], "mode": row["mode"], "action": action,
                  "reason": reason or "", "time": _now(), **extra}
        self.store.append(record)  # flushed and fsynced before the click returns
        self.decisions[rid] = record
        return record

    def keep(self, reason: str = "", *, advance: bool = True) -> dict:
        """Keep the current rationale (overrides the automatic verdict); then move on."""
        record = self._decide("keep", reason)
        if not (advance and self.next()):
            self._save()
        return record

    def drop(self, reason: str = "", *, advance: bool = True) -> dict:
        """Drop the current rationale; then move on."""
        record = self._decide("drop", reason)
        if not (advance and self.next()):
            self._save()
        return record

    def edit(self, text: str, reason: str = "edited") -> dict:
        """Replace the current rationale's text (kept): a PoT is re-executed, a CoT re-extracted.

        Stays on the item so the new answer can be seen.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("an edit needs the new, non-empty rationale text")
        mode = self.rows[self.current_id]["mode"] if self.queue else "cot"
        checked = recheck(text, mode, self.config)
        record = self._decide("edit", reason, text=text, **checked)
        self._save()
        return record

    # ---- progress
    def progress(self) -> dict[str, int]:
        """Reviewed items in the queue and overall."""
        return {"reviewed": sum(rid in self.decisions for rid in self.queue), "queue": len(self.queue),
                "reviewed_all": sum(rid in self.decisions for rid in self.rows), "all": len(self.rows)}

    def summary(self) -> pd.DataFrame:
        """Per mode: generated, passed checks, reviewed, kept / dropped / edited by hand, kept in the end."""
        import pandas as pd

        rows = {}
        for mode in self.options()["mode"]:
            ids = [rid for rid in self.order if self.rows[rid]["mode"] == mode]
            actions = [self.decisions[rid]["action"] for rid in ids if rid in self.decisions]
            rows[mode] = {"generated": len(ids),
                          "passed checks": sum(bool(self.rows[r]["keep"]) for r in ids),
                          "reviewed": len(actions), "kept by hand": actions.count("keep"),
                          "dropped by hand": actions.count("drop"), "edited": actions.count("edit"),
                          "kept after review": sum(self.verdict(r) == "keep" for r in ids)}
        return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------------------------------ widget

def highlight_python(code: str) -> str:
    """HTML for a program with inline-styled syntax highlighting (no CSS needed by the frontend)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, style="friendly"))


_ANY = "(any)"
_TABLE_STYLE = ("<style>.mdlab-summary table{border-collapse:collapse;margin-top:4px}"
                ".mdlab-summary th,.mdlab-summary td{padding:2px 10px;text-align:right;"
                "border-bottom:1px solid #ddd}</style>")


def _fmt(value: Any) -> str:
    number = answers.to_float(value)
    if number is None:
        return "none"
    return f"{number:g}" if abs(number) < 1e15 else repr(number)


# single keys as in Prodigy and Argilla; arrows for moving. Shown on the buttons.
KEYS = {"k": "keep", "d": "drop", "e": "edit", "n": "next", "ArrowRight": "next", "p": "previous",
        "ArrowLeft": "previous"}
_KEY_NAMES = {"ArrowRight": "→", "ArrowLeft": "←"}
# anywidget (its labextension ships in the wheel) forwards the key presses inside the curator
_KEYS_JS = """
const KEYS = __KEYS__;
export default { render({ model, el }) {
  let frame = 0;
  const arm = () => {  // the curator's box holds this element once ipywidgets has attached it
    const root = el.closest(".mdlab-curator");
    if (!root) return void (frame = requestAnimationFrame(arm));
    root.tabIndex = 0;  // a click on its text focuses the curator, not the notebook behind it
    root.addEventListener("click", (e) => e.target.closest("button, input, textarea, select")
                                          || root.focus({ preventScroll: true }));
  };
  const onKey = (e) => {
    const root = el.closest(".mdlab-curator");
    if (!root || !root.contains(e.target) || e.ctrlKey || e.metaKey || e.altKey
        || e.target.closest("input, textarea, select, [contenteditable]")) return;  // typing
    // a plain key belongs to the curator: JupyterLab's single-key notebook commands (d d deletes
    // the cell, x cuts it) must not act on the notebook behind it
    e.stopPropagation();
    if (KEYS.includes(e.key)) { e.preventDefault(); model.send({ key: e.key }); }
  };
  arm();
  document.addEventListener("keydown", onKey, true);  // capture: before JupyterLab's own handler
  return () => { cancelAnimationFrame(frame); document.removeEventListener("keydown", onKey, true); };
} };
""".replace("__KEYS__", json.dumps(list(KEYS)))
_DONE = {"keep": "kept", "drop": "dropped", "edit": "edited"}
_COLOURS = {"keep": ("#1a7f37", "#dafbe1"), "drop": ("#cf222e", "#ffebe9"), "look": ("#9a6700", "#fff8c5")}


def _verdict_html(item: Item) -> str:
    """The verdict as a coloured line: green kept, red dropped, amber needs a look; with the reasons."""
    decision, action = item.decision, (item.decision or {}).get("action")
    checks = ", ".join(f"<code>{r}</code>" for r in item.reasons) or "all checks pass"
    automatic = f"automatic: {'keep' if item.auto_keep else 'drop'} ({checks})"
    if action == "edit":  # the checks were re-run on the edited text
        kind = "look" if item.reasons else "keep"
        text = f"<b>kept, edited</b> by you · re-checked: {checks}"
    elif action:
        reason = f" ({html.escape(decision['reason'])})" if decision.get("reason") else ""
        kind, text = action, f"<b>{_DONE[action]}</b> by you{reason} · {automatic}"
    elif item.attention:
        kind, text = "look", f"<b>needs a look</b>: {html.escape(item.attention)} · {automatic}"
    else:
        kind = "keep" if item.auto_keep else "drop"
        text = f"<b>{_DONE[kind]}</b> automatically: {checks}"
    line, background = _COLOURS[kind]
    return (f"<div class='mdlab-verdict mdlab-verdict-{kind}' style='border-left:6px solid {line};"
            f"background:{background};padding:2px 8px'>{text}</div>")


class Curator:
    """ipywidgets view over a ``CurationState``: read, then keep / drop / edit, next / previous.

    Every button has a stable CSS class (``mdlab-keep``, ``mdlab-drop``, ``mdlab-edit``,
    ``mdlab-next``, ``mdlab-previous``, ``mdlab-save``, ``mdlab-cancel``) for tests and styling.
    Keyboard: once the curator has focus (click it), ``KEYS`` act as the buttons (k keep, d drop,
    e edit, n or → next, p or ← previous), except while typing in a text box; Tab moves through
    the controls and Space or Enter presses the focused button.
    """

    BUTTONS = ("previous", "keep", "drop", "edit", "next")

    def __init__(self, run_dir: str | os.PathLike | None = None, *, state: CurationState | None = None,
                 config: CurateConfig | None = None):
        import anywidget
        import ipywidgets as w

        if state is None and run_dir is None:
            raise ValueError("Curator needs a run directory (or a CurationState)")
        self.state = state or CurationState(run_dir, config=config)
        options = self.state.options()
        self.filters = {}
        for key in FILTERS:
            # a string, not None, for "any": a Dropdown shows None as an empty box
            dropdown = w.Dropdown(options=[_ANY] + options[key], value=self.state.filters[key] or _ANY,
                                  description=key,
                                  layout=w.Layout(width="auto"), style={"description_width": "initial"})
            dropdown.add_class(f"mdlab-filter-{key}")
            dropdown.observe(self._on_filter, names="value")
            self.filters[key] = dropdown
        self.header, self.question, self.rationale, self.result = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.verdict, self.context, self.message = w.HTML(), w.HTML(), w.HTML()
        for name in ("header", "question", "verdict", "message"):
            getattr(self, name).add_class(f"mdlab-{name}")
        self.reason = w.Text(placeholder="reason for your decision (optional)", description="reason",
                             layout=w.Layout(width="40%"))
        self.reason.add_class("mdlab-reason")
        tips = {"previous": "previous item", "keep": "keep this rationale and go to the next",
                "drop": "drop this rationale and go to the next",
                "edit": "edit the text (re-checked on save)", "next": "next item"}
        styles = {"keep": "success", "drop": "danger", "edit": "warning"}
        self.buttons = {}
        for name in self.BUTTONS:
            keys = "/".join(_KEY_NAMES.get(k, k) for k, action in KEYS.items() if action == name)
            button = w.Button(description=f"{name} ({keys})", tooltip=f"{tips[name]}; key {keys}",
                              button_style=styles.get(name, ""), layout=w.Layout(width="auto"))
            button.add_class(f"mdlab-{name}")
            button.on_click(getattr(self, f"_on_{name}"))
            self.buttons[name] = button
        # width auto, not 100%: a full width plus the widget margins overflowed into a scrollbar
        self.editor = w.Textarea(layout=w.Layout(width="auto"))
        self.editor.add_class("mdlab-editor")
        self.save = w.Button(description="save edit", button_style="warning")
        self.save.add_class("mdlab-save")
        self.save.on_click(self._on_save)
        self.cancel = w.Button(description="cancel")
        self.cancel.add_class("mdlab-cancel")
        self.cancel.on_click(self._on_cancel)
        self.editor_box = w.VBox([self.editor, w.HBox([self.save, self.cancel])],
                                 layout=w.Layout(display="none"))
        self.keys = anywidget.AnyWidget(_esm=_KEYS_JS)
        self.keys.on_msg(self._on_key)
        self.progress = w.IntProgress(min=0, max=1, description="reviewed", bar_style="info")
        self.progress_label = w.Label()
        self.summary = w.HTML()
        self.summary.add_class("mdlab-summary")
        hint = w.HTML("<small>Click the curator, then use the keys on its buttons (not while typing in a box)</small>")
        self.widget = w.VBox([
            w.HBox(list(self.filters.values()), layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.progress, self.progress_label]),
            # the editor takes the rationale's place: the text is edited where it was read
            self.header, self.question, self.rationale, self.editor_box, self.result, self.verdict, self.context,
            w.HBox([self.buttons[n] for n in self.BUTTONS] + [self.reason], layout=w.Layout(flex_flow="row wrap")),
            self.message, hint, self.keys, self.summary,
        ])
        self.widget.add_class("mdlab-curator")
        self.refresh()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- rendering
    def refresh(self) -> None:
        state = self.state
        progress = state.progress()
        self.progress.max = max(1, progress["queue"])
        self.progress.value = progress["reviewed"]
        self.progress_label.value = (f"{progress['reviewed']} of {progress['queue']} in this queue; "
                                     f"{progress['reviewed_all']} of {progress['all']} overall")
        self.summary.value = _TABLE_STYLE + "<b>summary</b>" + state.summary().to_html(border=0)
        item = state.current
        for name in ("keep", "drop", "edit"):
            self.buttons[name].disabled = item is None
        self.buttons["previous"].disabled = state.position <= 0
        self.buttons["next"].disabled = state.position + 1 >= len(state.queue)
        if item is None:
            self.header.value = "<i>no rationale matches these filters</i>"
            for part in (self.question, self.rationale, self.result, self.verdict, self.context):
                part.value = ""
            return
        esc = html.escape
        self.header.value = (f"<b>{state.position + 1} / {len(state.queue)}</b> &nbsp; "
                             f"<span class='mdlab-id' title='{esc(item.id)}' style='font-size:larger'>"
                             f"<b>{esc(item.label)}</b></span>")
        self.question.value = (f"<div><b>Question</b>: {esc(item.question)}"
                               f"<br><b>Gold answer</b>: {_fmt(item.gold)}</div>")
        if item.mode == "pot":
            self.rationale.value = "<b>Program</b>" + highlight_python(item.text)
        else:
            self.rationale.value = ("<b>Chain of thought</b><div style='white-space:pre-wrap;"
                                    f"border-left:3px solid #ccc;padding-left:8px'>{esc(item.text)}</div>")
        mark = "&#10004; right" if item.correct else "&#10008; wrong"
        lines = [f"<b>Answer</b>: {_fmt(item.answer)} ({mark}; status {esc(item.status)})"]
        if item.output:
            lines.append(f"<b>Output</b><pre>{esc(item.output)}</pre>")
        if item.error:
            lines.append(f"<b>Error</b><pre style='color:#a00'>{esc(item.error)}</pre>")
        self.result.value = "<br>".join(lines)
        self.verdict.value = _verdict_html(item)
        self.context.value = ("<b>Other rationales for this problem</b>: " + (", ".join(
            f"{esc(state.labels[o['id']])} answers {_fmt(o['answer'])} [{o['verdict']}]"
            for o in item.others) or "none"))

    # ---- events
    def _act(self, action) -> None:
        """Run a state action; then a one-line confirmation naming the item, or the error."""
        try:
            record = action()
        except (IndexError, ValueError, KeyError) as exc:
            self.message.value = f"<span style='color:#a00'>{html.escape(str(exc))}</span>"
        else:
            self._show_editor(False)
            self.message.value = self._confirmation(record) if isinstance(record, dict) else ""
        self.refresh()

    def _confirmation(self, record: dict) -> str:
        item, progress = self.state.item(record["id"]), self.state.progress()
        text = f"{_DONE[record['action']]} <b>{html.escape(item.label)}</b>"
        if record["action"] == "edit":
            text += (f": answer {_fmt(item.answer)} ({'right' if item.correct else 'wrong'}), "
                     + (", ".join(item.reasons) or "all checks pass"))
        return text + f" — {progress['reviewed']} of {progress['queue']} decided"

    def _show_editor(self, show: bool) -> None:
        self.editor_box.layout.display = "" if show else "none"
        self.rationale.layout.display = "none" if show else ""

    def _take_reason(self) -> str:
        reason, self.reason.value = self.reason.value.strip(), ""
        return reason

    def _on_key(self, _widget, content: dict, _buffers=None) -> None:
        action = KEYS.get(content.get("key"))
        if action is not None and not self.buttons[action].disabled:  # a key does what its button does
            getattr(self, f"_on_{action}")()

    def _on_keep(self, _=None) -> None:
        self._act(lambda: self.state.keep(self._take_reason()))

    def _on_drop(self, _=None) -> None:
        self._act(lambda: self.state.drop(self._take_reason()))

    def _on_next(self, _=None) -> None:
        self._act(self.state.next)

    def _on_previous(self, _=None) -> None:
        self._act(self.state.previous)

    def _on_edit(self, _=None) -> None:
        item = self.state.current
        if item is not None:
            self.editor.value = item.text
            # the whole text in view, no scrollbar inside (about 90 characters a row at notebook width)
            self.editor.rows = sum(len(line) // 90 + 1 for line in item.text.splitlines()) + 1
            self._show_editor(True)

    def _on_save(self, _=None) -> None:
        self._act(lambda: self.state.edit(self.editor.value, self._take_reason() or "edited"))

    def _on_cancel(self, _=None) -> None:
        self._show_editor(False)

    def _on_filter(self, _change=None) -> None:
        self._act(lambda: self.state.set_filters(**{k: None if d.value == _ANY else d.value
                                                     for k, d in self.filters.items()}))

"""Automatic filters and the curated training set (notebook 02).

1. ``auto_filter``: one row per rationale with ``keep`` and every reason (``REASONS``, each under a ``check_*``
   switch of ``CurateConfig``); answers are re-checked (``answers.score``), never trusted as stored.
2. Human review (``CurationState``, the ``Curator`` widget: ``mdlab.widgets``) appends ``decisions.jsonl``.
3. ``curated``: automatic verdicts overridden by human ones, written to ``curated.jsonl`` for training.
What each reason means: docs/design.md ("Module notes": curate and widgets).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import time
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdlab import answers, data, runs, teachers
from mdlab.config import check_positive

if TYPE_CHECKING:  # pandas loads inside functions: config.load imports this module
    import pandas as pd

RATIONALES = teachers.RATIONALES_FILE
AUTO_FILTER = "auto_filter.csv"
DECISIONS = "decisions.jsonl"
STATE = "curation_state.json"
CURATED = "curated.jsonl"

# display order; each reason belongs to one switch
# (no_answer: a PoT's sandbox status under check_execution; a CoT's under check_answer, see _answer_reasons)
REASONS: dict[str, str] = {
    "unknown_problem": "always", "leakage": "check_leakage",
    **dict.fromkeys(("error", "timeout", "memory", "forbidden", "no_answer", "no_code"), "check_execution"),
    "wrong_answer": "check_answer", "cot_pot_disagree": "check_agreement", "truncated": "check_truncated",
    "too_long": "check_length", "duplicate": "check_duplicates"}
_EXEC_FAILURES = tuple(r for r, check in REASONS.items() if check == "check_execution")
ACTIONS = ("keep", "drop", "edit")
FILTERS = ("mode", "reason", "verdict", "teacher", "dataset")
VERDICTS = ("keep", "drop", "reviewed", "unreviewed", "edited")
_OUTPUT_CHARS = 2000  # stdout kept per program in auto_filter.csv


@dataclasses.dataclass
class CurateConfig:
    # each check_* switch: True = rationales failing that check get its reason and are dropped
    check_answer: bool = True  # answer differs from gold (wrong_answer); a CoT with no number (no_answer)
    check_execution: bool = True  # PoT fails in the sandbox (error/timeout/memory/forbidden/no_answer/no_code)
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
        check_positive(self, "curate", ("max_chars_cot", "max_chars_pot", "memory_mb"))
        check_positive(self, "curate", ("workers",), nullable=True)
        if not 0.0 < self.duplicate_similarity <= 1.0 or self.timeout <= 0:
            raise ValueError(f"curate: need duplicate_similarity in (0, 1] and timeout > 0 seconds, got "
                             f"{self.duplicate_similarity} and {self.timeout}")


# ------------------------------------------------------------------------------ small helpers

def reason_list(reasons: str | float | None) -> list[str]:
    """The reasons of one row as a list (the CSV stores them ``;``-joined)."""
    return reasons.split(";") if isinstance(reasons, str) and reasons else []


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _norm_question(text: str) -> str:
    return _norm_text(text).rstrip(".?! ")


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
    if a == b or threshold >= 1.0:
        return a == b
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


def _order(reasons: list[str]) -> list[str]:
    return [name for name in REASONS if name in reasons]


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
    rats = [r if isinstance(r, teachers.Rationale) else teachers.Rationale.from_dict(dict(r))
            for r in rationales]
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
               "dataset": r.dataset or (problem.dataset if problem else ""), "mode": r.mode,
               "teacher": r.teacher, "sample": r.sample, "question": problem.question if problem else "",
               "gold": gold, "answer": answer, "status": status, "correct": answers.same(answer, gold),
               "chars": len(r.text or ""), "output": output, "error": error or ""}
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
        row["reasons"] = ";".join(_order(why))
        row["keep"] = not row["reasons"]
    table = pd.DataFrame(rows, columns=["id", "problem_id", "dataset", "mode", "teacher", "sample",
                                        "question", "gold", "answer", "status", "correct", "chars", "output",
                                        "error", "reasons", "keep"])
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
    runs.write_text_atomic(run_dir / AUTO_FILTER, table.to_csv(index=False))
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


def curated(run_dir: str | os.PathLike, *, write: bool = True) -> list[teachers.Rationale]:
    """Rationales to train on: automatic verdicts overridden by human ones; writes ``curated.jsonl``.

    Kept rationales carry the re-checked answer and status; an edit replaces text, answer and
    status (and sets ``params["edited"] = True``).
    """
    run_dir = Path(run_dir)
    rats = load_rationales(run_dir)
    rows = {row["id"]: row for row in read_table(run_dir).to_dict("records")}
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
            out.append(dataclasses.replace(r, answer=answers.to_float(row["answer"]), status=row["status"],
                                           error=row["error"] or None))
    if write:
        runs.write_text_atomic(run_dir / CURATED, "".join(runs.dumps(r) + "\n" for r in out))
    return out


def recheck(text: str, mode: str, config: CurateConfig | None = None) -> dict:
    """Answer, status, output and error of an edited rationale (PoT re-executed, CoT re-extracted)."""
    scored = _score([text], [mode], config or CurateConfig())[0]
    return {**dataclasses.asdict(scored), "error": scored.error or ""}


def __getattr__(name: str):
    if name in ("CurationState", "Item", "Curator", "KEYS", "highlight_python"):
        from mdlab import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

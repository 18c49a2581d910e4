"""Published teacher outputs: the registry (``recorded_teachers.json``) and one parser per file format.

Each source names its data files (pinned in ``data_sources.json``), the problems it covers, its
authors' sampling parameters and a ``format``; ``PARSERS[format]`` reads the files into
(question text, raw rationale, cleaned text or None) rows, matched to problem ids by their
normalised text. Sources marked ``evaluation_only`` cover only a test split: every rationale
they give would be dropped by the leakage filter, so ``TeacherConfig`` refuses them as training
teachers. ``teachers.Recorded`` serves a source as a teacher.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from mdlab import answers, data
from mdlab.gold import fmt_number

SOURCES: dict[str, dict] = json.loads(Path(__file__).with_name("recorded_teachers.json").read_text())
_ANSWER_EXPR = re.compile(r"The answer is\s*(.+?)\s*\.?\s*$", re.S)

Row = tuple[str, str, "str | None"]  # (question text, raw rationale, cleaned text or None: clean as usual)


def clean_palm(text: str) -> str:
    """PaLM's CoT: cut the run-on into the next exemplar, and 'The answer is (16 * 17) * 4.' -> '... 1088.'.

    An answer expression that does not evaluate (``(some bags + 4 bags)``) is left as written.
    """
    text = answers.cut_run_on(text or "").strip()
    idx = text.rfind("The answer is")
    match = _ANSWER_EXPR.match(text[idx:]) if idx >= 0 else None
    value = answers.safe_arith(match.group(1).strip()) if match else None
    return text if value is None else f"{text[:idx]}The answer is {fmt_number(value)}."


def with_answer_phrase(text: str) -> str:
    """A CoT that ends in prose ("Therefore, Luke scored 42 points ...") with "The answer is 42." appended.

    MCC-KD's gpt-3.5 CoTs state their answer in a sentence, while the student learns to finish with
    "The answer is N." (``prompts.STUDENT_INSTRUCTION``). Texts that already have the phrase, or
    commit to no number, are returned unchanged.
    """
    text = text.rstrip()
    value = None if re.search(r"answer\s*(?:is|=|:)", text, re.I) else answers.extract(text)
    if value is None:
        return text
    number = str(int(value)) if float(value).is_integer() else f"{value:.4f}".rstrip("0").rstrip(".")
    return f"{text}\nThe answer is {number}."


def _distilling_step_by_step(files: list[str]) -> Iterator[Row]:
    """Problem rows (train, test) and their CoT lists, in the same order."""
    rows = data._jsonl(files[0]) + data._jsonl(files[1])
    texts = [text for f in files[2:] for text in data._json(f)]
    if len(rows) != len(texts):
        raise data.DataError(f"{len(rows)} rows but {len(texts)} rationales; the files are not the pinned versions")
    for row, raw in zip(rows, texts):
        yield row["input"], raw, clean_palm(raw)


def _program_of_thoughts(files: list[str]) -> Iterator[Row]:
    for row in data._jsonl(files[0]):
        if "generated" in row:  # lines without it are the few-shot prompt ("demonstration") of resumed runs
            program = row["generated"][0] if isinstance(row["generated"], list) else row["generated"]
            yield f"{row.get('passage', '')} {row['question']}", program, None


def _fine_tune_cot(files: list[str]) -> Iterator[Row]:
    """The reasoning, then the answer prompt and the model's answer completion."""
    for _, rows in sorted(data._json(files[0])["data"].items(), key=lambda kv: int(kv[0])):
        for row in rows:
            raw = row["reasoning_completion"].rstrip() + "\nTherefore, the answer is" + row.get("completion", "").rstrip()
            yield row["question"], raw, None


def _mcc_kd(files: list[str]) -> Iterator[Row]:
    for row in data._json(files[0]):
        for raw in row["output"]:
            yield row["instruction"], raw, with_answer_phrase(raw)


def _mentor_kd(files: list[str]) -> Iterator[Row]:
    for row in data._json(files[0]):
        yield row["input"], row["chain"], None


PARSERS: dict[str, Callable[[list[str]], Iterator[Row]]] = {
    "distilling-step-by-step": _distilling_step_by_step, "program-of-thoughts": _program_of_thoughts,
    "fine-tune-cot": _fine_tune_cot, "mcc-kd": _mcc_kd, "mentor-kd": _mentor_kd}


def norm_text(text: str) -> str:
    """Problem text for matching across sources: lower case, letters and digits only."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@lru_cache(maxsize=None)
def text_index(dataset: str, split: str) -> dict[str, list[str]]:
    """Normalised problem text -> problem ids (a list: a few datasets repeat a text)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = data.load(dataset, split)
    index: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        index[norm_text(p.question)].append(p.id)
    return dict(index)


def load(source: str) -> tuple[dict[str, list[tuple[str, str | None]]], int]:
    """problem id -> [(raw, cleaned text or None)] in source order, and the number of rows that matched no problem."""
    spec = SOURCES[source]
    index = text_index(spec["dataset"], spec["split"])
    out: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    unmatched = 0
    for question, raw, text in PARSERS[spec["format"]](spec["files"]):
        ids = index.get(norm_text(question), [])
        unmatched += not ids
        for pid in ids:
            out[pid].append((raw, text))
    return dict(out), unmatched

"""Answers: ``extract`` (the number a CoT commits to), ``same`` (the one comparator, for filters, votes and
scores) and ``score`` (a CoT's extracted answer, a PoT's program run in the sandbox).

``same(pred, gold)``: both finite numbers and ``math.isclose(pred, gold, rel_tol=1e-6, abs_tol=1e-3)``, which
forgives float noise (``0.1 + 0.2``) and ``0.333`` for 1/3 but not ``4.5`` for 4 or ``-5`` for 5; why, and
what the published codebases do instead: docs/design.md ("One answer comparator").
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
import re
import textwrap
from fractions import Fraction
from typing import Sequence

from mdlab import prompts

ABS_TOL = 1e-3
REL_TOL = 1e-6

_RUN_ON = re.compile(r"\n\s*Q\s*:", re.S)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|=|:|would be|will be)\s*:?\s*", re.I)
# a number: optional sign, digits with thousands commas, optional decimals, optional /denominator
_NUM = r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|(?<![\w.])-?\.\d+"
_NUMBER = re.compile(_NUM)
_SENTENCE_END = re.compile(r"\.(?!\d)|\n|;|(?<=\d),\s(?=\D)|\bso\b|\bbecause\b", re.I)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _clean_numbers(text: str) -> str:
    """Drop currency, percent and thousands commas; map unicode operators to ASCII."""
    text = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = text.replace("\u2212", "-").replace("\u00d7", "*").replace("\u00f7", "/").replace("\\times", "*")
    text = text.replace("\\div", "/").replace("$", "").replace("%", "").replace("\u20ac", "").replace("\u00a3", "")
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def safe_arith(expr: str) -> float | None:
    """Evaluate numbers with + - * / and parentheses; None for anything else."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None

    def ev(node) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not arithmetic")

    try:
        value = float(ev(tree))
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return value if math.isfinite(value) else None


def to_float(value) -> float | None:
    """A number from a float, int, numeric string, fraction string or arithmetic string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = _clean_numbers(value).strip().rstrip(".")
        if (result := safe_arith(text)) is not None:
            return result
        match = _NUMBER.search(text)
        return _number_token(match.group(0)) if match else None
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def _number_token(token: str) -> float | None:
    token = token.replace(",", "").replace(" ", "")
    if "/" in token:
        return safe_arith(token)
    try:
        return float(token)
    except ValueError:
        return None


def _leading_value(text: str) -> float | None:
    """The value at the start of an answer phrase: an expression, else its first number."""
    text = _clean_numbers(text)
    end = _SENTENCE_END.search(text)
    phrase = text[:end.start()] if end else text
    # "5 + 3 = 8": the value after the last '=' is the committed one
    if "=" in phrase and (match := _NUMBER.search(phrase.rsplit("=", 1)[1])):
        return _number_token(match.group(0))
    expr = re.match(r"[\s\d.+\-*/()]+", phrase)
    if expr and re.search(r"\d", expr.group(0)):
        candidate = expr.group(0).strip().rstrip("+-*/ ")
        # balance a parenthesis the phrase cut off: "(120 / 3" -> "(120 / 3)"
        candidate += ")" * max(0, candidate.count("(") - candidate.count(")"))
        if (value := safe_arith(candidate)) is not None:
            return value
    match = _NUMBER.search(phrase)
    return _number_token(match.group(0)) if match else None


def cut_run_on(text: str) -> str:
    """Text before a run-on next question ("\\n\\nQ: ..."), as few-shot completions need."""
    match = _RUN_ON.search(text)
    return text[:match.start()] if match else text


def extract(text: str | None) -> float | None:
    """The number a CoT commits to (None: none): after cutting a run-on "Q:", the last ``\\boxed{...}``, else
    the last ``#### ...``, else the last "answer is ..." phrase (a number, fraction or expression such as PaLM's
    ``(10 * 45)``, evaluated with ``ast``, never ``eval``), else the last number."""
    if not text or not isinstance(text, str):
        return None
    text = cut_run_on(text)
    for found, read in ((_BOXED.findall(text), to_float), (_HASHES.findall(text), _leading_value)):
        if found and (value := read(found[-1])) is not None:
            return value
    for phrase in reversed(list(_ANSWER_IS.finditer(text))):
        if (value := _leading_value(text[phrase.end():])) is not None:
            return value
    return _last_number(text)


_ASIDE = re.compile(r"\([^()]*\)\W*$|\s(?:since|because|as|if|when)\s.*$", re.I | re.S)


def _last_number(text: str) -> float | None:
    """The last number, ignoring a trailing aside: "3 games since 7 x 3 = 21" commits to 3."""
    text = _clean_numbers(text).rstrip()
    head = _ASIDE.sub("", re.split(r"(?<=[.!?])\s+|\n", text)[-1])
    for scope in (head, text):
        for token in reversed(_NUMBER.findall(scope)):
            if (value := _number_token(token)) is not None:
                return value
    return None


def same(pred, gold) -> bool:
    """True when two answers are the same number (see the module docstring for the rule)."""
    a, b = to_float(pred), to_float(gold)
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _parses(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def clean_program(text: str) -> str:
    """A PoT answer's program: its fenced block if any, no prose around it, dedented; "" if none parses."""
    text = (text or "").replace("\r\n", "\n")
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if blocks:
        text = next((b for b in blocks if re.search(r"\bans\b", b)), blocks[0])
    for stop in prompts.STOP["pot"]:  # a completion model's run-on into the next exemplar, once `ans` is set
        cut = text.find(stop)
        if cut > 0 and re.search(r"^\s*ans\s*=", text[:cut], re.M):
            text = text[:cut]
    program = "\n".join(line.rstrip() for line in textwrap.dedent(text).split("\n")).strip("\n")
    if not program or _parses(program):
        return program
    lines = program.split("\n")
    # prose around the code: try dropping up to 12 leading and 12 trailing lines, longest first
    best = None
    for start in range(min(12, len(lines))):
        for end in range(len(lines), max(start, len(lines) - 12), -1):
            chunk = textwrap.dedent("\n".join(lines[start:end])).strip("\n")
            if chunk.strip() and _parses(chunk) and (best is None or len(chunk) > len(best)):
                best = chunk
                break
    return best or ""


def has_code(program: str) -> bool:
    """True when a cleaned program does something: any statement but a bare name or constant."""
    tree = _parses(program) if program.strip() else None
    return tree is not None and any(
        not (isinstance(node, ast.Expr) and isinstance(node.value, (ast.Constant, ast.Name))) for node in tree.body)


@dataclasses.dataclass
class Scored:
    """What one rationale or sampled path answers, and how it got there."""

    answer: float | None  # None: no number to vote with or to compare
    status: str  # ok, no_answer, no_code, or the sandbox's status (error, timeout, memory, forbidden)
    output: str = ""  # a program's stdout (head)
    error: str | None = None  # why there is no answer, when it is known


def score(texts: Sequence[str | None], modes: Sequence[str], *, timeout: float = 5.0, memory_mb: int | None = None,
          workers: int | None = None, output_chars: int = 2000) -> list[Scored]:
    """The one scorer: a CoT's answer is ``extract(text)``; a PoT's is its cleaned program run in the sandbox.

    Every program of the call goes to ``sandbox.run_many`` at once, so the pool stays busy.
    """
    out: list[Scored | None] = []
    programs: dict[int, str] = {}
    for i, (text, mode) in enumerate(zip(texts, modes, strict=True)):
        if mode == "cot":
            value = extract(text)
            out.append(Scored(value, "ok" if value is not None else "no_answer"))
            continue
        program = clean_program(text or "")
        if has_code(program):
            programs[i] = program
            out.append(None)
        else:
            out.append(Scored(None, "no_code", error="nothing in the text parses as a Python program"))
    if programs:
        from mdlab import sandbox

        kwargs = {"timeout": timeout, "memory_mb": memory_mb, "workers": workers}
        results = sandbox.run_many(list(programs.values()), **{k: v for k, v in kwargs.items() if v is not None})
        for i, result in zip(programs, results):
            out[i] = Scored(result.answer if result.status == "ok" else None, result.status,
                            (result.stdout or "")[:output_chars], result.error)
    return out

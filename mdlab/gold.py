"""Gold rationales written from each dataset's own derivation: the "perfect teacher" baseline.

SVAMP ``Equation`` and ASDiv ``Formula`` become step sentences ("16 * 17 = 272.") ending in
"The answer is N.", and a program with one variable per quantity (named from the words after
that number in the question) ending in ``ans``. GSM8K's reference solution becomes the CoT with
its ``<<a*b=c>>`` calculator marks removed, and a program with one variable per mark. Problems
with no usable derivation (MAWPS, a few ASDiv formulas, a derivation that misses the gold
answer) get none. ``teachers.Annotations`` serves these as a teacher.
"""

from __future__ import annotations

import ast
import keyword
import math
import operator
import re
from typing import Sequence

from mdlab import answers
from mdlab.data import Problem

_GSM_CALC = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_STOPWORDS = {"a", "an", "the", "of", "in", "on", "at", "to", "for", "and", "or", "is", "are", "was", "were", "each",
              "per", "more", "less", "than", "with", "from", "by", "so", "that", "this", "it", "he", "she", "they",
              "his", "her", "their", "them", "has", "had", "have", "be", "as", "if", "then", "total", "will", "would"}
_RESERVED = {"ans", "print", "sum", "max", "min", "round", "len", "abs", "int", "float"}
_BINOPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
           ast.Div: ("/", operator.truediv)}


def fmt_number(value: float) -> str:
    """A number as a rationale writes it: 1088, 9.5, 0.333333 (at most six decimals)."""
    if value is None or not math.isfinite(value):
        return str(value)
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def rationale(problem: Problem, mode: str) -> str | None:
    """The gold CoT or PoT of a problem, or None when its derivation gives none."""
    if problem.dataset == "gsm8k" and problem.equation and mode == "cot":
        return _gsm8k_cot(problem.equation, problem.answer)  # the solution text needs no step parsing
    pair = rationales(problem)
    return None if pair is None else pair[0 if mode == "cot" else 1]


def rationales(problem: Problem) -> tuple[str, str] | None:
    """(CoT, PoT) of a problem, or None when its dataset has no usable derivation."""
    if not problem.equation:
        return None
    if problem.dataset == "gsm8k":
        return _gsm8k_rationales(problem.equation, problem.answer)
    expr = problem.equation
    if problem.dataset == "asdiv":  # 'x' and '÷' are ASDiv's operators; a formula is 'expression=value'
        expr = (expr.split("=")[0] if expr.count("=") == 1 else "").replace("x", "*").replace("÷", "/")
    out = _equation_rationales(expr, problem.question) if expr.strip() else None
    if out is None:
        return None
    if not math.isnan(problem.answer) and not answers.same(answers.extract(out[0]), problem.answer):
        return None  # the derivation does not reach the gold answer: not a gold rationale
    return out


def _identifier(words: Sequence[str], used: set[str], fallback: str) -> str:
    """A fresh variable name from up to three words ('clips in may' -> clips_in_may), else ``fallback``."""
    words = [w.lower() for w in words if re.fullmatch(r"[A-Za-z]+", w)]
    while words and words[-1] in _STOPWORDS:
        words.pop()
    while words and words[0] in _STOPWORDS - {"per"}:
        words.pop(0)
    name = "_".join(words[:3]) if words != ["per"] else ""
    name = name or fallback
    if keyword.iskeyword(name) or name in _RESERVED:
        name = f"num_{name}"
    candidate, i = name, 2
    while candidate in used:
        candidate, i = f"{name}_{i}", i + 1
    used.add(candidate)
    return candidate


def _words_after(text: str) -> list[str]:
    """The words that name a quantity written just before ``text``: '24 clips in May.' -> clips, in, May."""
    words = []
    for token in re.findall(r"[A-Za-z]+|\S", re.sub(r"^\s*%?", "", text[:60])):
        if not token.isalpha() or len(words) == 3:
            break
        words.append(token)
    return words


def _number_context(question: str, value: float, taken: set[int]) -> list[str]:
    """The words after the first not-yet-used occurrence of a number in a question."""
    for match in re.finditer(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)(?![\d])", question):
        if match.start() not in taken and abs(float(match.group(1).replace(",", "")) - value) < 1e-9:
            taken.add(match.start())
            return _words_after(question[match.end():])
    return []


def _equation_rationales(expr: str, question: str) -> tuple[str, str] | None:
    """(CoT, PoT) for an infix equation such as SVAMP's '( ( 16.0 * 17.0 ) * 4.0 )'."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return None
    steps: list[str] = []
    lines: list[str] = []
    used: set[str] = set()
    taken: set[int] = set()

    def visit(node) -> tuple[float, str, str] | None:  # (value, as the CoT writes it, name in the program)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            value = float(node.value)
            name = _identifier(_number_context(question, value, taken), used, f"num_{len(used) + 1}")
            lines.append(f"{name} = {fmt_number(value)}")
            return value, fmt_number(value), name
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = visit(node.operand)
            return None if inner is None else (-inner[0], f"-{inner[1]}", f"-{inner[2]}")
        if not (isinstance(node, ast.BinOp) and type(node.op) in _BINOPS):
            return None
        left, right = visit(node.left), visit(node.right)
        if left is None or right is None:
            return None
        symbol, fn = _BINOPS[type(node.op)]
        if symbol == "/" and right[0] == 0:
            return None
        value = fn(left[0], right[0])
        steps.append(f"{left[1]} {symbol} {right[1]} = {fmt_number(value)}.")
        name = _identifier([], used, f"step_{len(steps)}")
        lines.append(f"{name} = {left[2]} {symbol} {right[2]}")
        return value, fmt_number(value), name

    result = visit(tree)
    if result is None:
        return None
    if lines[-1].startswith(f"{result[2]} = "):
        lines[-1] = "ans = " + lines[-1].split(" = ", 1)[1]
    else:
        lines.append(f"ans = {result[2]}")
    return " ".join(steps + [f"The answer is {fmt_number(result[0])}."]), "\n".join(lines)


def _gsm8k_cot(solution: str, gold: float) -> str:
    """A GSM8K reference solution as a CoT: marks removed, '#### N' -> 'The answer is N.'."""
    steps = re.sub(r"[ \t]+", " ", _GSM_CALC.sub("", solution.rpartition("####")[0])).strip()
    return f"{steps}\nThe answer is {fmt_number(gold)}."


def _gsm8k_rationales(solution: str, gold: float) -> tuple[str, str] | None:
    """(CoT, PoT) from a GSM8K reference solution with <<expr=result>> calculator marks."""
    body = solution.rpartition("####")[0]
    lines: list[str] = []
    known: list[tuple[float, str]] = []  # (value, variable) of earlier steps: later steps name them

    def named(expr: str) -> str:
        def name(m: re.Match) -> str:
            return next((var for v, var in reversed(known) if abs(v - float(m.group(0))) < 1e-9), m.group(0))
        return _NUMBER.sub(name, expr).strip()

    used: set[str] = set()
    for i, match in enumerate(_GSM_CALC.finditer(body), 1):
        expr = match.group(1).replace(",", "").replace("x", "*").replace("X", "*").replace("÷", "/")
        expr = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", expr)
        value = answers.safe_arith(expr)
        if value is None:
            return None
        after = _words_after(re.sub(r"^\s*\$?\s*-?[\d,]*\.?\d+", "", body[match.end():]))
        var = _identifier(after, used, f"step_{i}")
        lines.append(f"{var} = {named(expr)}")
        known.append((value, var))
    target = next((var for v, var in reversed(known) if answers.same(v, gold)), None)
    if target is not None:
        return _gsm8k_cot(solution, gold), "\n".join(lines + [f"ans = {target}"])
    # the last step is often written without a mark: '20/4 = $5'
    plain = _GSM_CALC.sub("", body).replace("\u00d7", "*").replace("\u2212", "-").replace("$", "")
    steps = re.findall(r"((?:-?\d[\d,]*(?:\.\d+)?\s*[-+*/x]\s*)+\d[\d,]*(?:\.\d+)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)", plain)
    if not steps:
        return None
    expr = steps[-1][0].replace(",", "").replace("x", "*")
    value = answers.safe_arith(expr)
    if value is None or not answers.same(value, gold) or not answers.same(value, answers.to_float(steps[-1][1])):
        return None
    return _gsm8k_cot(solution, gold), "\n".join(lines + [f"ans = {named(expr)}"])

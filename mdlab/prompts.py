"""Teacher few-shot prompts and the student's input formats.

The student formats live here, not in ``train`` or ``evaluate``, because training and
sampling must build exactly the same input: a plain-text task prefix per mode, so any base
model (with or without a chat template) can be a student. A student example is
``student_prompt(question, mode)`` followed by the rationale and the end-of-text token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Literal

Mode = Literal["cot", "pot"]
MODES: tuple[Mode, ...] = ("cot", "pot")

# One instruction per mode: MD trains one student on both, and the prefix is what tells it
# which kind of rationale to write.
STUDENT_INSTRUCTION: dict[str, str] = {
    "cot": "Solve the problem step by step in words, then finish with 'The answer is N.'",
    "pot": "Write a Python program that solves the problem and stores the final number in `ans`.",
}


def student_prompt(question: str, mode: Mode) -> str:
    """The student's input for one question and mode (shared by train and evaluate)."""
    _check_mode(mode)
    return f"[{mode.upper()}] {STUDENT_INSTRUCTION[mode]}\nQuestion: {question.strip()}\nAnswer:\n"


# ------------------------------------------------------------------------------ teacher prompts
#
# The eight questions are the hand-written exemplars of Wei et al. (2022, "Chain-of-Thought Prompting",
# Table 20), the prompt PaLM answered in the recorded SVAMP rationales; none is a SVAMP, GSM8K or MAWPS
# test problem (tests/test_prompts.py checks every test-side split by id and by text). The PoT versions
# follow Program of Thoughts (Chen et al., 2023): passage and question as comment lines, descriptive
# variable names, the result in ``ans``. Each mode has a chat form (system + user/assistant turns) and a
# completion form (one text the model continues; cut at ``STOP[mode]``).


@dataclasses.dataclass(frozen=True)
class Exemplar:
    passage: str  # the context sentences ("" when the question is one sentence)
    question: str  # the sentence that asks
    cot: str  # worked answer in words, ending "The answer is N."
    pot: str  # PoT program; the result is in ``ans``
    answer: float  # the value both rationales reach

    @property
    def text(self) -> str:
        return f"{self.passage} {self.question}".strip()


EXEMPLARS: tuple[Exemplar, ...] = (
    Exemplar(
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees.", "How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
        "been 21 - 15 = 6. The answer is 6.",
        "trees_before_planting = 15\ntrees_after_planting = 21\nans = trees_after_planting - trees_before_planting",
        6),
    Exemplar(
        "", "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
        "cars_in_lot = 3\ncars_arriving = 2\nans = cars_in_lot + cars_arriving",
        5),
    Exemplar(
        "Leah had 32 chocolates and her sister had 42.", "If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
        "they had 74 - 35 = 39. The answer is 39.",
        "leah_chocolates = 32\nsister_chocolates = 42\nchocolates_eaten = 35\n"
        "total_chocolates = leah_chocolates + sister_chocolates\nans = total_chocolates - chocolates_eaten",
        39),
    Exemplar(
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops.",
        "How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
        "The answer is 8.",
        "lollipops_at_start = 20\nlollipops_left = 12\nans = lollipops_at_start - lollipops_left",
        8),
    Exemplar(
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad.",
        "How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
        "The answer is 9.",
        "toys_at_start = 5\ntoys_per_parent = 2\nnum_parents = 2\n"
        "ans = toys_at_start + toys_per_parent * num_parents",
        9),
    Exemplar(
        "There were nine computers in the server room. Five more computers were installed each day, from monday to "
        "thursday.", "How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
        "were added. 9 + 20 is 29. The answer is 29.",
        "computers_at_start = 9\ncomputers_per_day = 5\nnum_days = 4  # monday to thursday\n"
        "computers_added = computers_per_day * num_days\nans = computers_at_start + computers_added",
        29),
    Exemplar(
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more.",
        "How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
        "he had 35 - 2 = 33 golf balls. The answer is 33.",
        "golf_balls_at_start = 58\nlost_on_tuesday = 23\nlost_on_wednesday = 2\n"
        "ans = golf_balls_at_start - lost_on_tuesday - lost_on_wednesday",
        33),
    Exemplar(
        "Olivia has $23. She bought five bagels for $3 each.", "How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
        "left. 23 - 15 is 8. The answer is 8.",
        "money_at_start = 23\nnum_bagels = 5\nprice_per_bagel = 3\n"
        "money_spent = num_bagels * price_per_bagel\nans = money_at_start - money_spent",
        8),
)

TEACHER_SYSTEM: dict[str, str] = {
    "cot": "You solve math word problems. Reason step by step in plain words, then finish with one sentence "
           "'The answer is N.' where N is a single number.",
    "pot": "You solve math word problems by writing Python code. Read the passage and the question, define one "
           "variable per quantity with a descriptive name, compute the result and store it in a variable named "
           "`ans`. Reply with the code only: no explanation, no markdown.",
}
COMPLETION_HEADER: dict[str, str] = {
    "cot": "",  # Wei et al.'s prompt has no instruction, only Q/A pairs
    "pot": "Read the following passages to answer questions with Python code, store the result as a 'ans' "
           "variable:\n\n",
}
# Where a completion model runs on into the next exemplar: cut there (and ask the server to stop).
STOP: dict[str, list[str]] = {
    "cot": ["\n\nQ:", "\nQ:"],
    "pot": ["\n\n# Passage:", "\n\n# Question:", "\n# Passage:"],
}

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_question(text: str) -> tuple[str, str]:
    """(passage, question) of a problem text: the question is its last sentence ("" passage if one)."""
    text = " ".join(text.split())
    parts = _SENTENCE.split(text)
    if len(parts) < 2:
        return "", text
    asking = [i for i, part in enumerate(parts) if part.endswith("?")]
    start = asking[-1] if asking else len(parts) - 1
    # a question that spans sentences ("... left? Give the answer in cents.") keeps its tail
    return " ".join(parts[:start]), " ".join(parts[start:])


def _pot_header(passage: str, question: str) -> str:
    return (f"# Passage: {passage}\n" if passage else "") + f"# Question: {question}\n"


def _user_turn(text: str, mode: Mode) -> str:
    return f"Q: {text}" if mode == "cot" else _pot_header(*split_question(text))


def teacher_messages(question: str, mode: Mode, *, shots: int | None = None) -> list[dict]:
    """The chat form of the few-shot prompt: system, then user/assistant exemplar turns, then the question."""
    _check_mode(mode)
    messages = [{"role": "system", "content": TEACHER_SYSTEM[mode]}]
    for ex in EXEMPLARS[:shots]:
        messages.append({"role": "user", "content": f"Q: {ex.text}" if mode == "cot"
                         else _pot_header(ex.passage, ex.question)})
        messages.append({"role": "assistant", "content": getattr(ex, mode)})
    messages.append({"role": "user", "content": _user_turn(question, mode)})
    return messages


def teacher_completion(question: str, mode: Mode, *, shots: int | None = None) -> str:
    """The completion form: exemplars as one text that ends where the model writes its answer."""
    _check_mode(mode)
    parts = [COMPLETION_HEADER[mode]]
    parts += [f"Q: {ex.text}\nA: {ex.cot}\n\n" if mode == "cot"
              else f"{_pot_header(ex.passage, ex.question)}{ex.pot}\n\n" for ex in EXEMPLARS[:shots]]
    parts.append(f"Q: {' '.join(question.split())}\nA:" if mode == "cot" else _user_turn(question, mode))
    return "".join(parts)


def prompt_hash(prompt: str | list | dict) -> str:
    """sha256 of a prompt (text, or chat messages as canonical JSON): part of every cache key."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

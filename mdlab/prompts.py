"""Teacher few-shot prompts and the student's input formats.

The student formats live here, not in ``train`` or ``evaluate``, because training and
sampling must build exactly the same input: a plain-text task prefix per mode, so any base
model (with or without a chat template) can be a student. A student example is
``student_prompt(question, mode)`` followed by the rationale and the end-of-text token.
"""

from __future__ import annotations

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
    if mode not in STUDENT_INSTRUCTION:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return f"[{mode.upper()}] {STUDENT_INSTRUCTION[mode]}\nQuestion: {question.strip()}\nAnswer:\n"

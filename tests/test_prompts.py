"""Teacher prompts: well-formed exemplars that are never test problems, chat and completion forms."""

from __future__ import annotations

import difflib
import re
import warnings

import pytest

from mdlab import answers, data, prompts, sandbox


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _template(text: str) -> str:
    return re.sub(r"\d+(?:\.\d+)?", "N", _norm(text))


@pytest.fixture(scope="module")
def test_side() -> list[data.Problem]:
    """Every test-side problem: the ids data.test_ids() names (SVAMP test + test300, GSM8K test) and MAWPS."""
    ids = data.test_ids()
    problems = [p for p in data.load("svamp", "all") if p.id in ids["svamp"]]
    problems += [p for p in data.load("gsm8k", "test") if p.id in ids["gsm8k"]]
    for name, dataset in data.REGISTRY.items():
        if name.startswith("mawps-"):
            problems += data.load(name, "test")
    assert len(problems) == 300 + 1319 + 395 + 600 + 508 + 562
    return problems


def test_exemplars_are_not_test_problems(test_side):
    test_ids = set().union(*data.test_ids().values())
    texts = {_norm(p.question): p.id for p in test_side}
    templates = {_template(p.question): p.id for p in test_side}
    for ex in prompts.EXEMPLARS:
        assert _norm(ex.text) not in texts, f"exemplar is test problem {texts[_norm(ex.text)]}"
        assert _template(ex.text) not in templates, f"exemplar is test problem {templates[_template(ex.text)]} " \
                                                     "with other numbers"
        assert not any(pid in ex.text for pid in test_ids)
        for p in test_side:  # no near-copy either (the closest is 0.68: a different problem)
            if abs(len(p.question) - len(ex.text)) < 0.3 * len(ex.text):
                matcher = difflib.SequenceMatcher(None, _norm(ex.text), _norm(p.question))
                assert matcher.quick_ratio() < 0.8 or matcher.ratio() < 0.8, (ex.text, p.id, p.question)


def test_cot_exemplars_end_with_their_answer():
    for ex in prompts.EXEMPLARS:
        assert re.search(r"The answer is -?[\d.]+\.$", ex.cot), ex.cot
        assert answers.same(answers.extract(ex.cot), ex.answer)


def test_pot_exemplars_run_to_their_answer_with_descriptive_names():
    results = sandbox.run_many([ex.pot for ex in prompts.EXEMPLARS])
    for ex, result in zip(prompts.EXEMPLARS, results):
        assert result.status == "ok" and answers.same(result.answer, ex.answer), (ex.pot, result)
        assert ex.pot.splitlines()[-1].startswith("ans = ")
        names = re.findall(r"^(\w+) =", ex.pot, re.M)
        assert all(len(name) >= 6 or name == "ans" for name in names), names


@pytest.mark.parametrize("mode", prompts.MODES)
def test_chat_form(mode):
    question = "Tom has 3 apples. He buys 4 more. How many apples does he have now?"
    messages = prompts.teacher_messages(question, mode)
    assert messages[0]["role"] == "system" and "ans" in prompts.TEACHER_SYSTEM["pot"]
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * len(prompts.EXEMPLARS) + ["user"]
    last = messages[-1]["content"]
    if mode == "cot":
        assert last == f"Q: {question}"
        assert all(m["content"].endswith(".") for m in messages[2::2])
    else:
        assert last == "# Passage: Tom has 3 apples. He buys 4 more.\n# Question: How many apples does he have now?\n"
        assert all("ans = " in m["content"] for m in messages[2::2])
    assert len(prompts.teacher_messages(question, mode, shots=2)) == 1 + 2 * 2 + 1


@pytest.mark.parametrize("mode", prompts.MODES)
def test_completion_form(mode):
    question = "Tom has 3 apples. He buys 4 more. How many apples does he have now?"
    text = prompts.teacher_completion(question, mode)
    if mode == "cot":
        assert text.endswith(f"\n\nQ: {question}\nA:") and text.count("The answer is") == len(prompts.EXEMPLARS)
    else:
        assert text.startswith(prompts.COMPLETION_HEADER["pot"])
        assert text.endswith("# Question: How many apples does he have now?\n")
        assert text.count("\nans = ") == len(prompts.EXEMPLARS)
    # what a completion model writes next would be cut at the next exemplar
    assert prompts.STOP[mode][0] in text  # the marker sits between exemplars, where a run-on starts


def test_split_question():
    assert prompts.split_question("Tom has 3 apples. He buys 4 more. How many now?") == (
        "Tom has 3 apples. He buys 4 more.", "How many now?")
    assert prompts.split_question("If there are 3 cars and 2 more arrive, how many cars?") == (
        "", "If there are 3 cars and 2 more arrive, how many cars?")
    # SVAMP bodies sometimes lack the final '.': the question sentence then carries the clause
    assert prompts.split_question("Each pack costs 76 dollars. If there is a discount of 25 dollars How much?")[0] \
        == "Each pack costs 76 dollars."
    assert prompts.split_question("She had 5 pens. How many are left? Answer in pens.")[1] == \
        "How many are left? Answer in pens."


def test_prompt_hash_is_stable_and_distinguishes():
    q = "Tom has 3 apples. How many?"
    h = prompts.prompt_hash(prompts.teacher_messages(q, "cot"))
    assert h == prompts.prompt_hash(prompts.teacher_messages(q, "cot")) and len(h) == 64
    assert h != prompts.prompt_hash(prompts.teacher_messages(q, "pot"))
    assert h != prompts.prompt_hash(prompts.teacher_completion(q, "cot"))


def test_student_prompt_is_unchanged():
    assert prompts.student_prompt(" Tom has 3 apples. ", "cot") == (
        "[COT] Solve the problem step by step in words, then finish with 'The answer is N.'\n"
        "Question: Tom has 3 apples.\nAnswer:\n")
    with pytest.raises(ValueError):
        prompts.teacher_messages("q", "words")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompts.teacher_completion("q", "pot")

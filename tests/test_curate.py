"""Automatic filters, curation state, the curator widget and notebook 02, on real teacher outputs.

Inputs are real PaLM CoTs and Codex programs for the first SVAMP train problems (through
``teachers.Recorded``), plus
hand-written rationales that trigger each check; PoT programs run in the real sandbox.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mdlab import answers, curate, data, plots, runs, teachers
from mdlab.teachers import Rationale

ROOT = Path(__file__).resolve().parent.parent
N_PROBLEMS = 8  # the smoke profile's train_limit


def make(pid: str, mode: str, text: str, sample: int = 1, **kw) -> Rationale:
    return Rationale(id=kw.pop("id", f"{mode}-{pid}-{sample}"), problem_id=pid, mode=mode, text=text,
                     teacher=kw.pop("teacher", "handmade"), sample=sample, answer=kw.pop("answer", None),
                     status="ok", dataset="svamp", **kw)


@pytest.fixture(scope="module")
def problems() -> list[data.Problem]:
    return data.load("svamp", "train", limit=N_PROBLEMS)


@pytest.fixture(scope="module")
def rationales(problems, tmp_path_factory) -> list[Rationale]:
    """The cpu profile's teachers: PaLM CoT and Codex PoT, as teachers.generate writes them."""
    run = tmp_path_factory.mktemp("teacher")
    rats = []
    for source, mode in (("svamp-palm-cot", "cot"), ("svamp-codex-pot", "pot")):
        rats += teachers.generate(teachers.Recorded(source), problems, mode, run_dir=run, progress=False)
    assert len(rats) == 2 * N_PROBLEMS
    return rats


@pytest.fixture(scope="module")
def crafted(problems, rationales):
    """Hand-written rationales, one per check, keyed by the reason they must get."""
    p0, p1, p2 = problems[0], problems[1], problems[2]
    test_problem = data.load("svamp", "test", limit=1)[0]
    cot0 = next(r for r in rationales if r.mode == "cot" and r.problem_id == p0.id)
    gold1 = p1.answer
    return {
        # the same text after normalising case and whitespace
        "duplicate": make(p0.id, "cot", "  " + cot0.text.upper().replace(" ", "   ") + "\n"),
        "error": make(p1.id, "pot", "x = 1\nans = x / 0"),
        "timeout": make(p1.id, "pot", "while True:\n    pass", sample=2),
        "no_answer": make(p1.id, "pot", "x = 3", sample=3),
        "no_code": make(p1.id, "pot", "The program would multiply them.", sample=6),  # prose, nothing to run
        "truncated_pot": make(p1.id, "pot", f"a = {gold1:g}\nans = (a +", sample=4),
        "truncated_cot": make(p2.id, "cot", f"We add them up. The answer is {p2.answer:g}.", sample=1,
                              finish_reason="length"),
        "no_phrase": make(p2.id, "cot", f"So there are {p2.answer:g} left", sample=2),
        "too_long": make(p2.id, "cot", "Counting. " * 300 + f"The answer is {p2.answer:g}.", sample=3),
        "leakage": make(test_problem.id, "cot", f"The answer is {test_problem.answer:g}."),
        "unknown_problem": make("no-such-problem", "cot", "The answer is 1."),
        # a stored answer the filter must not trust: it re-executes the program
        "stored_answer": make(p2.id, "pot", f"ans = {p2.answer:g}", sample=5, answer=-12345.0),
    }, test_problem


@pytest.fixture(scope="module")
def table(problems, rationales, crafted):
    extra, test_problem = crafted
    config = curate.CurateConfig(timeout=1.0)
    return curate.auto_filter(rationales + list(extra.values()), problems + [test_problem], config)


def row(table, rid):
    match = table[table["id"] == rid]
    assert len(match) == 1, rid
    return match.iloc[0]


# ------------------------------------------------------------------------------- auto_filter

def test_real_rationales_are_checked_against_gold(table, rationales, problems):
    gold = {p.id: p.answer for p in problems}
    for r in rationales:
        got = row(table, r.id)
        right = answers.same(got["answer"], gold[r.problem_id])
        assert got["correct"] == right
        assert ("wrong_answer" in curate.reason_list(got["reasons"])) == (not right)
        if r.mode == "pot":  # re-executed in the sandbox: the same value Codex's run recorded
            assert got["status"] == "ok" and answers.same(got["answer"], r.answer)
    assert row(table, rationales[0].id)["keep"] == (row(table, rationales[0].id)["reasons"] == "")
    assert table[table["id"].isin([r.id for r in rationales])]["keep"].sum() >= N_PROBLEMS  # most are right


def test_every_check_gives_its_reason(table, crafted):
    extra, _ = crafted
    expected = {"duplicate": "duplicate", "error": "error", "timeout": "timeout", "no_answer": "no_answer",
                "no_code": "no_code",
                "truncated_pot": "truncated", "truncated_cot": "truncated", "no_phrase": "truncated",
                "too_long": "too_long", "leakage": "leakage", "unknown_problem": "unknown_problem"}
    for key, reason in expected.items():
        got = row(table, extra[key].id)
        assert reason in curate.reason_list(got["reasons"]), (key, got["reasons"])
        assert not got["keep"]
    assert row(table, extra["error"].id)["error"].startswith("ZeroDivisionError")
    assert row(table, extra["timeout"].id)["status"] == "timeout"
    stored = row(table, extra["stored_answer"].id)
    assert stored["keep"] and stored["reasons"] == "" and stored["answer"] != -12345.0
    # the too-long CoT is right and complete: length is its only problem
    assert curate.reason_list(row(table, extra["too_long"].id)["reasons"]) == ["too_long"]


def test_checks_switch_off(problems, rationales, crafted):
    extra, test_problem = crafted
    off = curate.CurateConfig(**{f.name: False for f in dataclasses.fields(curate.CurateConfig)
                                 if f.name.startswith("check_")}, timeout=1.0)
    result = curate.auto_filter(rationales + list(extra.values()), problems + [test_problem], off)
    flagged = set(result["reasons"].map(curate.reason_list).sum())
    assert flagged == {"unknown_problem"}  # the one check that cannot be switched off
    assert result["keep"].sum() == len(result) - 1
    assert result["answer"].notna().sum() >= len(rationales)  # answers are still computed


def test_agreement_check_compares_with_every_other_mode_answer(problems):
    p = problems[0]
    gold = p.answer
    rats = [make(p.id, "cot", f"The answer is {gold:g}.", sample=0),
            make(p.id, "cot", f"The answer is {gold + 1:g}.", sample=1),
            make(p.id, "pot", f"ans = {gold:g}", sample=0),
            make(p.id, "pot", f"ans = {gold + 2:g}", sample=1),
            # no PoT to compare with
            make(problems[1].id, "cot", f"The answer is {problems[1].answer:g}.", sample=0)]
    config = curate.CurateConfig(check_agreement=True, check_answer=False, check_truncated=False)
    result = curate.auto_filter(rats, problems, config)
    disagree = {r.id: "cot_pot_disagree" in curate.reason_list(row(result, r.id)["reasons"]) for r in rats}
    assert [disagree[r.id] for r in rats] == [False, True, False, True, False]


def test_duplicate_compares_only_with_earlier_kept(problems):
    p = problems[0]
    base = ("Luke has some points and he plays rounds so he divides the points by the rounds. "
            "The answer is {}.")
    rats = [make(p.id, "cot", base.format(p.answer + 1), sample=0),  # wrong
            make(p.id, "cot", base.format(p.answer), sample=1),  # right, a near-copy of a dropped one
            make(p.id, "cot", base.format(p.answer) + " ", sample=2)]  # exact copy of a kept one
    result = curate.auto_filter(rats, problems, curate.CurateConfig())
    assert curate.reason_list(row(result, rats[0].id)["reasons"]) == ["wrong_answer"]
    assert row(result, rats[1].id)["keep"]
    assert curate.reason_list(row(result, rats[2].id)["reasons"]) == ["duplicate"]
    near = make(p.id, "cot", base.format(p.answer) + " Done.", sample=3)
    exact = curate.CurateConfig(duplicate_similarity=1.0)
    exact_only = curate.auto_filter(rats[1:] + [near], problems, exact)
    assert list(exact_only["keep"]) == [True, False, True]


def test_leakage_against_given_test_problems_and_by_text(problems):
    p = problems[0]
    twin = dataclasses.replace(p, id="some-other-id", split="test")  # same text, another id
    rats = [make(p.id, "cot", f"The answer is {p.answer:g}.")]
    assert not curate.auto_filter(rats, problems, test_problems=[])["reasons"].iloc[0]
    flagged = curate.auto_filter(rats, problems, test_problems=[twin])
    assert curate.reason_list(flagged["reasons"].iloc[0]) == ["leakage"]


def test_config_validation():
    with pytest.raises(ValueError, match="duplicate_similarity"):
        curate.CurateConfig(duplicate_similarity=0)
    with pytest.raises(ValueError, match="max_chars_cot"):
        curate.CurateConfig(max_chars_cot=0)


# -------------------------------------------------------------------------- run directory

@pytest.fixture()
def run(tmp_path, problems, rationales, crafted) -> Path:
    """A run directory with rationales.jsonl and auto_filter.csv."""
    extra, _ = crafted
    rats = rationales + [extra[k] for k in ("duplicate", "error", "no_answer", "too_long")]
    runs.JsonlStore(tmp_path / curate.RATIONALES).extend(rats)
    curate.run_auto_filter(tmp_path, problems, curate.CurateConfig(timeout=1.0))
    return tmp_path


def test_run_auto_filter_writes_csv_and_manifest(run):
    table = curate.read_table(run)
    assert len(table) == 2 * N_PROBLEMS + 4
    assert table["keep"].dtype == bool and table["reasons"].map(type).eq(str).all()
    manifest = runs.read_manifest(run)["stages"]["curate"]
    assert manifest["rationales"] == len(table) and manifest["config"]["check_answer"] is True
    assert manifest["passed_checks"]["pot"] == int(table[(table["mode"] == "pot") & table["keep"]].shape[0])


def test_missing_inputs_name_the_notebook(tmp_path, problems):
    with pytest.raises(FileNotFoundError, match="01_generate_rationales"):
        curate.run_auto_filter(tmp_path, problems)
    runs.JsonlStore(tmp_path / curate.RATIONALES).extend([])
    (tmp_path / curate.RATIONALES).write_text("")
    with pytest.raises(FileNotFoundError, match="02_curate_rationales"):
        curate.CurationState(tmp_path)


# --------------------------------------------------------------------------------- state

def test_state_actions_and_navigation(run):
    state = curate.CurationState(run)
    queue = list(state.queue)
    assert len(queue) == len(state.rows) and state.position == 0
    first = state.current
    assert first.mode == "cot" and state.queue[1] in [o["id"] for o in first.others]  # CoT, then its PoT
    record = state.drop("bad arithmetic")
    assert record["action"] == "drop" and record["reason"] == "bad arithmetic"
    assert state.verdict(first.id) == "drop" and state.position == 1
    assert state.previous() and state.current_id == first.id
    assert not state.previous()  # at the start
    state.keep("fine after all")  # overrides the drop: the latest decision wins
    assert state.verdict(first.id) == "keep" and state.current_id == queue[1]
    assert state.next() and state.current_id == queue[2]
    state.goto(queue[-1])
    assert not state.next()
    state.drop(advance=False)
    assert state.current_id == queue[-1]
    lines = runs.JsonlStore(run / curate.DECISIONS).read()
    assert [r["action"] for r in lines] == ["drop", "keep", "drop"]
    assert state.progress() == {"reviewed": 2, "queue": len(queue), "reviewed_all": 2, "all": len(queue)}
    summary = state.summary()
    assert summary.loc["cot", "kept by hand"] == 1 and summary["reviewed"].sum() == 2


def test_edit_pot_is_re_executed_and_cot_re_extracted(run, problems):
    state = curate.CurationState(run)
    pot = next(rid for rid in state.queue if state.rows[rid]["mode"] == "pot")
    gold = state.rows[pot]["gold"]
    state.goto(pot)
    record = state.edit(f"a = {gold:g}\nb = 2\nprint(a * b)\nans = a * b / b", "simplified")
    assert record["status"] == "ok" and answers.same(record["answer"], gold)
    assert state.current_id == pot and state.current.correct
    assert state.current.output.strip() == f"{2 * gold:g}"
    record = state.edit("ans = undefined_name")
    assert record["status"] == "error" and "NameError" in record["error"] and not state.current.correct
    cot = state.queue[0]
    state.goto(cot)
    state.edit(f"Two and two. The answer is {state.rows[cot]['gold'] + 1:g}.")
    assert not state.current.correct and answers.same(state.current.answer, state.rows[cot]["gold"] + 1)
    assert state.current.text.startswith("Two and two") and state.verdict(cot) == "keep"
    with pytest.raises(ValueError):
        state.edit("   ")


def test_filters(run):
    state = curate.CurationState(run)
    assert state.set_filters(mode="pot") == N_PROBLEMS + 2
    assert all(state.rows[rid]["mode"] == "pot" for rid in state.queue)
    n_error = state.set_filters(reason="error")
    assert n_error == 1 and state.current.reasons == ["error"]
    state.set_filters(mode=None, reason="none")
    assert all(state.rows[rid]["reasons"] == "" for rid in state.queue)
    state.set_filters(reason=None, verdict="drop")
    dropped = list(state.queue)
    assert dropped and all(not state.rows[rid]["keep"] for rid in dropped)
    state.keep()  # the queue is a snapshot: deciding does not move items under the reviewer
    assert state.queue == dropped
    state.set_filters(verdict="reviewed")
    assert state.queue == [dropped[0]]
    assert state.set_filters(verdict="unreviewed") == len(state.rows) - 1
    state.set_filters(verdict=None, teacher="handmade", dataset="svamp")
    assert len(state.queue) == 4
    with pytest.raises(ValueError, match="matches nothing"):
        state.set_filters(mode="prose")
    with pytest.raises(ValueError, match="unknown filter"):
        state.set_filters(colour="red")


def test_reopen_restores_decisions_position_and_filters(run):
    state = curate.CurationState(run)
    state.set_filters(mode="pot")
    state.drop("one")
    state.keep("two")
    state.next()
    where = state.current_id
    decided = dict(state.decisions)
    del state  # a kernel restart: nothing but the files survive
    again = curate.CurationState(run)
    assert again.current_id == where and again.filters["mode"] == "pot"
    assert {k: v["action"] for k, v in again.decisions.items()} == {k: v["action"]
                                                                     for k, v in decided.items()}


def test_torn_last_line_is_dropped_and_repaired(run):
    state = curate.CurationState(run)
    state.drop("kept record")
    with open(run / curate.DECISIONS, "a") as fh:
        fh.write('{"id": "palm-chal-1", "action": "dro')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="torn"):
        again = curate.CurationState(run)
    assert [d["reason"] for d in again.decisions.values()] == ["kept record"]
    again.keep("after the crash")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torn line was cut off before the append: no warning now
        records = runs.JsonlStore(run / curate.DECISIONS).read()
    assert [r["reason"] for r in records] == ["kept record", "after the crash"]


CHILD = """
import sys
from mdlab import curate
state = curate.CurationState(sys.argv[1])
i = 0
while True:
    (state.drop if i % 3 == 0 else state.keep)(f"click {i} " + "x" * 2000)
    if state.position == len(state.queue) - 1:
        state.goto(state.queue[0])
    print(i, flush=True)
    i += 1
"""


def test_restart_after_kill_loses_nothing(run):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    confirmed = -1
    try:  # counts, not time: 60 confirmed clicks (pytest's --timeout guards a child that hangs)
        while confirmed < 60:
            line = proc.stdout.readline()
            if not line:  # the child died
                break
            confirmed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-loop, maybe mid-write
        proc.wait()
    assert confirmed >= 60, f"the child confirmed only {confirmed + 1} decisions"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last line is allowed (and dropped)
        records = runs.JsonlStore(run / curate.DECISIONS).read()
        state = curate.CurationState(run)
    numbers = [int(r["reason"].split()[1]) for r in records]
    assert numbers == list(range(len(numbers)))  # complete, in order, none torn in the middle
    assert len(numbers) >= confirmed + 1  # every confirmed click is on disk
    latest = {}
    for r in records:
        latest[r["id"]] = r["action"]
    assert {k: v["action"] for k, v in state.decisions.items()} == latest
    assert state.current_id in state.queue
    state.keep("after restart")  # the store is writable again
    assert runs.JsonlStore(run / curate.DECISIONS).read()[-1]["reason"] == "after restart"


# --------------------------------------------------------------------------- curated set

def test_curated_applies_human_over_automatic(run):
    table = curate.read_table(run)
    auto_keep = set(table[table["keep"]]["id"])
    state = curate.CurationState(run)
    dropped_good = next(rid for rid in state.queue if rid in auto_keep)
    state.goto(dropped_good)
    state.drop("style")
    rescued = next(rid for rid in state.queue if state.rows[rid]["reasons"] == "too_long")
    state.goto(rescued)
    state.keep("long but right")
    edited = next(rid for rid in state.queue if state.rows[rid]["reasons"] == "error")
    state.goto(edited)
    state.edit(f"ans = {state.rows[edited]['gold']:g}")
    out = curate.curated(run)
    ids = [r.id for r in out]
    assert set(ids) == (auto_keep - {dropped_good}) | {rescued, edited}
    fixed = next(r for r in out if r.id == edited)
    assert fixed.text.startswith("ans =") and fixed.status == "ok" and fixed.params["edited"] is True
    assert answers.same(fixed.answer, state.rows[edited]["gold"])
    on_disk = runs.JsonlStore(run / curate.CURATED).read()
    assert [r["id"] for r in on_disk] == ids
    frame = curate.funnel(table, curate.read_decisions(run))
    assert frame.loc["generated", "all"] == len(table)
    assert frame.loc["passed checks", "all"] == len(auto_keep)
    assert frame.loc["kept after review", "all"] == len(out)
    png = plots.curation_funnel(frame, run / "figures" / "funnel.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curated_refuses_a_stale_filter_table(run, problems):
    runs.JsonlStore(run / curate.RATIONALES).append(make(problems[3].id, "cot", "The answer is 3.", sample=9))
    with pytest.raises(ValueError, match="out of date"):
        curate.curated(run)


def test_reasons_table(table):
    reasons = curate.reasons_table(table)
    assert reasons.loc["timeout", "pot flagged"] == 1
    assert reasons.loc["wrong_answer", "cot flagged"] + reasons.loc["wrong_answer", "cot pass"] == (
        table["mode"] == "cot").sum()


@pytest.fixture()
def triage(tmp_path, problems) -> tuple[Path, list[str]]:
    """A run directory with one case per place in the queue, and the labels in the order expected."""
    a, b, c, d = problems[3:7]
    rats = [make(a.id, "cot", f"Add them. The answer is {a.answer:g}."),
            make(a.id, "pot", f"ans = {a.answer:g}"),
            make(a.id, "pot", f"x = {a.answer:g}\nans = x", sample=2),  # the same teacher twice: #1, #2
            make(b.id, "cot", f"Add them. The answer is {b.answer:g}."),
            make(b.id, "pot", f"ans = {b.answer + 1:g}"),  # wrong: the CoT and PoT answers disagree
            make(c.id, "cot", f"So there are {c.answer:g} left"),  # right, dropped as truncated (no phrase)
            make(c.id, "pot", f"ans = {c.answer:g}"),
            make(d.id, "cot", f"Add them. The answer is {d.answer:g}."),
            make(d.id, "pot", "ans = 1 / 0")]  # fails: no answer, so nothing to disagree with
    runs.JsonlStore(tmp_path / curate.RATIONALES).extend(rats)
    curate.run_auto_filter(tmp_path, problems, curate.CurateConfig(timeout=1.0))
    expected = [f"{b.id} · CoT · handmade", f"{b.id} · PoT · handmade",  # a disagreement
                f"{c.id} · CoT · handmade",  # a drop whose reason may be wrong
                f"{d.id} · PoT · handmade",  # another automatic drop
                f"{a.id} · CoT · handmade", f"{a.id} · PoT · handmade #1", f"{a.id} · PoT · handmade #2",
                f"{c.id} · PoT · handmade", f"{d.id} · CoT · handmade"]  # clean passes, problem by problem
    return tmp_path, expected


def test_queue_puts_what_needs_a_human_first(triage):
    run, expected = triage
    state = curate.CurationState(run)
    assert [state.labels[rid] for rid in state.queue] == expected
    assert "disagree" in state.current.attention
    assert "answer is right" in state.item(state.queue[2]).attention
    assert [state.item(rid).attention for rid in state.queue[3:]] == [""] * 6
    state.keep()
    state.set_filters(mode="pot")  # filters keep the order
    assert [state.labels[rid] for rid in state.queue] == [x for x in expected if "PoT" in x]


def test_edit_is_re_checked_and_shown(triage):
    run, _ = triage
    cur = curate.Curator(run)
    state = cur.state
    broken = next(rid for rid in state.queue if state.rows[rid]["reasons"] == "error")
    state.goto(broken)
    cur.refresh()
    assert "mdlab-verdict-drop" in cur.verdict.value and "<code>error</code>" in cur.verdict.value
    gold = state.rows[broken]["gold"]
    cur.buttons["edit"].click()
    cur.editor.value = f"ans = {gold:g}"
    cur.save.click()
    assert state.current.reasons == [] and state.current.correct
    assert "mdlab-verdict-keep" in cur.verdict.value and "error" not in cur.verdict.value
    label = state.labels[broken]
    assert cur.message.value == f"edited <b>{label}</b>: answer {gold:g} (right), all checks pass — 1 of 9 decided"
    cur.buttons["edit"].click()
    cur.editor.value = f"ans = {gold + 1:g}"
    cur.save.click()
    assert state.current.reasons == ["wrong_answer"] and "mdlab-verdict-look" in cur.verdict.value
    cot = next(rid for rid in state.queue if state.rows[rid]["reasons"] == "truncated")
    state.goto(cot)
    state.edit(f"{state.current.text}. The answer is {state.rows[cot]['gold']:g}.")
    assert state.current.reasons == [] and curate.CurationState(run).item(cot).reasons == []  # after a reopen too


def test_keys_act_as_the_buttons(triage):
    run, expected = triage
    cur = curate.Curator(run)

    def press(key):  # what the frontend sends for a key press inside the curator
        cur.keys._handle_custom_msg({"key": key}, [])

    press("k")
    assert cur.message.value == f"kept <b>{expected[0]}</b> — 1 of 9 decided"
    assert expected[1] in cur.header.value
    press("d")
    assert cur.message.value == f"dropped <b>{expected[1]}</b> — 2 of 9 decided"
    press("ArrowLeft")
    press("p")
    assert cur.state.position == 0 and cur.message.value == ""
    press("p")  # at the start: nothing happens, as with the disabled button
    press("x")  # not a shortcut
    assert cur.state.position == 0 and "<span" not in cur.message.value
    press("n")
    press("ArrowRight")
    assert cur.state.position == 2
    press("e")
    assert cur.editor_box.layout.display == "" and cur.editor.value == cur.state.current.text
    press("n")  # moving on closes the editor
    assert cur.editor_box.layout.display == "none" and cur.state.position == 3
    records = runs.JsonlStore(run / curate.DECISIONS).read()
    assert [(cur.state.labels[r["id"]], r["action"]) for r in records] == [(expected[0], "keep"),
                                                                          (expected[1], "drop")]


# ------------------------------------------------------------------------------- widget

def test_curator_widget_drives_the_state(run):
    cur = curate.Curator(run)
    buttons = cur.buttons
    assert [b.description for b in buttons.values()] == ["previous (p/←)", "keep (k)", "drop (d)", "edit (e)",
                                                         "next (n/→)"]
    assert "mdlab-drop" in buttons["drop"]._dom_classes
    first = cur.state.current_id
    assert first in cur.header.value and "Question" in cur.question.value
    assert buttons["previous"].disabled and not buttons["next"].disabled
    cur.reason.value = "nonsense"
    buttons["drop"].click()
    record = runs.JsonlStore(run / curate.DECISIONS).read()[-1]
    assert record == {**record, "id": first, "action": "drop", "reason": "nonsense"}
    assert cur.reason.value == "" and cur.progress.value == 1 and "1 of" in cur.progress_label.value
    assert cur.state.current_id == cur.state.queue[1]
    buttons["previous"].click()
    assert cur.state.current_id == first and "<b>dropped</b> by you (nonsense)" in cur.verdict.value
    buttons["keep"].click()
    buttons["next"].click()
    assert cur.state.position == 2
    cur.filters["mode"].value = "pot"
    assert all(cur.state.rows[rid]["mode"] == "pot" for rid in cur.state.queue)
    assert "<pre" in cur.rationale.value and "style=" in cur.rationale.value  # the program, highlighted
    gold = cur.state.current.gold
    buttons["edit"].click()
    assert cur.editor_box.layout.display == "" and cur.editor.value == cur.state.current.text
    assert cur.rationale.layout.display == "none"  # the editor takes the rationale's place
    cur.editor.value = f"ans = {gold:g} + 0"
    cur.save.click()
    assert cur.editor_box.layout.display == "none" and "&#10004; right" in cur.result.value
    assert cur.rationale.layout.display == "" and "mdlab-verdict-keep" in cur.verdict.value
    assert cur.state.decisions[cur.state.current_id]["text"] == f"ans = {gold:g} + 0"
    assert "edited" in cur.summary.value and "<table" in cur.summary.value
    cur.filters["reason"].value = "error"
    assert "ZeroDivisionError" in cur.result.value and "<code>error</code>" in cur.verdict.value


def test_curator_with_an_empty_queue(run):
    cur = curate.Curator(run)
    cur.filters["teacher"].value = "handmade"
    cur.filters["mode"].value = "cot"
    cur.filters["reason"].value = "error"  # handmade CoTs have no execution errors
    assert cur.state.queue == [] and "no rationale" in cur.header.value
    assert cur.buttons["drop"].disabled


# ------------------------------------------------------------------------------ notebook

@pytest.mark.slow
def test_notebook_02_headless(tmp_path, problems, rationales):
    """papermill, smoke profile, interactive=False: writes the filter table, funnel and curated set."""
    papermill = pytest.importorskip("papermill")
    run_dir = tmp_path / "run"
    runs.JsonlStore(run_dir / curate.RATIONALES).extend(rationales)
    papermill.execute_notebook(str(ROOT / "notebooks" / "02_curate_rationales.ipynb"),
                               str(tmp_path / "out.ipynb"),
                               parameters={"profile": "smoke", "run_dir": str(run_dir), "interactive": False},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    assert (run_dir / curate.AUTO_FILTER).exists() and (run_dir / "figures" / "funnel.png").exists()
    kept = runs.JsonlStore(run_dir / curate.CURATED).read()
    assert 0 < len(kept) <= len(rationales)

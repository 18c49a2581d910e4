"""Sampling, voting and acc@k: vote rules, the estimator against exact enumeration, a tiny
model's sampler (greedy = transformers' greedy, seeds, batching, resume after SIGKILL), the
real sandbox for PoT paths, student directories, and a real ``transformers serve``."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mdlab import answers, config, data, evaluate, models, prompts
from mdlab.data import Problem

ROOT = Path(__file__).resolve().parent.parent


def _problem(pid: str, gold: float, question: str = "How many apples are there?") -> Problem:
    return Problem(id=pid, question=question, answer=gold, equation=None, dataset="synthetic", split="test")


def _samples(problem_id: str, mode: str, values, *, greedy=None) -> list[evaluate.Sample]:
    out = [evaluate.Sample(problem_id, mode, i, "", v, "ok" if v is not None else "no_answer", i, "m", 1,
                           temperature=0.7, max_new_tokens=8, base_seed=0) for i, v in enumerate(values)]
    if greedy is not None:
        answer = None if greedy == "none" else greedy
        out.append(evaluate.Sample(problem_id, mode, -1, "", answer, "ok", None, "m", 1, max_new_tokens=8))
    return out


# ----------------------------------------------------------------------------- voting

def test_vote_rules():
    assert evaluate.vote([]) is None
    assert evaluate.vote([None, None]) is None  # failed paths do not vote
    assert evaluate.vote([None, 2.0, 1.0, 1.0]) == 1.0  # majority of the answers that exist
    assert evaluate.vote([1.0, 2.0]) == 1.0 and evaluate.vote([2.0, 1.0]) == 2.0  # tie: earliest first path
    # answers.same pools 3.0 and 3.0004 into one candidate of 2, which ties 5 and came first
    assert evaluate.vote([3.0, 5.0, 3.0004, 5.0]) == 3.0
    assert evaluate.vote([5.0, 3.0, 3.0004]) == 3.0
    assert evaluate.vote([7.0, None, None]) == 7.0


def _reference(by_problem: dict, gold: dict, policy: str, k: int) -> float:
    """acc@k by brute force: every k-subset (pairs of subsets for two-mode policies), scalar vote."""
    per_problem = []
    for pid, (cot, pot) in by_problem.items():
        hits = []
        cot_sets = list(itertools.combinations(range(len(cot)), k))
        pot_sets = list(itertools.combinations(range(len(pot)), k))
        if policy in ("cot", "pot"):
            values = cot if policy == "cot" else pot
            for subset in (cot_sets if policy == "cot" else pot_sets):
                hits.append(answers.same(evaluate.vote([values[i] for i in subset]), gold[pid]))
        else:
            for p_set, c_set in itertools.product(pot_sets, cot_sets):
                pot_answers, cot_answers = [pot[i] for i in p_set], [cot[i] for i in c_set]
                if policy in ("mixed", "ensemble"):
                    winner = evaluate.vote(pot_answers + cot_answers)  # PoT paths listed first
                else:
                    winner = evaluate.vote(pot_answers)
                    winner = winner if winner is not None else evaluate.vote(cot_answers)
                hits.append(answers.same(winner, gold[pid]))
        per_problem.append(np.mean(hits))
    return float(np.mean(per_problem))


def _synthetic(n_problems: int, n_paths: int, seed: int):
    rng = np.random.default_rng(seed)
    problems, samples, by_problem = [], [], {}
    for p in range(n_problems):
        gold = float(rng.integers(1, 50))
        pool = [gold, gold + 0.0004, gold + 1, gold + 2, None]  # gold+0.0004 is the same answer as gold
        cot = [pool[i] for i in rng.integers(0, len(pool), n_paths)]
        pot = [pool[i] for i in rng.choice(len(pool), n_paths, p=[0.3, 0.1, 0.2, 0.1, 0.3])]
        problems.append(_problem(f"p{p}", gold))
        samples += _samples(f"p{p}", "cot", cot) + _samples(f"p{p}", "pot", pot)
        by_problem[f"p{p}"] = (cot, pot)
    return problems, samples, by_problem


@pytest.mark.parametrize("policy", evaluate.POLICIES)
def test_acc_at_k_equals_exact_enumeration(policy):
    problems, samples, by_problem = _synthetic(6, 5, seed=1)
    gold = {p.id: p.answer for p in problems}
    table = evaluate.acc_at_k(samples, problems, policy=policy, n_subsets=10**6, bootstrap=0)
    assert list(table["k"]) == [1, 2, 3, 4, 5]
    for _, row in table.iterrows():
        assert row["acc"] == pytest.approx(_reference(by_problem, gold, policy, int(row["k"])), abs=1e-12)
    assert (table["lo"] == table["acc"]).all() and (table["n"] == 6).all()


def test_acc_at_k_random_subsets_estimate_the_exact_value():
    problems, samples, by_problem = _synthetic(5, 12, seed=2)
    gold = {p.id: p.answer for p in problems}
    for policy in ("cot", "mixed"):  # C(12, 6) = 924 > 400 random subsets (pairs for mixed)
        table = evaluate.acc_at_k(samples, problems, policy=policy, ks=[6], n_subsets=400, bootstrap=200)
        exact = _reference(by_problem, gold, policy, 6) if policy == "cot" else None
        if exact is not None:
            assert table["acc"].iloc[0] == pytest.approx(exact, abs=0.04)
        assert table["lo"].iloc[0] <= table["acc"].iloc[0] <= table["hi"].iloc[0]
        again = evaluate.acc_at_k(samples, problems, policy=policy, ks=[6], n_subsets=400, bootstrap=200)
        assert again.equals(table)  # fixed seed: the same subsets and resamples


def test_mixed_tie_goes_to_pot_and_pot_then_cot_falls_back():
    problems = [_problem("a", 2.0), _problem("b", 1.0)]
    samples = (_samples("a", "cot", [1.0]) + _samples("a", "pot", [2.0])
               + _samples("b", "cot", [1.0]) + _samples("b", "pot", [None]))
    mixed = evaluate.acc_at_k(samples, problems, policy="mixed", bootstrap=0)
    assert mixed["acc"].tolist() == [1.0]  # a: 1-1 tie, PoT listed first wins; b: PoT failed, CoT votes
    assert evaluate.acc_at_k(samples, problems, policy="pot_then_cot", bootstrap=0)["acc"].tolist() == [1.0]
    assert evaluate.acc_at_k(samples, problems, policy="pot", bootstrap=0)["acc"].tolist() == [0.5]
    assert evaluate.acc_at_k(samples, problems, policy="cot", bootstrap=0)["acc"].tolist() == [0.5]


def test_acc_at_k_refuses_missing_paths_and_large_k():
    problems, samples, _ = _synthetic(3, 4, seed=3)
    with pytest.raises(ValueError, match="1..4"):
        evaluate.acc_at_k(samples, problems, policy="cot", ks=[5])
    with pytest.raises(ValueError, match="no sampled"):
        evaluate.acc_at_k(samples, problems + [_problem("extra", 1.0)], policy="cot")
    with pytest.raises(ValueError, match="policy"):
        evaluate.acc_at_k(samples, problems, policy="majority")


def test_greedy_accuracy_is_separate_from_sampled_paths():
    problems = [_problem("a", 2.0), _problem("b", 3.0)]
    samples = (_samples("a", "cot", [9.0, 9.0], greedy=2.0) + _samples("a", "pot", [9.0], greedy="none")
               + _samples("b", "cot", [3.0], greedy=4.0) + _samples("b", "pot", [3.0], greedy=3.0))
    table = evaluate.greedy_accuracy(samples, problems, bootstrap=0).set_index("policy")
    assert table.loc["cot", "acc"] == 0.5 and table.loc["pot", "acc"] == 0.5
    assert table.loc["pot_then_cot", "acc"] == 1.0  # a: no program answer, CoT's greedy 2 counts
    curves = evaluate.curves(samples, problems, ks=[1], bootstrap=0).set_index("policy")
    assert curves.loc["cot", "acc"] == 0.5  # sampled paths only: a's 9s are wrong, b's 3 right


# ----------------------------------------------------------------------------- paired statistics, claims

def test_per_problem_feeds_acc_at_k_and_greedy_accuracy():
    problems, samples, _ = _synthetic(5, 6, seed=4)
    table = evaluate.per_problem(samples, problems, policy="mixed", ks=[2, 5], n_subsets=7)
    assert list(table.index) == [p.id for p in problems] and list(table.columns) == [2, 5]
    curve = evaluate.acc_at_k(samples, problems, policy="mixed", ks=[2, 5], n_subsets=7, bootstrap=0)
    assert curve["acc"].tolist() == pytest.approx(table.mean(0).tolist())
    # the random subsets at k do not depend on which other ks were asked for
    alone = evaluate.per_problem(samples, problems, policy="mixed", ks=[5], n_subsets=7)
    assert alone[5].tolist() == table[5].tolist()
    greedy = [s for p in problems
              for s in _samples(p.id, "cot", [], greedy=p.answer if p.id != "p1" else -1.0)]
    hits = evaluate.per_problem(greedy, problems, policy="cot", greedy=True)
    assert hits[1].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert evaluate.greedy_accuracy(greedy, problems, bootstrap=0)["acc"].tolist() == [0.8]


def test_paired_bootstrap_and_mcnemar_on_hand_cases():
    from scipy.stats import binomtest

    b = np.array([0.0, 0.5, 1.0, 0.25, 0.0, 0.75])
    assert evaluate.paired_bootstrap(b + 0.25, b, bootstrap=500) == pytest.approx((25.0, 25.0, 25.0))
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1.0])
    c = np.array([0, 1, 0, 0, 0, 1, 0, 1, 1, 0.0])
    diff, lo, hi = evaluate.paired_bootstrap(a, c, bootstrap=2000, seed=3)
    assert diff == pytest.approx(30.0) and lo < diff < hi and -100 <= lo and hi <= 100
    assert evaluate.paired_bootstrap(a, c, bootstrap=2000, seed=3) == (diff, lo, hi)  # seeded
    # pandas vectors are paired by problem id, not by position
    import pandas as pd

    ids = [f"p{i}" for i in range(10)]
    shuffled = pd.Series(c, index=ids).iloc[::-1]
    paired = evaluate.paired_bootstrap(pd.Series(a, index=ids), shuffled, bootstrap=2000, seed=3)
    assert paired == (diff, lo, hi)
    # McNemar: 1 problem only a gets right, 9 only b; 5 both, 5 neither
    only_a = np.r_[1, np.zeros(9), np.ones(5), np.zeros(5)]
    only_b = np.r_[0, np.ones(9), np.ones(5), np.zeros(5)]
    assert evaluate.mcnemar(only_a, only_b) == pytest.approx(0.021484375)
    assert evaluate.mcnemar(a, c) == pytest.approx(binomtest(4, 5, 0.5).pvalue)  # discordant: 4 vs 1
    assert evaluate.mcnemar(a, a) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        evaluate.mcnemar(b, b)
    with pytest.raises(ValueError, match="same problems"):
        evaluate.paired_bootstrap(a, c[:5])


def test_ensemble_is_mixed_over_two_students_paths():
    problems, samples, by_problem = _synthetic(4, 3, seed=5)
    gold = {p.id: p.answer for p in problems}
    cot_only = [s for s in samples if s.mode == "cot"]
    pot_only = [s for s in samples if s.mode == "pot"]
    combined = cot_only + pot_only
    ensemble = evaluate.acc_at_k(combined, problems, policy="ensemble", bootstrap=0)
    assert ensemble.equals(evaluate.acc_at_k(combined, problems, policy="mixed", bootstrap=0))
    exact = [_reference(by_problem, gold, "mixed", k) for k in (1, 2, 3)]
    assert ensemble["acc"].tolist() == pytest.approx(exact)
    # one student's curves leave the two-student policy out
    assert "ensemble" not in set(evaluate.curves(samples, problems, bootstrap=0)["policy"])


def _write_student(run: Path, name: str, samples) -> None:
    from mdlab import runs

    (run / "students" / name).mkdir(parents=True)  # no adapter: found by the manifest naming a base model
    (run / "students" / name / "manifest.json").write_text(json.dumps({"student": name, "base_model": "m"}))
    runs.JsonlStore(run / "students" / name / evaluate.SAMPLES_FILE).extend(
        [{**s.__dict__, "model": "base:m"} for s in samples])


def test_students_ensemble_claims_and_results_json(tmp_path):
    from mdlab import plots

    problems = [_problem(f"p{i}", float(i + 1)) for i in range(6)]
    right, wrong = [p.answer for p in problems], [p.answer + 1 for p in problems]
    md_pot_greedy = [1, 1, 1, 1, 0, 0]  # md's greedy PoT: right on the first four
    pot_pot_greedy = [1, 0, 0, 0, 0, 1]  # the PoT-only student's: right on p0 and p5
    md, cot, pot, base = [], [], [], []
    for i, p in enumerate(problems):
        md += _samples(p.id, "cot", [right[i], wrong[i], right[i], right[i]], greedy=wrong[i])
        md += _samples(p.id, "pot", [right[i]] * 4, greedy=right[i] if md_pot_greedy[i] else wrong[i])
        cot += _samples(p.id, "cot", [wrong[i], right[i], wrong[i], wrong[i]],
                        greedy=right[i] if i < 3 else wrong[i])
        pot += _samples(p.id, "pot", [wrong[i], None, wrong[i], right[i]],
                        greedy=right[i] if pot_pot_greedy[i] else "none")
        base += _samples(p.id, "cot", [], greedy=wrong[i]) + _samples(p.id, "pot", [], greedy="none")
    run = tmp_path / "run"
    for name, samples in (("md", md), ("cot", cot), ("pot", pot), ("base", base)):
        _write_student(run, name, samples)
    cfg = evaluate.EvalConfig(k=4, max_new_tokens=8, bootstrap=200)
    assert [d.name for d in evaluate.students(run)] == ["md", "base", "cot", "pot"]  # base: no adapter
    curves, greedy = evaluate.evaluate_students(run, problems, cfg)
    ens = curves[curves["student"] == evaluate.ENSEMBLE]
    assert set(ens["policy"]) == {"ensemble"} and list(ens["k"]) == [1, 2, 3, 4]
    combined = [s for s in cot if s.mode == "cot"] + pot
    mixed = evaluate.acc_at_k(combined, problems, policy="mixed", bootstrap=0)
    assert ens["acc"].tolist() == mixed["acc"].tolist()
    # the ensemble's single path: the PoT-only student's program, else the CoT-only student's CoT
    g = greedy.set_index(["student", "policy"])["acc"]
    assert g[(evaluate.ENSEMBLE, "pot_then_cot")] == pytest.approx(4 / 6)  # p0, p5 by PoT; p1, p2 by CoT
    assert g[("base", "cot")] == 0.0 and ("base", "pot") in g.index

    claims = {(c["a"], c["b"]): c for c in evaluate.comparisons(run, problems, cfg)}
    pot_claim = claims[("md/greedy_pot", "pot/greedy_pot")]
    assert pot_claim["diff"] == pytest.approx(100 * (4 - 2) / 6) and pot_claim["n_problems"] == 6
    # discordant pairs: md alone right on p1, p2, p3; pot alone on p5
    assert pot_claim["p_mcnemar"] == pytest.approx(evaluate.mcnemar(md_pot_greedy, pot_pot_greedy))
    assert pot_claim["p_mcnemar"] == pytest.approx(0.625)
    assert claims[("md/mixed@4", "md/greedy_pot")]["diff"] == pytest.approx(100 * 2 / 6)  # mixed@4: all right
    vs_ensemble = claims[("md/mixed@4", f"{evaluate.ENSEMBLE}/ensemble@4")]  # capped at the 4 paths sampled
    assert "p_mcnemar" not in vs_ensemble and vs_ensemble["lo"] <= vs_ensemble["diff"] <= vs_ensemble["hi"]
    assert ("md/greedy_pot_then_cot", "base/greedy_pot_then_cot") in claims

    paths = plots.write_report(run, curves, greedy, data="synthetic", student_model="S", temperature=0.7,
                               comparisons=list(claims.values()))
    blob = json.loads(paths["results_json"].read_text())
    assert set(blob) == {"rows", "comparisons"}
    keys = {"student", "policy", "k", "n_problems", "accuracy", "lo", "hi"}
    assert all(set(row) == keys for row in blob["rows"])
    rows = {(r["student"], r["policy"], r["k"]): r for r in blob["rows"]}
    assert rows[("md", "greedy_pot", 1)]["accuracy"] == pytest.approx(100 * 4 / 6)  # percent
    assert rows[("md", "mixed", 4)]["accuracy"] == pytest.approx(100.0)
    assert (evaluate.ENSEMBLE, "ensemble", 4) in rows and ("base", "greedy_cot", 1) in rows
    assert all({"a", "b", "diff", "lo", "hi"} <= set(c) for c in blob["comparisons"])
    table, claims_table = evaluate.read_results(run)
    assert len(table) == len(blob["rows"])
    assert list(claims_table.columns[:5]) == ["a", "b", "diff", "lo", "hi"]
    assert "md/greedy_pot | pot/greedy_pot | +33.3" in paths["results"].read_text()


def test_teacher_self_consistency_mcckd(tmp_path):
    """gpt-3.5's ten recorded CoTs per SVAMP train question (MCC-KD), voted over k of them."""
    from mdlab import teachers

    train = data.load("svamp", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the source covers 564 of the 800 train problems
        rationales = teachers.generate(teachers.Recorded("svamp-mcckd-cot"), train, "cot", n=10,
                                       run_dir=tmp_path, progress=False)
    curve = evaluate.teacher_curve(rationales, train, bootstrap=200).set_index("k")
    assert (curve["n"] == 564).all() and list(curve.index) == list(range(1, 11))
    acc = 100 * curve["acc"]
    # the figures: 68.1 one path, 75.1 voting 3, 79.6 voting 5, 82.8 voting all ten
    assert acc[[1, 3, 5, 10]].tolist() == pytest.approx([68.1, 75.1, 79.6, 82.8], abs=0.5)
    assert acc[[1, 3, 5, 10]].round(2).tolist() == [68.12, 74.92, 79.69, 82.98]  # this seeded shuffle
    # in the recorded order the first samples are the right ones (95% at sample 0, 30% at sample 9), and the
    # earliest-first tie break would turn that order into points: why teacher_samples shuffles
    recorded = evaluate.teacher_curve(rationales, train, shuffle_seed=None, bootstrap=0).set_index("k")
    recorded = 100 * recorded["acc"]
    assert recorded[1] == pytest.approx(acc[1]) and recorded[3] > acc[3] + 5


# ----------------------------------------------------------------------------- the sampler on a tiny model

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose 10x on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return models.load(str(models.tiny_path()), dtype="fp32")  # fp32: the decoding-loop tests compare tokens


@pytest.fixture(scope="module")
def problems():
    return data.load("svamp", "test", limit=6)


@pytest.fixture(scope="module")
def embedded():
    """The embedded 135M model: unlike the random tiny one, its next token depends on the whole context,
    so a misplaced position or KV column changes what it writes."""
    return models.load("embedded", dtype="fp32")  # bf16 rounding would differ between batch shapes


def test_greedy_path_equals_transformers_generate(embedded, problems, tmp_path):
    import torch

    model, tokenizer = embedded
    engine = evaluate.backend((model, tokenizer), tag="embedded")
    # a near-zero temperature makes sampling argmax: the sampled rows must match the greedy one
    out = evaluate.sample(engine, problems[:4], "cot", k=1, temperature=1e-4, seed=0, run_dir=tmp_path,
                          max_new_tokens=10, progress=False)
    by_problem = {}
    for s in out:
        by_problem.setdefault(s.problem_id, []).append(s.text)
    for problem in problems[:4]:  # different prompt lengths: left padding must not change anything
        ids = tokenizer(prompts.student_prompt(problem.question, "cot"), return_tensors="pt").input_ids
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                                 pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
        assert by_problem[problem.id] == [text, text]


def test_sampler_is_seeded_per_path_not_per_batch(tiny, problems, tmp_path):
    engine = evaluate.backend(tiny, tag="tiny")
    kw = {"k": 3, "temperature": 1.0, "seed": 7, "max_new_tokens": 12, "progress": False}
    first = evaluate.sample(engine, problems, "cot", run_dir=tmp_path / "a", batch_rows=64, **kw)
    assert evaluate.sample(engine, problems, "cot", run_dir=tmp_path / "a2", batch_rows=64, **kw) == first
    # other batch size, other problem order: each path keeps its own random stream, so it comes out
    # the same, up to the rare token that float rounding of another batch shape moves (see evaluate)
    second = evaluate.sample(engine, problems[::-1], "cot", run_dir=tmp_path / "b", batch_rows=3, **kw)
    by_path = {(s.problem_id, s.index): s.text for s in second}
    assert np.mean([by_path[(s.problem_id, s.index)] == s.text for s in first]) >= 0.8
    assert [s.seed for s in first if s.index >= 0] == [
        evaluate.sample_seed(7, p.id, "cot", i) for p in problems for i in range(3)]
    assert len({s.text for s in first if s.index >= 0}) > len(problems)  # paths of a problem differ
    other = evaluate.sample(engine, problems, "cot", run_dir=tmp_path / "c", **{**kw, "seed": 8})
    assert [s.text for s in other if s.index >= 0] != [s.text for s in first if s.index >= 0]
    assert [s.text for s in other if s.index < 0] == [s.text for s in first if s.index < 0]

    path = tmp_path / "a" / evaluate.SAMPLES_FILE
    size = path.stat().st_size
    again = evaluate.sample(engine, problems, "cot", run_dir=tmp_path / "a", **kw)  # all cached: no decode
    assert path.stat().st_size == size and again == first
    # k = 4: only index 3 is new
    more = evaluate.sample(engine, problems, "cot", run_dir=tmp_path / "a", **{**kw, "k": 4})
    assert [s.text for s in more if s.index < 3] == [s.text for s in first]
    assert len(evaluate.read_samples(path)) == len(problems) * 5


def test_continuous_batching_refills_finished_rows(embedded, problems):
    """Paths end at different steps (a stop string), so new prompts are merged into running batches."""
    engine = evaluate.backend(embedded, tag="embedded")
    jobs = [evaluate.Job(p, "cot", prompts.student_prompt(p.question, "cot"), [-1, 0],
                         [None, evaluate.sample_seed(0, p.id, "cot", 0)]) for p in problems[:5]]

    def run(batch_rows: int, stop: tuple[str, ...]) -> tuple[dict, list[int]]:
        texts, order = {}, []
        for finished in engine.stream(jobs, temperature=1.0, top_p=1.0, max_new_tokens=16, stop=stop,
                                      batch_rows=batch_rows):
            for j, completions in finished:
                order.append(j)
                texts.update({(j, slot): c for slot, c in enumerate(completions)})
        return texts, order

    stop = (".", "\n")
    alone, _ = run(2, stop)  # one prompt at a time: nothing to merge
    merged, order = run(5, stop)  # two prompts at a time, a third joining when one finishes
    assert sorted(order) == list(range(len(jobs)))
    lengths = [c.tokens for c in alone.values()]
    assert len(set(lengths)) > 3 and min(lengths) < 12  # paths did end at different steps
    same = [alone[key].text == merged[key].text for key in alone]
    assert np.mean(same) >= 0.8, same  # a merge that misaligned the KV cache would change most paths


def test_prefill_cache_is_one_the_engine_can_merge(tiny, problems):
    """merge / trim set DynamicLayer's keys and values (transformers has no public call for either): pin
    the layer type, so an upgrade that changes it fails here instead of silently batching less."""
    from mdlab import generation

    engine = evaluate.backend(tiny, tag="tiny")
    jobs = [evaluate.Job(p, "cot", prompts.student_prompt(p.question, "cot"), [0, 1], [1, 2]) for p in problems]
    _, cache, mask, _ = engine._prefill(jobs[:2])
    _, other, other_mask, _ = engine._prefill(jobs[2:3])
    assert generation.mergeable(cache) and cache.get_seq_length() == mask.shape[1]
    merged, merged_mask = generation.merge(cache, mask, other, other_mask)
    assert merged.layers[0].keys.shape[0] == 6 and merged.get_seq_length() == merged_mask.shape[1]
    assert merged_mask.shape[1] == max(mask.shape[1], other_mask.shape[1])


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mdlab import data, evaluate, runs

    extend = runs.JsonlStore.extend

    def extend_then_hang(store, records):
        extend(store, records)
        written = len(store.read())
        if written >= 8:  # two batches or more on disk: say so, then hang until the test's SIGKILL
            marker = Path(sys.argv[3])
            marker.with_suffix(".tmp").write_text(str(written))
            marker.with_suffix(".tmp").replace(marker)
            time.sleep(3600)

    runs.JsonlStore.extend = extend_then_hang
    problems = data.load("svamp", "test", limit=24)
    evaluate.sample(sys.argv[1], problems, "cot", k=3, temperature=1.0, seed=0, run_dir=sys.argv[2],
                    max_new_tokens=48, batch_rows=4, progress=False)
""")


def test_sampling_resumes_after_sigkill_without_duplicates(tmp_path, tiny):
    """Killed at a known point (the sampler hangs once >= 8 records are on disk), not after a guessed time."""
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    run, marker = tmp_path / "killed", tmp_path / "written.txt"
    store = run / evaluate.SAMPLES_FILE
    proc = subprocess.Popen([sys.executable, str(script), str(models.tiny_path()), str(run), str(marker)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail("the sampler exited before 8 records were on disk")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # it hangs after that append: nothing more reaches the file
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines_at_kill = store.read_text().count("\n")
    assert lines_at_kill == int(marker.read_text()) and 8 <= lines_at_kill < 24 * 4

    problems = data.load("svamp", "test", limit=24)
    kw = {"k": 3, "temperature": 1.0, "seed": 0, "max_new_tokens": 48, "batch_rows": 4, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last line, if the kill cut one, is dropped with a warning
        killed = {(s.problem_id, s.index): s.text for s in evaluate.read_samples(store)}
        resumed = evaluate.sample(str(models.tiny_path()), problems, "cot", run_dir=run, **kw)
        records = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    keys = [(r["problem_id"], r["index"]) for r in records]
    assert len(keys) == len(set(keys)) == 24 * 4  # every path once, nothing twice
    assert len(records) - lines_at_kill == 24 * 4 - len(killed)  # only the missing paths were decoded
    # loaded like the killed and the resumed run (same default dtype), so the paths must agree token for token
    fresh = evaluate.sample(str(models.tiny_path()), problems, "cot", run_dir=tmp_path / "fresh", **kw)
    assert [s.text for s in resumed] == [s.text for s in fresh]
    assert all(killed[(s.problem_id, s.index)] == s.text for s in fresh if (s.problem_id, s.index) in killed)


class _Scripted:
    """A backend that writes given texts: exercises the answer path (real sandbox) without a model."""

    tag, batch_rows = "scripted", 64

    def __init__(self, texts: dict[str, list[str]]):
        self.texts = texts

    def prompt_length(self, prompt: str) -> int:
        return len(prompt)

    def generate(self, jobs, *, temperature, top_p, max_new_tokens):
        return [[evaluate.Completion(self.texts[job.problem.id][i + 1], 5, "eos", seed)
                 for i, seed in zip(job.indices, job.seeds)] for job in jobs]


def test_pot_paths_run_in_the_sandbox_and_cot_answers_are_extracted(tmp_path):
    problems = [_problem("a", 5.0), _problem("b", 4.0)]
    pot = {"a": ["ans = 2 + 3", "x = 1\nans = x / 0", "ans = 5.0", "The answer is 5."],
           "b": ["while True:\n    pass", "apples = 6\nans = apples - 2", "print(4)",
                 "import socket\nsocket.socket()"]}
    out = evaluate.sample(_Scripted(pot), problems, "pot", k=3, temperature=0.7, seed=0, run_dir=tmp_path,
                          pot_timeout=1.0, progress=False)
    got = {(s.problem_id, s.index): (s.status, s.answer) for s in out}
    assert got[("a", -1)] == ("ok", 5.0) and got[("a", 0)][0] == "error" and got[("a", 1)] == ("ok", 5.0)
    assert got[("a", 2)] == ("no_code", None)  # prose, no program
    assert got[("b", -1)][0] == "timeout" and got[("b", 0)] == ("ok", 4.0) and got[("b", 1)] == ("ok", 4.0)
    assert got[("b", 2)][0] in ("forbidden", "error")
    cot = {"a": ["so 2 + 3 = 5. The answer is 5.", "The answer is 6.", "no idea", "The answer is 5."],
           "b": ["The answer is 3.", "The answer is 4", "The answer is 3.", "The answer is 4."]}
    out = evaluate.sample(_Scripted(cot), problems, "cot", k=3, temperature=0.7, seed=0, run_dir=tmp_path,
                          progress=False)
    assert [s.answer for s in out] == [5.0, 6.0, None, 5.0, 3.0, 4.0, 3.0, 4.0]
    samples = evaluate.read_samples(tmp_path)
    table = evaluate.curves(samples, problems, bootstrap=0).set_index(["policy", "k"])
    assert table.loc[("pot", 3), "acc"] == 1.0  # a: 5, 5 (error, no_code don't vote); b: 4, 4
    assert table.loc[("cot", 3), "acc"] == 0.5  # a: 6 vs 5 tie -> 6 came first, wrong; b: 4, 3, 4 -> 4


# ----------------------------------------------------------------------------- students, config

def test_student_directory_with_an_adapter(tiny, problems, tmp_path):
    from peft import LoraConfig, get_peft_model

    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="03_train"):
        evaluate.students(run)
    model, _ = models.load(str(models.tiny_path()))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    # untrained: B = 0, so the student writes what the base model writes
    get_peft_model(model, lora).save_pretrained(run / "students" / "md" / "adapter")
    (run / "students" / "cot").mkdir()  # no adapter: not a student
    md = run / "students" / "md"
    assert evaluate.students(run) == [md] and evaluate.student_modes(md) == ("cot", "pot")
    cfg = evaluate.EvalConfig(k=2, max_new_tokens=6, sc_students=["md"], bootstrap=50)
    samples, seconds, tokens = evaluate.sample_student(md, problems[:3], cfg, progress=False)
    assert len(samples) == 3 * 2 * 3 and tokens == sum(s.tokens for s in samples) and seconds > 0
    assert samples[0].model.startswith("md:")
    base_greedy = evaluate.sample(tiny, problems[:3], "cot", k=0, temperature=0.7, seed=0,
                                  run_dir=tmp_path / "base", max_new_tokens=6, progress=False)
    assert [s.text for s in samples if s.mode == "cot" and s.index < 0] == [s.text for s in base_greedy]
    curves, greedy = evaluate.evaluate_students(run, problems[:3], cfg)
    assert set(curves["policy"]) == set(evaluate.STUDENT_POLICIES) and set(curves["k"]) == {1, 2}
    assert set(greedy["student"]) == {"md"} and len(greedy) == 3
    # another temperature in the same file is another run: not mixed into these curves
    evaluate.sample(run / "students" / "md", problems[:3], "cot", k=2, temperature=1.3, seed=0,
                    run_dir=run / "students" / "md", max_new_tokens=6, greedy=False, progress=False)
    assert evaluate.evaluate_students(run, problems[:3], cfg)[0].equals(curves)


def test_untrained_base_student_and_transfer_sets(problems, tmp_path):
    """students/base/ names a model (no adapter): it is sampled, evaluated and decodes the transfer sets."""
    run = tmp_path / "run"
    base = evaluate.base_student(run, str(models.tiny_path()))
    cfg = evaluate.EvalConfig(k=2, max_new_tokens=4, bootstrap=20,
                              transfer=["mawps-addsub:test", "asdiv:all"], transfer_limit=2)
    assert evaluate.students(run) == [base]
    samples, _, _ = evaluate.sample_student(base, problems[:2], cfg, progress=False)
    assert {s.index for s in samples} == {-1} and {s.model for s in samples} == {f"base:{models.tiny_path()}"}
    curves, greedy = evaluate.evaluate_students(run, problems[:2], cfg)
    assert curves.empty and set(greedy["policy"]) == {"cot", "pot", "pot_then_cot"}

    asdiv = evaluate.transfer_problems("asdiv:all")
    assert 2000 < len(asdiv) < 2305 and all(np.isfinite(p.answer) for p in asdiv)  # numeric answers only
    decoded = evaluate.sample_transfer(base, cfg, progress=False)
    assert set(decoded) == {"mawps-addsub", "asdiv"}
    for name in decoded:
        path = base / "transfer" / name / evaluate.SAMPLES_FILE
        assert len(evaluate.read_samples(path)) == 2 * 2  # 2 problems x greedy CoT and PoT
    table = evaluate.transfer_accuracy(run, cfg)
    assert set(table["dataset"]) == {"mawps-addsub", "asdiv"} and (table["n"] == 2).all()
    assert set(table["policy"]) == {"cot", "pot", "pot_then_cot"} and set(table["student"]) == {"base"}
    rows = evaluate.results(curves, greedy, [], table)["rows"]
    assert {r.get("dataset") for r in rows} == {None, "mawps-addsub", "asdiv"}


def test_eval_config_validates_and_profiles_load():
    with pytest.raises(ValueError):
        evaluate.EvalConfig(k=-1)
    with pytest.raises(ValueError):
        evaluate.EvalConfig(top_p=0)
    with pytest.raises(ValueError, match="transfer"):
        evaluate.EvalConfig(transfer=["mawps-addsub"])  # no split
    with pytest.raises(ValueError, match="transfer"):
        evaluate.EvalConfig(transfer=["asdiv:all", "asdiv:all"])
    for profile in ("smoke", "cpu", "gpu"):
        assert isinstance(config.load(profile).evaluate, evaluate.EvalConfig)


# ----------------------------------------------------------------------------- other backends

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_openai_backend_against_transformers_serve(tmp_path, problems, stop_process):
    pytest.importorskip("fastapi")
    served = tmp_path / "tiny-sampling"
    shutil.copytree(models.tiny_path(), served)
    gen = json.loads((served / "generation_config.json").read_text())
    # transformers serve samples only when the model's generation config says so
    (served / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True}))
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    server = subprocess.Popen([str(exe), "serve", str(served), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "transformers serve did not start in 120 s"
                time.sleep(0.5)
        engine = evaluate.OpenAIBackend(f"http://127.0.0.1:{port}/v1", str(served),
                                        api_key_env="MDLAB_NO_SUCH_KEY", concurrency=2)
        kw = {"k": 2, "temperature": 1.0, "seed": 0, "run_dir": tmp_path / "run", "max_new_tokens": 6,
              "progress": False}
        out = evaluate.sample(engine, problems[:2], "cot", **kw)
        assert [(s.problem_id, s.index) for s in out] == [(p.id, i) for p in problems[:2] for i in (-1, 0, 1)]
        assert all(s.model == f"openai:{served}" and 0 < s.tokens <= 6 for s in out)
        assert all((s.seed is None) == (s.index < 0) for s in out)
        assert len({s.seed for s in out if s.index >= 0}) == 4  # one request, one seed per path
        sent = engine.requests_sent
        assert evaluate.sample(engine, problems[:2], "cot", **kw) == out
        assert engine.requests_sent == sent  # resumed from the file: no request
    finally:
        stop_process(server)


def test_vllm_backend_is_import_guarded():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            evaluate.VLLMBackend("tiny")
    else:
        pytest.skip("vLLM is installed: test_vllm_backend_samples covers it")


@pytest.mark.gpu
# a skip mark, not importorskip: it skips before the fixtures, whose data files a bare GPU machine lacks
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM")
def test_vllm_backend_samples(tmp_path, problems):
    engine = evaluate.VLLMBackend("tiny", gpu_memory_utilization=0.3)
    out = evaluate.sample(engine, problems[:2], "pot", k=2, temperature=1.0, seed=0, run_dir=tmp_path,
                          max_new_tokens=8, progress=False)
    assert len(out) == 6 and all(s.model == "tiny" for s in out)

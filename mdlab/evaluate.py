"""Self-consistency evaluation: sample students' paths, vote, and estimate accuracy against k.

``sample`` scores paths (``answers.score``) into ``run_dir/samples.jsonl``; in ``vote`` ties go to the
earliest first path, and ``mixed`` lists PoT first, so PoT wins ties; ``comparisons`` tests ``CLAIMS``.
Student directories and backends live in mdlab/students.py; the reasons: docs/design.md ("Module notes").
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import math
import os
import random
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from mdlab import answers, data, prompts, runs
from mdlab.data import transfer_problems

# re-exported: notebooks and bench reach the engine and the student layout through evaluate
from mdlab.generation import Completion, HFBackend, Job, OpenAIBackend, VLLMBackend, sample_seed  # noqa: F401
from mdlab.students import (  # noqa: F401
    BASE_STUDENT, SAMPLES_FILE, _student_tag, backend, base_student, sample_student, sample_transfer, short_tag,
    student_k, student_modes, students,
)

Policy = Literal["cot", "pot", "mixed", "pot_then_cot", "ensemble"]
POLICIES: tuple[str, ...] = get_args(Policy)
STUDENT_POLICIES = POLICIES[:-1]  # one student's paths; ``ensemble`` pools two students' (ENSEMBLE)
GREEDY = ("cot", "pot", "pot_then_cot")  # a student's single-path policies
ENSEMBLE = "cot+pot"  # the two-student baseline: the CoT-only student's CoT paths + the PoT-only's PoT paths
RESULTS_FILE = "results.json"


@dataclasses.dataclass
class EvalConfig:
    k: int = 8  # sampled paths per problem and mode
    temperature: float = 0.7  # sampling temperature for the k paths
    seed: int = 0  # base seed; per-sample seeds derive from it (sample_seed)
    top_p: float = 1.0  # nucleus sampling mass (1.0 = plain temperature sampling)
    max_new_tokens: int = 256  # cap on generated tokens per path
    greedy: bool = True  # also decode one greedy path (index -1) per problem and mode
    sc_students: list[str] = dataclasses.field(default_factory=lambda: ["md", "cot", "pot"])  # the others: greedy only
    baseline_k: int | None = None  # sampled paths per mode for the single-mode students (None = k)
    base: bool = False  # also decode the untrained base model greedily, as the student "base" (base_student)
    batch_rows: int = 64  # sequences decoded at once (a prompt brings its k+1 rows)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # decoding weights (models.compute_dtype)
    pot_timeout: float = 3.0  # seconds per PoT program in the sandbox
    n_subsets: int = 200  # k-subsets per problem for acc@k (all of them when there are fewer)
    bootstrap: int = 1000  # bootstrap resamples of problems for the interval
    ci: float = 0.95  # bootstrap interval mass
    # "dataset:split" sets every student decodes greedily for the generality table (sample_transfer)
    transfer: list[str] = dataclasses.field(default_factory=list)
    transfer_limit: int | None = None  # N seeded problems of each (data.transfer_problems); None = all

    def __post_init__(self):
        if self.k < 0 or self.temperature < 0 or not 0 < self.top_p <= 1 or not 0 < self.ci < 1:
            raise ValueError(f"evaluate: need k >= 0, temperature >= 0, top_p in (0, 1], ci in (0, 1); got "
                             f"{self.k}, {self.temperature}, {self.top_p}, {self.ci}")
        if self.max_new_tokens < 1 or self.batch_rows < 1 or self.n_subsets < 1 or self.bootstrap < 0:
            raise ValueError("evaluate.max_new_tokens, batch_rows, n_subsets must be >= 1 and bootstrap >= 0")
        for spec in self.transfer:
            name, _, split = spec.partition(":")
            if name not in data.REGISTRY or split not in data.REGISTRY[name].splits:
                raise ValueError(f"evaluate.transfer: {spec!r} is not a dataset:split of data.REGISTRY")
        if len({spec.split(":")[0] for spec in self.transfer}) < len(self.transfer):
            raise ValueError(f"evaluate.transfer names a dataset twice: {self.transfer}")
        if self.transfer_limit is not None and self.transfer_limit < 1:
            raise ValueError(f"evaluate.transfer_limit must be >= 1 or null, got {self.transfer_limit}")


@dataclasses.dataclass
class Sample:
    problem_id: str  # Problem.id
    mode: str  # "cot" | "pot"
    index: int  # 0..k-1 sampled path; -1 greedy
    text: str  # the generated text (cut at a stop string): the CoT, or the PoT program
    answer: float | None  # CoT: answers.extract(text); PoT: the sandbox's answer; None = no vote
    status: str  # "ok" | "no_answer" | "no_code" (PoT without a program) | a sandbox status | "api_error"
    seed: int | None  # the seed this path was drawn with (None for greedy)
    model: str  # model tag: student name + training fingerprint, model name, or "openai:<model>"
    tokens: int  # generated tokens (EOS included)
    finish: str = "eos"  # "eos" | "stop" (ran on into a new question) | "length" (hit max_new_tokens)
    temperature: float = 0.0  # 0.0 for greedy
    top_p: float = 1.0  # 1.0 for greedy
    max_new_tokens: int = 0  # the cap it was generated under
    base_seed: int | None = None  # the run's seed (``sample(seed=)``); None for greedy
    error: str | None = None  # why a path failed (the sandbox's last error line, an API error)

    @classmethod
    def from_dict(cls, record: dict) -> Sample:
        return cls(**{key: value for key, value in record.items() if key in _SAMPLE_FIELDS})


_SAMPLE_FIELDS = {f.name for f in dataclasses.fields(Sample)}


# ----------------------------------------------------------------------------- sampling

def _key(rec: dict) -> tuple:
    """The resume key of a sample record."""
    return (rec["model"], rec["mode"], rec["problem_id"], rec["index"], float(rec["temperature"]),
            float(rec.get("top_p", 1.0)), rec.get("base_seed"), rec["max_new_tokens"])


def _by_key(store: runs.JsonlStore) -> dict:
    """A store's records by resume key, the first of any duplicates."""
    have = {}
    for rec in store.read():
        have.setdefault(_key(rec), rec)
    return have


def _drawn(params: dict, index: int) -> dict:
    """The settings a path records: the run's for a sampled path; the greedy path's do not vary."""
    sampled = index >= 0
    return {"temperature": params["temperature"] if sampled else 0.0, "top_p": params["top_p"] if sampled else 1.0,
            "base_seed": params["seed"] if sampled else None, "max_new_tokens": params["max_new_tokens"]}


def _finish_batch(jobs: list[Job], completions, tag: str, params: dict, store: runs.JsonlStore,
                  pot_timeout: float, progress, lock: threading.Lock) -> None:
    """Answers for one generated batch (the sandbox for PoT programs), then one durable append."""
    flat = [(job, index, c) for job, group in zip(jobs, completions) for index, c in zip(job.indices, group)
            if c is not None]
    ok = [(job, c) for job, _, c in flat if c.error is None]
    scored = iter(answers.score([c.text for _, c in ok], [job.mode for job, _ in ok], timeout=pot_timeout))
    records = []
    for job, index, c in flat:
        s = next(scored) if c.error is None else None
        records.append(Sample(
            problem_id=job.problem.id, mode=job.mode, index=index, text=c.text,
            answer=s.answer if s else None, status=s.status if s else "api_error",
            seed=c.seed if index >= 0 else None, model=tag, tokens=c.tokens, finish=c.finish,
            error=s.error if s else c.error, **_drawn(params, index)))
    with lock:
        store.extend(records)
    progress.update(len(records))


def _generated(engine, jobs: list[Job], rows_per_batch: int, kwargs: dict):
    """(jobs, completions) as they finish: a streaming backend's own pace, else batches of whole jobs."""
    if hasattr(engine, "stream"):
        for finished in engine.stream(jobs, batch_rows=rows_per_batch, **kwargs):
            yield [jobs[j] for j, _ in finished], [c for _, c in finished]
        return
    batch, rows = [], 0
    for job in jobs + [None]:
        if batch and (job is None or rows + len(job.indices) > rows_per_batch):
            yield batch, engine.generate(batch, **kwargs)
            batch, rows = [], 0
        if job is not None:
            batch.append(job)
            rows += len(job.indices)


def sample(model, problems, mode: str, *, k: int, temperature: float, seed: int, run_dir,
           greedy: bool = True, top_p: float = 1.0, max_new_tokens: int = 256, batch_rows: int | None = None,
           pot_timeout: float = 3.0, tag: str | None = None, progress: bool = True) -> list[Sample]:
    """Greedy (index -1) and k sampled paths per problem, appended to ``run_dir/samples.jsonl`` (resumed);
    returns this call's samples, old and new, by problem, greedy first."""
    if mode not in prompts.MODES:
        raise ValueError(f"mode must be one of {prompts.MODES}, got {mode!r}")
    if k > 0 and temperature <= 0:
        raise ValueError("sampled paths need temperature > 0 (greedy=True gives the greedy path)")
    store = runs.JsonlStore(Path(runs.run_dir(run_dir)) / SAMPLES_FILE)
    engine = backend(model, batch_rows=batch_rows or 64, tag=tag)
    params = {"temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_new_tokens),
              "seed": int(seed)}
    indices = ([-1] if greedy else []) + list(range(k))

    def key(problem, index: int) -> tuple:
        return _key({"model": engine.tag, "mode": mode, "problem_id": problem.id, "index": index,
                     **_drawn(params, index)})

    have = _by_key(store)
    jobs = []
    for problem in problems:
        missing = [i for i in indices if key(problem, i) not in have]
        if missing:
            jobs.append(Job(problem, mode, prompts.student_prompt(problem.question, mode), missing,
                            [None if i < 0 else sample_seed(seed, problem.id, mode, i) for i in missing]))
    if jobs:
        jobs.sort(key=lambda job: engine.prompt_length(job.prompt))  # similar lengths: little padding
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(job.indices) for job in jobs), desc=f"{short_tag(engine.tag)} {mode}",
                   unit="path", disable=not progress)
        kwargs = {key: params[key] for key in ("temperature", "top_p", "max_new_tokens")}
        if isinstance(engine, OpenAIBackend):
            kwargs["seed"] = seed
        lock, futures = threading.Lock(), []
        # one worker: answers (the sandbox for PoT) and appends run while generation goes on
        with ThreadPoolExecutor(1) as writer:
            for batch, completions in _generated(engine, jobs, batch_rows or engine.batch_rows, kwargs):
                futures.append(writer.submit(_finish_batch, batch, completions, engine.tag, params, store,
                                             pot_timeout, bar, lock))
                for future in [f for f in futures if f.done()]:
                    future.result()  # surface a failure now, not at the end
            for future in futures:
                future.result()
        bar.close()
        have = _by_key(store)
    missing = [(p.id, i) for p in problems for i in indices if key(p, i) not in have]
    if missing:
        raise RuntimeError(f"{len(missing)} path(s) could not be generated (e.g. {missing[:3]}): the server "
                           "failed after its retries; run sample() again to retry them")
    return [Sample.from_dict(have[key(problem, i)]) for problem in problems for i in indices]


def read_samples(path: str | os.PathLike) -> list[Sample]:
    """The samples of a ``samples.jsonl`` (or of a directory holding one), duplicates dropped."""
    path = Path(path)
    path = path / SAMPLES_FILE if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebooks/04_self_consistency.ipynb first")
    return [Sample.from_dict(rec) for rec in _by_key(runs.JsonlStore(path)).values()]


# ----------------------------------------------------------------------------- voting and acc@k

def _clusters(values: list[float | None]) -> tuple[list[int], list[float]]:
    """Candidate id per path (-1: no vote; ``answers.same`` joins the first such) and each one's answer."""
    reps: list[float] = []
    ids = []
    for value in values:
        same = None if value is None else next((c for c, r in enumerate(reps) if answers.same(value, r)),
                                               None)
        if value is not None and same is None:
            reps.append(value)
            same = len(reps) - 1
        ids.append(-1 if same is None else same)
    return ids, reps


def vote(answers_: Iterable[float | None]) -> float | None:
    """Majority answer: None does not vote, ``answers.same`` pools, ties go to the earliest first path."""
    ids, reps = _clusters(list(answers_))
    # candidates are numbered in order of their first path, so the lower id wins a tie
    return reps[max(range(len(reps)), key=lambda c: (ids.count(c), -c))] if reps else None


def _subsets(n: int, k: int, limit: int, rng, *, random_: bool = False):
    """Index subsets (rows sorted): all C(n, k) when at most ``limit``, else ``limit`` random ones."""
    if not random_ and math.comb(n, k) <= limit:
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    return np.sort(np.argsort(rng.random((limit, n)), axis=1)[:, :k], axis=1)


def _vote_rows(ids, correct):
    """Vectorised ``vote`` over rows of candidate ids in list order: 1.0 / 0.0 correct, NaN no winner."""
    rows, width = ids.shape
    if not correct:
        return np.full(rows, np.nan)
    onehot = ids[:, :, None] == np.arange(len(correct))[None, None, :]
    counts = onehot.sum(1)
    first = np.where(onehot.any(1), onehot.argmax(1), width)
    winner = (counts * (width + 1) - first).argmax(1)
    return np.where(counts.max(1) > 0, np.asarray(correct, float)[winner], np.nan)


def _problem_acc(cot: list, pot: list, gold: float, policy: str, k: int, limit: int, rng) -> float:
    """Mean correctness of the policy's vote over k-subsets of one problem's paths."""
    ids, reps = _clusters(list(pot) + list(cot))
    ids = np.asarray(ids, dtype=np.int64)
    pot_ids, cot_ids = ids[:len(pot)], ids[len(pot):]
    correct = [answers.same(rep, gold) for rep in reps]
    if policy in ("cot", "pot"):
        pool = cot_ids if policy == "cot" else pot_ids
        return float(np.nan_to_num(_vote_rows(pool[_subsets(len(pool), k, limit, rng)], correct)).mean())
    if math.comb(len(pot), k) * math.comb(len(cot), k) <= limit:
        pot_all, cot_all = _subsets(len(pot), k, limit, rng), _subsets(len(cot), k, limit, rng)
        pot_rows, cot_rows = np.repeat(pot_all, len(cot_all), axis=0), np.tile(cot_all, (len(pot_all), 1))
    else:  # independent random halves: k PoT paths and k CoT paths per draw
        pot_rows = _subsets(len(pot), k, limit, rng, random_=True)
        cot_rows = _subsets(len(cot), k, limit, rng, random_=True)
    if policy in ("mixed", "ensemble"):  # ensemble: the same vote over two students' paths
        won = _vote_rows(np.concatenate([pot_ids[pot_rows], cot_ids[cot_rows]], axis=1), correct)
    else:  # pot_then_cot
        won = _vote_rows(pot_ids[pot_rows], correct)
        won = np.where(np.isnan(won), _vote_rows(cot_ids[cot_rows], correct), won)
    return float(np.nan_to_num(won).mean())


def _as_samples(samples) -> list[Sample]:
    if hasattr(samples, "to_dict"):  # a DataFrame
        samples = samples.to_dict("records")
    return [s if isinstance(s, Sample) else Sample.from_dict(s) for s in samples]


def _group(samples, problems, modes, *, sampled: bool) -> dict[str, dict[str, list]]:
    """problem id -> mode -> answers in index order (sampled paths, or the greedy one)."""
    samples = _as_samples(samples)
    stray = sorted({s.problem_id for s in samples} - {p.id for p in problems})
    if stray:
        raise ValueError(f"samples for problems not in `problems`: {stray[:5]}"
                         f"{' ...' if len(stray) > 5 else ''}")
    out: dict[str, dict[str, list]] = {p.id: {m: [] for m in modes} for p in problems}
    for s in sorted(samples, key=lambda s: s.index):
        if s.mode in modes and (s.index >= 0) == sampled:
            out[s.problem_id][s.mode].append(s.answer)
    empty = [pid for pid, by_mode in out.items() if any(not by_mode[m] for m in modes)]
    if empty:
        raise ValueError(f"{len(empty)} problem(s) have no {'sampled' if sampled else 'greedy'} "
                         f"{'/'.join(modes)} paths, e.g. {empty[:3]}; sample them first (evaluate.sample)")
    return out


def _modes(policy: str) -> tuple[str, ...]:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return (policy,) if policy in prompts.MODES else ("cot", "pot")


def _interval(per_problem, bootstrap: int, ci: float, seed: int):
    """Percentile bootstrap over problems: (lo, hi) per column of a [problems, columns] array."""
    per_problem = np.asarray(per_problem, float)
    if bootstrap == 0 or len(per_problem) < 2:
        return per_problem.mean(0), per_problem.mean(0)
    draws = np.random.default_rng(seed).integers(0, len(per_problem), size=(bootstrap, len(per_problem)))
    means, tail = per_problem[draws].mean(1), (1 - ci) / 2 * 100
    return np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def per_problem(samples, problems, *, policy: Policy = "mixed", ks: Sequence[int] | None = None,
                greedy: bool = False, n_subsets: int = 200, seed: int = 0):
    """Each problem's correctness (rows: problem ids; a column per k): acc@k over k-subsets, or with
    ``greedy`` one 0/1 column from the greedy paths (PoT first, as in ``mixed`` / ``pot_then_cot``)."""
    modes = _modes(policy)
    grouped = _group(samples, problems, modes, sampled=not greedy)
    n_min = min(len(by_mode[m]) for by_mode in grouped.values() for m in modes)
    ks = [1] if greedy else list(ks) if ks is not None else list(range(1, n_min + 1))
    if not ks or min(ks) < 1 or max(ks) > n_min:
        raise ValueError(f"ks must lie in 1..{n_min} (the fewest sampled paths of any problem), got {ks}")
    gold = {p.id: p.answer for p in problems}
    table = np.empty((len(grouped), len(ks)))
    for j, k in enumerate(ks):
        rng = np.random.default_rng([seed, k])  # the subsets at k do not depend on the other ks asked for
        for i, (pid, by_mode) in enumerate(grouped.items()):
            table[i, j] = _problem_acc(by_mode.get("cot", []), by_mode.get("pot", []), gold[pid], policy, k,
                                       n_subsets, rng)
    return pd.DataFrame(table, index=pd.Index(list(grouped), name="problem_id"), columns=ks)


def acc_at_k(samples, problems, *, policy: Policy = "mixed", ks: Sequence[int] | None = None,
             n_subsets: int = 200, seed: int = 0, bootstrap: int = 1000, ci: float = 0.95):
    """Accuracy vs k (paths per mode) for one policy: DataFrame with k, acc, lo, hi, n (problems)."""
    table = per_problem(samples, problems, policy=policy, ks=ks, n_subsets=n_subsets, seed=seed)
    lo, hi = _interval(table.to_numpy(), bootstrap, ci, seed)
    return pd.DataFrame({"k": list(table.columns), "acc": table.mean(0).to_numpy(), "lo": lo, "hi": hi,
                         "n": len(table)})


def greedy_accuracy(samples, problems, *, policies: Sequence[str] = GREEDY,
                    bootstrap: int = 1000, ci: float = 0.95, seed: int = 0):
    """Single-path (greedy) accuracy per policy present: DataFrame with policy, acc, lo, hi, n."""
    samples = _as_samples(samples)
    present = {s.mode for s in samples if s.index < 0}
    rows = []
    for policy in [p for p in policies if set(_modes(p)) <= present]:
        hits = per_problem(samples, problems, policy=policy, greedy=True)
        lo, hi = _interval(hits.to_numpy(), bootstrap, ci, seed)
        rows.append({"policy": policy, "acc": float(hits[1].mean()), "lo": float(lo[0]), "hi": float(hi[0]),
                     "n": len(hits)})
    return pd.DataFrame(rows, columns=["policy", "acc", "lo", "hi", "n"])


def curves(samples, problems, *, policies: Sequence[str] = STUDENT_POLICIES, ks: Sequence[int] | None = None,
           n_subsets: int = 200, seed: int = 0, bootstrap: int = 1000, ci: float = 0.95):
    """acc@k for every policy whose modes have sampled paths: DataFrame with policy, k, acc, lo, hi, n."""
    samples = _as_samples(samples)
    present = {s.mode for s in samples if s.index >= 0}
    frames = [acc_at_k(samples, problems, policy=policy, ks=ks, n_subsets=n_subsets, seed=seed,
                       bootstrap=bootstrap, ci=ci).assign(policy=policy)
              for policy in policies if set(_modes(policy)) <= present]
    return _frame(frames, ["policy", "k", "acc", "lo", "hi", "n"])


def _frame(frames: list, columns: list[str]):
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


# ----------------------------------------------------------------------------- paired statistics

def _paired(a, b):
    """Two per-problem vectors as aligned float arrays (pandas objects are aligned on problem id)."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if set(a.index) != set(b.index):
            raise ValueError("a paired comparison needs the same problems on both sides")
        b = b.reindex(a.index)
    a, b = np.asarray(a, float).reshape(-1), np.asarray(b, float).reshape(-1)
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a paired comparison needs two vectors over the same problems: {len(a)}, {len(b)}")
    return a, b


def paired_bootstrap(a, b, *, bootstrap: int = 1000, ci: float = 0.95, seed: int = 0):
    """(diff, lo, hi) of mean(a) - mean(b) in points; a, b per-problem correctness, resampled jointly."""
    a, b = _paired(a, b)
    lo, hi = _interval((a - b)[:, None], bootstrap, ci, seed)
    return 100 * float((a - b).mean()), 100 * float(lo[0]), 100 * float(hi[0])


def mcnemar(a_correct, b_correct) -> float:
    """McNemar's exact two-sided p for two single paths (0/1 per problem): binomial test, discordant pairs."""
    from scipy.stats import binomtest

    a, b = _paired(a_correct, b_correct)
    if not (((a == 0) | (a == 1)) & ((b == 0) | (b == 1))).all():
        raise ValueError("McNemar's test needs 0/1 correctness per problem (single paths, not acc@k)")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


# ----------------------------------------------------------------------------- students (notebooks 04-05)

def summary(samples):
    """Per mode and kind (greedy / sampled): paths, share with an answer, share ended by EOS, mean tokens."""
    frame = pd.DataFrame([dataclasses.asdict(s) for s in _as_samples(samples)])
    if frame.empty:
        return frame
    frame["kind"] = frame["index"].map(lambda i: "greedy" if i < 0 else "sampled")
    frame["student"] = frame["model"].map(short_tag)
    return frame.groupby(["student", "mode", "kind"], sort=False).agg(
        paths=("text", "size"), answered=("answer", lambda a: a.notna().mean()),
        eos=("finish", lambda f: (f == "eos").mean()), tokens=("tokens", "mean")).reset_index().round(2)


def select(samples, config: EvalConfig, *, model: str | None = None, problems=None) -> list[Sample]:
    """The samples a config asked for (seed, temperature, top_p, max_new_tokens), of one model and
    problems: a samples file can hold several runs (another temperature, a retrained student)."""
    wanted = None if problems is None else {p.id for p in problems}
    return [s for s in _as_samples(samples)
            if (model is None or s.model == model) and (wanted is None or s.problem_id in wanted)
            and s.max_new_tokens == config.max_new_tokens
            and (s.index < 0 or (s.temperature, s.top_p, s.base_seed)
                 == (config.temperature, config.top_p, config.seed))]


def _with_ensemble(by_student: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    """Add ``ENSEMBLE``: the CoT-only student's CoT paths with the PoT-only student's PoT paths."""
    if "cot" in by_student and "pot" in by_student:
        by_student[ENSEMBLE] = ([s for s in by_student["cot"] if s.mode == "cot"]
                                + [s for s in by_student["pot"] if s.mode == "pot"])
    return by_student


def student_samples(run_dir: str | os.PathLike, problems, config: EvalConfig) -> dict[str, list[Sample]]:
    """student name -> its samples of this config on these problems (``select``), and ``ENSEMBLE``.
    A student without a samples file yet is left out with a warning."""
    by_student = {}
    for student_dir in students(run_dir):
        if not (student_dir / SAMPLES_FILE).exists():
            warnings.warn(f"{student_dir.name}: no {SAMPLES_FILE} yet (notebook 04): left out", stacklevel=2)
            continue
        by_student[student_dir.name] = select(read_samples(student_dir), config,
                                              model=_student_tag(student_dir), problems=problems)
    return _with_ensemble(by_student)


def _policies(student: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sampled, greedy) policies of a student. The ensemble's single path is the PoT-only student's
    program, else the CoT-only student's CoT: ``pot_then_cot`` over the pair."""
    return (("ensemble",), ("pot_then_cot",)) if student == ENSEMBLE else (STUDENT_POLICIES, GREEDY)


def evaluate_students(run_dir: str | os.PathLike, problems, config: EvalConfig, *,
                      ks: Sequence[int] | None = None):
    """(curves, greedy) DataFrames over every student's samples and ``ENSEMBLE``, with a student column."""
    stats = {"bootstrap": config.bootstrap, "ci": config.ci, "seed": config.seed}
    curve_frames, greedy_frames = [], []
    for name, samples in student_samples(run_dir, problems, config).items():
        sampled, single = _policies(name)
        if any(s.index >= 0 for s in samples):
            curve_frames.append(curves(samples, problems, policies=sampled, ks=ks, n_subsets=config.n_subsets,
                                       **stats).assign(student=name))
        greedy = greedy_accuracy(samples, problems, policies=single, **stats)
        greedy_frames.append(greedy.assign(student=name))
    return (_frame(curve_frames, ["student", "policy", "k", "acc", "lo", "hi", "n"]),
            _frame(greedy_frames, ["student", "policy", "acc", "lo", "hi", "n"]))


# ----------------------------------------------------------------------------- claims, results.json

# The run's claims, fixed before any test set is seen: (a, b), each "student/greedy_<policy>" (its greedy
# path) or "student/<policy>@<k>" (acc@k); k "K" is the largest k that side sampled, a number is capped at
# the paths both sides have. mixed@K is set against greedy PoT, fixed in advance: picking MD's best greedy
# policy after seeing the test set would bias the difference upwards.
CLAIMS = (
    ("md/greedy_pot", "pot/greedy_pot"),  # one program: MD vs the PoT-only student
    ("md/greedy_cot", "cot/greedy_cot"),  # one CoT: MD vs the CoT-only student
    ("md/greedy_pot_then_cot", "pot/greedy_pot"),  # MD with its CoT fallback vs the PoT-only student
    ("md/mixed@K", "md/greedy_pot"),  # what voting adds
    ("md/mixed@8", f"{ENSEMBLE}/ensemble@8"),  # one MD student vs two separately distilled ones
    ("md/greedy_pot_then_cot", "base/greedy_pot_then_cot"),  # what distillation adds to the untrained model
)


def _sampled_paths(samples, problems, policy: str) -> int:
    """The fewest sampled paths any problem has in the policy's modes (0 when some have none)."""
    try:
        grouped = _group(samples, problems, _modes(policy), sampled=True)
    except ValueError:
        return 0
    return min(len(paths) for by_mode in grouped.values() for paths in by_mode.values())


def comparisons(run_dir: str | os.PathLike, problems, config: EvalConfig, *,
                claims: Sequence[tuple[str, str]] = CLAIMS) -> list[dict]:
    """``claims`` as paired differences a - b (points, bootstrap; p_mcnemar for two single paths),
    k resolved; a claim whose students or paths are missing is left out."""
    by_student = student_samples(run_dir, problems, config)
    out = []
    for claim in claims:
        sides = []  # (student, policy, k: None = greedy, "K" or a cap)
        for name in claim:
            student, what = name.split("/", 1)
            policy, want = (what[len("greedy_"):], None) if what.startswith("greedy_") else what.split("@")
            _modes(policy)  # a misspelt claim fails here, not silently
            sides.append((student, policy, want))
        if any(student not in by_student for student, _, _ in sides):
            continue
        have = {i: _sampled_paths(by_student[student], problems, policy)
                for i, (student, policy, want) in enumerate(sides) if want is not None}
        if 0 in have.values():
            continue
        names, vectors = [], []
        try:
            for i, (student, policy, want) in enumerate(sides):
                if want is None:
                    names.append(f"{student}/greedy_{policy}")
                    vectors.append(per_problem(by_student[student], problems, policy=policy, greedy=True)[1])
                    continue
                k = have[i] if want == "K" else min(int(want), *have.values())
                names.append(f"{student}/{policy}@{k}")
                vectors.append(per_problem(by_student[student], problems, policy=policy, ks=[k],
                                           n_subsets=config.n_subsets, seed=config.seed)[k])
        except ValueError:  # a side without the greedy paths it needs
            continue
        diff, lo, hi = paired_bootstrap(*vectors, bootstrap=config.bootstrap, ci=config.ci, seed=config.seed)
        row = {"a": names[0], "b": names[1], "diff": diff, "lo": lo, "hi": hi, "n_problems": len(vectors[0])}
        if all(want is None for _, _, want in sides):
            row["p_mcnemar"] = mcnemar(*vectors)
        out.append(row)
    return out


def results(curves, greedy, comparisons_: Sequence[dict] = (), transfer=None) -> dict:
    """``results.json``'s shape: rows in percent (greedy: ``greedy_<policy>``, k 1; transfer: + dataset)."""
    def row(r, policy: str, k, **extra) -> dict:
        return {"student": r["student"], "policy": policy, "k": int(k), "n_problems": int(r["n"]),
                "accuracy": 100 * float(r["acc"]), "lo": 100 * float(r["lo"]), "hi": 100 * float(r["hi"]),
                **extra}

    rows = [row(r, f"greedy_{r['policy']}", 1) for _, r in greedy.iterrows()]
    rows += [row(r, r["policy"], r["k"]) for _, r in curves.iterrows()]
    if transfer is not None:
        rows += [row(r, f"greedy_{r['policy']}", 1, dataset=r["dataset"]) for _, r in transfer.iterrows()]
    return {"rows": rows, "comparisons": [dict(c) for c in comparisons_]}


def read_results(run_dir: str | os.PathLike):
    """(rows, comparisons) DataFrames from a run's ``results.json`` (written by ``plots.write_report``)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebooks/05_results.ipynb first")
    blob = json.loads(path.read_text())
    columns = ["a", "b", "diff", "lo", "hi"]  # first, then what else claims carry (n_problems, p_mcnemar)
    columns += sorted({key for claim in blob["comparisons"] for key in claim} - set(columns))
    return pd.DataFrame(blob["rows"]), pd.DataFrame(blob["comparisons"], columns=columns)


# ----------------------------------------------------------------------------- transfer sets

def transfer_accuracy(run_dir: str | os.PathLike, config: EvalConfig):
    """The generality table: greedy accuracy of every student (and ``ENSEMBLE``) on every transfer set
    it has decoded: DataFrame with student, dataset, policy, acc, lo, hi, n."""
    frames = []
    for spec in config.transfer:
        name = spec.split(":")[0]
        problems = transfer_problems(spec, config.transfer_limit)
        by_student = {d.name: select(read_samples(d / "transfer" / name), config, model=_student_tag(d),
                                     problems=problems)
                      for d in students(run_dir) if (d / "transfer" / name / SAMPLES_FILE).exists()}
        for student, samples in _with_ensemble(by_student).items():
            frame = greedy_accuracy(samples, problems, policies=_policies(student)[1],
                                    bootstrap=config.bootstrap, ci=config.ci, seed=config.seed)
            frames.append(frame.assign(student=student, dataset=name))
    return _frame(frames, ["student", "dataset", "policy", "acc", "lo", "hi", "n"])


# ----------------------------------------------------------------------------- the teacher's own votes

def teacher_samples(rationales, *, shuffle_seed: int | None = 0) -> list[Sample]:
    """Recorded teacher rationales as sampled paths, indexed in a seeded shuffle (None: recorded order,
    which may be informative: MCC-KD's first CoT is right far more often than its last)."""
    by_problem = collections.defaultdict(list)
    for r in sorted(rationales, key=lambda r: r.sample):
        by_problem[r.problem_id].append(r)
    out = []
    for pid, group in by_problem.items():
        if shuffle_seed is not None:
            random.Random(sample_seed(shuffle_seed, pid, group[0].mode, 0)).shuffle(group)
        out += [Sample(pid, r.mode, i, r.text, r.answer, r.status, None, r.teacher, 0)
                for i, r in enumerate(group)]
    return out


def teacher_curve(rationales, problems, *, n: int | None = None, shuffle_seed: int | None = 0, seed: int = 0,
                  bootstrap: int = 1000, ci: float = 0.95):
    """acc@k (k = 1..n, every k-subset) of a teacher's recorded samples of one mode, over the problems
    with at least n of them (n: the most any problem has): ``acc_at_k``'s DataFrame, with ``policy``."""
    samples = teacher_samples(rationales, shuffle_seed=shuffle_seed)
    modes = {s.mode for s in samples}
    if len(modes) != 1:
        raise ValueError(f"teacher_curve takes rationales of one mode, got {sorted(modes)}")
    counts = collections.Counter(s.problem_id for s in samples)
    n = n or max(counts.values())
    kept = [p for p in problems if counts[p.id] >= n]
    ids = {p.id for p in kept}  # acc_at_k refuses paths of problems it is not given
    samples = [s for s in samples if s.problem_id in ids and s.index < n]
    policy = modes.pop()
    return acc_at_k(samples, kept, policy=policy, n_subsets=math.comb(n, n // 2), seed=seed,
                    bootstrap=bootstrap, ci=ci).assign(policy=policy)

"""Teacher backends and ``generate``: CoT and PoT rationales for every problem, kept on disk.

Backends (``Teacher``): ``OpenAICompatible`` (any OpenAI-style server, ``mdlab/openai_compat.py``),
``HFLocal`` (a transformers model in this process), ``Recorded`` (published outputs, ``mdlab/recorded.py``)
and ``Annotations`` (gold rationales from the datasets' derivations, ``mdlab/gold.py``). ``generate``
appends each cleaned and scored answer (``answers.score``) to ``run_dir/rationales.jsonl`` at once, keyed
by a hash of everything that determines it: a rerun makes no teacher call, and a killed run resumes with
nothing lost or written twice. Requests that fail after every retry are not written: ``generate`` raises
``TeacherError`` naming them once the rest is saved. ``TeacherConfig`` is a profile's ``teacher`` section;
``table``, ``summary`` and ``side_by_side`` show the results."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol, Sequence

from mdlab import answers, data, gold, prompts, recorded, runs
from mdlab.data import Problem

RATIONALES_FILE = "rationales.jsonl"
CHAT_API = ("chat", "completions")
# "no_answer": a CoT without a number, or a program that sets none; "no_code": PoT text with no program in it;
# then the sandbox's statuses; "api_error": the server refused this one request (e.g. a prompt too long).
STATUSES = ("ok", "no_answer", "no_code", "error", "timeout", "memory", "forbidden", "api_error")


class TeacherError(RuntimeError):
    """A teacher cannot be built or used (missing key, unknown source, a server refusing access)."""


@dataclasses.dataclass
class Rationale:
    id: str  # unique and stable: derived from the cache key (teacher, prompt, mode, params, seed, sample)
    problem_id: str  # Problem.id it answers
    mode: str  # "cot" | "pot"
    text: str  # cleaned rationale: CoT text, or the PoT program
    teacher: str  # teacher name, e.g. "recorded:svamp-palm-cot", "openai:gpt-4o-mini"
    sample: int  # sample index 0..n-1 for this problem, mode and teacher
    answer: float | None  # CoT: answers.extract(text); PoT: the sandbox's answer
    status: str  # one of STATUSES: why a rationale has no usable answer
    dataset: str = ""  # Problem.dataset
    raw: str | None = None  # raw teacher output before cleaning (None when identical)
    prompt_hash: str | None = None  # sha256 of the prompt that produced it
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # temperature, max_tokens, ...
    seed: int | None = None  # sampling seed
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)  # prompt / completion tokens
    cost: float = 0.0  # USD, from the user's price table
    error: str | None = None  # error text when status is not ok
    finish_reason: str | None = None  # "stop" | "length" (truncated) | None (unknown / recorded)
    created: float = 0.0  # unix time the record was written

    @classmethod
    def from_dict(cls, record: dict) -> "Rationale":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


@dataclasses.dataclass
class Request:
    """What generate asks a teacher for: the missing samples of one problem and mode."""

    problem: Problem
    mode: str
    samples: list[int]  # sample indices still missing (0..n-1)
    temperature: float
    max_tokens: int
    seed: int


@dataclasses.dataclass
class Completion:
    """One raw teacher answer, before cleaning, execution and writing."""

    problem_id: str
    mode: str
    sample: int
    raw: str | None  # None: the request failed (see ``failed``)
    text: str | None = None  # already-cleaned text, when the backend knows better than generic cleaning
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)  # prompt / completion tokens
    cost: float = 0.0  # USD
    finish_reason: str | None = None  # "stop" | "length" | None (unknown)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # request details (request_seed, ...)
    status: str | None = None  # set by the backend only for api_error
    error: str | None = None  # why it failed or was refused
    failed: bool = False  # transport failure after all retries: not written, retried by a rerun


class Teacher(Protocol):
    """A source of rationales. ``generate`` is the only caller; backends need these members."""

    name: str  # stable name, part of every cache key ("openai:gpt-4o-mini", "recorded:svamp-palm-cot")
    live: bool  # True: samples depend on temperature/seed; False: fixed outputs (recorded, gold)

    def supports(self, mode: str) -> bool: ...
    def prompt_hash(self, problem: Problem, mode: str) -> str: ...
    def key_params(self, *, temperature: float, max_tokens: int) -> dict: ...  # the sampling part of the key
    def available(self, problem: Problem, mode: str) -> int | None: ...  # samples held (None: any number)
    def run(self, requests: list[Request]) -> Iterator[list[Completion]]: ...  # chunks, each as soon as done


def __getattr__(name: str) -> Any:
    if name == "OpenAICompatible":  # loaded on first use: mdlab.openai_compat builds on this module
        from mdlab.openai_compat import OpenAICompatible

        return OpenAICompatible
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sha(*parts: Any) -> str:
    return prompts.prompt_hash(list(parts))


def cache_key(teacher: str, prompt_hash: str, mode: str, problem_id: str, params: dict, seed: int | None,
              sample: int) -> str:
    """The record id: everything that determines a rationale, hashed (params in canonical order)."""
    return _sha("rationale-v1", teacher, prompt_hash, mode, problem_id, params, seed, sample)[:24]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed derived from a base seed and labels (the same inputs give the same seed)."""
    return int(_sha("seed", seed, *parts)[:8], 16) & 0x7FFFFFFF


def clean_cot(text: str) -> str:
    """A CoT as the student should see it: no run-on into the next exemplar, no echoed 'A:'."""
    text = answers.cut_run_on(text or "").strip()
    return text[2:].lstrip() if text.startswith("A:") else text


class HFLocal:
    """A transformers causal LM in this process, decoded by ``generation.HFBackend`` like the students.

    ``model``: anything ``models.resolve`` takes ("embedded", "tiny", a hub id, a path); ``chat``: use the
    tokenizer's chat template (None = when it has one); ``batch_size``: prompts decoded at once. A prompt's n
    samples share one prefill; each has its own seed (``generation.sample_seed``, recorded as
    ``params.request_seed``), so it does not depend on batching.
    """

    def __init__(self, model: str = "embedded", *, batch_size: int = 8, chat: bool | None = None,
                 name: str | None = None, shots: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name, self.batch_size, self.chat, self.shots = str(model), batch_size, chat, shots
        self.name = name or f"hf:{self.model_name}"
        self.live = True
        self._engine = None

    def __repr__(self) -> str:
        return f"HFLocal(model={self.model_name!r}, batch_size={self.batch_size})"

    def engine(self):
        """The ``generation.HFBackend`` over this model, made once."""
        if self._engine is None:
            from mdlab import generation, models

            model, tokenizer = models.load(self.model_name, quant="none")
            # a chat template writes its own BOS
            self._engine = generation.HFBackend(model, tokenizer, self.name,
                                                special_tokens=not self._use_chat())
        return self._engine

    def _use_chat(self) -> bool:
        if self.chat is None:
            from mdlab import models

            self.chat = bool(getattr(models.load_tokenizer(self.model_name), "chat_template", None))
        return self.chat

    def supports(self, mode: str) -> bool:
        return mode in prompts.MODES

    def prompt(self, problem: Problem, mode: str) -> str | list[dict]:
        if self._use_chat():
            return prompts.teacher_messages(problem.question, mode, shots=self.shots)
        return prompts.teacher_completion(problem.question, mode, shots=self.shots)

    def prompt_hash(self, problem: Problem, mode: str) -> str:
        return prompts.prompt_hash(self.prompt(problem, mode))

    def key_params(self, *, temperature: float, max_tokens: int) -> dict:
        return {"temperature": temperature, "max_tokens": max_tokens,
                "api": "chat" if self._use_chat() else "completions"}

    def available(self, problem: Problem, mode: str) -> int | None:
        return None

    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        from mdlab import generation

        engine = self.engine()
        groups: dict[tuple, list[Request]] = defaultdict(list)
        for req in requests:  # one decode stream per mode (its stop strings) and sampling parameters
            groups[(req.mode, req.temperature, req.max_tokens)].append(req)
        for (mode, temperature, max_tokens), reqs in groups.items():
            jobs = []
            for r in reqs:
                prompt = self.prompt(r.problem, mode)
                if not isinstance(prompt, str):
                    prompt = engine.tokenizer.apply_chat_template(prompt, tokenize=False,
                                                                  add_generation_prompt=True)
                seeds = [generation.sample_seed(r.seed, r.problem.id, mode, s) if temperature > 0 else None
                         for s in r.samples]
                jobs.append(generation.Job(r.problem, mode, prompt, list(r.samples), seeds))
            jobs.sort(key=lambda job: engine.prompt_length(job.prompt))  # similar lengths: little padding
            stop = () if self._use_chat() else prompts.STOP[mode]
            rows = self.batch_size * max(len(job.seeds) for job in jobs)
            for finished in engine.stream(jobs, temperature=temperature, top_p=1.0, max_new_tokens=max_tokens,
                                          stop=stop, batch_rows=rows):
                chunk = []
                for j, completions in finished:
                    job = jobs[j]
                    prompt_tokens = engine.prompt_length(job.prompt)
                    for slot, (sample, c) in enumerate(zip(job.indices, completions)):
                        chunk.append(Completion(
                            job.problem.id, mode, sample, raw=c.text,
                            tokens={"prompt": prompt_tokens if slot == 0 else 0, "completion": c.tokens},
                            finish_reason="length" if c.finish == "length" else "stop",
                            params={"request_seed": c.seed, "request_n": len(completions)}))
                yield chunk


class _Replay:
    """A teacher that replays fixed texts: sample i is its i-th text for a problem (no sampling parameters)."""

    live = False

    def texts(self, problem: Problem, mode: str) -> list[tuple[str, str | None]]:
        raise NotImplementedError  # [(raw, cleaned text or None)]

    def available(self, problem: Problem, mode: str) -> int | None:
        return len(self.texts(problem, mode)) if self.supports(mode) else 0

    def coverage(self, problems: Sequence[Problem]) -> tuple[int, int]:
        """(problems covered, problems missed) in the teacher's mode(s)."""
        covered = sum(1 for p in problems if any(self.available(p, m) for m in prompts.MODES))
        return covered, len(problems) - covered

    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        for start in range(0, len(requests), 200):
            yield [Completion(req.problem.id, req.mode, s, raw=texts[s][0], text=texts[s][1], params=self.params)
                   for req in requests[start:start + 200] for texts in [self.texts(req.problem, req.mode)]
                   for s in req.samples if s < len(texts)]


class Recorded(_Replay):
    """Published teacher outputs (``recorded.SOURCES``); ``unmatched`` counts source rows of no known problem."""

    def __init__(self, source: str):
        if source not in recorded.SOURCES:
            raise TeacherError(f"unknown recorded source {source!r}; known: {', '.join(recorded.SOURCES)}")
        self.source, self.spec, self.name = source, recorded.SOURCES[source], f"recorded:{source}"
        self.mode, self.params = self.spec["mode"], {"source": source}
        self._rows: dict[str, list[tuple[str, str | None]]] | None = None
        self.unmatched = 0

    def __repr__(self) -> str:
        return f"Recorded({self.source!r})"

    @property
    def rows(self) -> dict[str, list[tuple[str, str | None]]]:
        if self._rows is None:
            self._rows, self.unmatched = recorded.load(self.source)
        return self._rows

    def texts(self, problem: Problem, mode: str) -> list[tuple[str, str | None]]:
        return self.rows.get(problem.id, []) if mode == self.mode else []

    def supports(self, mode: str) -> bool:
        return mode == self.mode

    def prompt_hash(self, problem: Problem, mode: str) -> str:
        return _sha("recorded-v1", self.source, [data.SOURCES[f]["sha256"] for f in self.spec["files"]])

    def key_params(self, *, temperature: float, max_tokens: int) -> dict:
        return dict(self.spec["params"])


class Annotations(_Replay):
    """Gold rationales written from each dataset's own derivation (``gold.rationale``): a perfect teacher."""

    name, params = "annotations", {}

    def __repr__(self) -> str:
        return "Annotations()"

    def texts(self, problem: Problem, mode: str) -> list[tuple[str, str | None]]:
        text = gold.rationale(problem, mode)
        return [] if text is None else [(text, text)]

    def supports(self, mode: str) -> bool:
        return mode in prompts.MODES

    def prompt_hash(self, problem: Problem, mode: str) -> str:
        return _sha("annotations-v1", mode)

    def key_params(self, *, temperature: float, max_tokens: int) -> dict:
        return {}


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'recorded:svamp-palm-cot' | 'hf:embedded' | 'openai:MODEL[@BASE_URL]' | 'annotations' -> (kind, arg, url)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a teacher spec is a non-empty string, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    kind, url = kind.lower(), None
    if kind == "recorded" and rest not in recorded.SOURCES:
        raise ValueError(f"teacher spec {spec!r}: unknown recorded source {rest!r}; known: {', '.join(recorded.SOURCES)}")
    if kind == "openai":
        model, _, maybe_url = rest.rpartition("@")
        if model and maybe_url.startswith(("http://", "https://")):
            rest, url = model, maybe_url
        if not rest:
            raise ValueError(f"teacher spec {spec!r}: name the model, e.g. openai:gpt-4o-mini")
    if kind not in ("annotations", "recorded", "hf", "openai"):
        raise ValueError(f"teacher spec {spec!r}: unknown kind {kind!r}; use recorded:<source>, hf:<model>, "
                         "openai:<model>[@<base_url>] or annotations")
    return kind, rest or {"annotations": "gold", "hf": "embedded"}.get(kind, rest), url


def spec_modes(spec: str) -> tuple[str, ...]:
    kind, arg, _ = parse_spec(spec)
    return (recorded.SOURCES[arg]["mode"],) if kind == "recorded" else prompts.MODES


def from_spec(spec: str, *, concurrency: int = 8, api: str = "chat", prices=None, timeout: float = 60.0,
              batch_size: int = 8, api_key_env: str = "OPENAI_API_KEY", shots: int | None = None) -> Teacher:
    """A teacher from a spec string (see ``parse_spec``); options go to the backend that takes them."""
    kind, arg, url = parse_spec(spec)
    if kind in ("recorded", "annotations"):
        return Recorded(arg) if kind == "recorded" else Annotations()
    if kind == "hf":
        return HFLocal(arg, batch_size=batch_size, shots=shots)
    from mdlab.openai_compat import OpenAICompatible

    return OpenAICompatible(arg, base_url=url, api_key_env=api_key_env, concurrency=concurrency, api=api,
                            prices=prices, timeout=timeout, shots=shots)


@dataclasses.dataclass
class TeacherConfig:
    # Teacher specs: "recorded:<source>" (recorded_teachers.json), "annotations", "hf:<model>" (embedded | tiny |
    # hub id | path), "openai:<model>[@<base_url>]" (key from $OPENAI_API_KEY unless the URL is loopback).
    cot: list[str] = dataclasses.field(default_factory=lambda: ["recorded:svamp-palm-cot"])  # CoT teachers
    pot: list[str] = dataclasses.field(default_factory=lambda: ["recorded:svamp-codex-pot"])  # PoT teachers
    n: int = 1  # samples per problem and mode (live teachers; recorded ones replay at most that many)
    temperature: float = 0.0  # sampling temperature (live teachers)
    seed: int = 0  # sampling seed
    live: list[str] = dataclasses.field(default_factory=list)  # teachers called live, both modes, on a few problems
    live_problems: int = 3  # how many (the first N training problems) the `live` teachers answer
    max_tokens: int = 256  # new tokens per rationale (live teachers)
    concurrency: int = 8  # requests in flight per OpenAI-compatible teacher
    api: Literal["chat", "completions"] = "chat"  # OpenAI-compatible endpoint: chat messages or one text prompt
    prices: str | dict | None = None  # USD per 1M tokens: {model: {input, output}} or a YAML/JSON file path
    timeout: float = 60.0  # seconds an HTTP request may take before it is retried
    batch_size: int = 8  # prompts per forward pass (hf teachers)
    shots: int | None = None  # few-shot exemplars per live prompt (None = all 8; fewer = faster on a CPU)

    def __post_init__(self):
        for field in ("cot", "pot", "live"):
            specs = [getattr(self, field)] if isinstance(getattr(self, field), str) else getattr(self, field)
            if not isinstance(specs, list):
                raise ValueError(f"teacher.{field} must be a list of teacher specs, got {type(specs).__name__}")
            setattr(self, field, specs)
            for spec in specs:
                try:
                    modes = spec_modes(spec)
                except ValueError as exc:
                    raise ValueError(f"teacher.{field}: {exc}") from None
                if field in ("cot", "pot") and field not in modes:
                    raise ValueError(f"teacher.{field}: {spec!r} writes only {'/'.join(modes)} rationales")
                source = recorded.SOURCES.get(parse_spec(spec)[1], {}) if spec.startswith("recorded:") else {}
                if source.get("evaluation_only"):
                    raise ValueError(f"teacher.{field}: {spec!r} covers only the {source['dataset']} {source['split']} "
                                     "split: the leakage filter would drop every rationale it gives")
        # recorded and annotation teachers replay what they hold: n counts their stored samples, at any temperature
        called = [s for s in self.cot + self.pot + self.live if parse_spec(s)[0] in ("hf", "openai")]
        checks = [(self.n >= 1, f"teacher.n must be >= 1, got {self.n}"),
                  (self.temperature >= 0, f"teacher.temperature must be >= 0, got {self.temperature}"),
                  (self.n == 1 or self.temperature > 0 or not called, f"teacher.n > 1 needs teacher.temperature > 0 "
                   f"for the live teacher(s) {called} (greedy samples are all the same)"),
                  (self.shots is None or 0 <= self.shots <= len(prompts.EXEMPLARS),
                   f"teacher.shots must be 0..{len(prompts.EXEMPLARS)} or null, got {self.shots}"),
                  (self.live_problems >= 0, f"teacher.live_problems must be >= 0, got {self.live_problems}"),
                  (min(self.max_tokens, self.concurrency, self.batch_size) >= 1,
                   "teacher.max_tokens, concurrency and batch_size must be >= 1"),
                  (self.api in CHAT_API, f"teacher.api must be one of {CHAT_API}, got {self.api!r}"),
                  (self.timeout > 0, f"teacher.timeout must be > 0, got {self.timeout}"),
                  (isinstance(self.prices, (str, dict, type(None))),
                   f"teacher.prices must be a mapping or a file path, got {type(self.prices).__name__}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if isinstance(self.prices, dict):
            from mdlab.openai_compat import load_prices

            try:
                load_prices(self.prices)
            except TeacherError as exc:
                raise ValueError(f"teacher.prices: {exc}") from None

    def teacher(self, spec: str) -> Teacher:
        """The teacher for one spec, with this config's options."""
        return from_spec(spec, concurrency=self.concurrency, api=self.api, prices=self.prices,
                         timeout=self.timeout, batch_size=self.batch_size, shots=self.shots)


def _records_by_id(store: runs.JsonlStore) -> dict[str, dict]:
    return {r["id"]: r for r in store.read() if isinstance(r, dict) and "id" in r}


def load(run_dir: str | os.PathLike) -> list[Rationale]:
    """Every rationale in ``run_dir/rationales.jsonl`` (one per id, in file order)."""
    return [Rationale.from_dict(r) for r in _records_by_id(runs.JsonlStore(Path(run_dir) / RATIONALES_FILE)).values()]


def generate(teacher: Teacher | str, problems: Sequence[Problem], mode: str, *, n: int = 1,
             temperature: float = 0.0, seed: int = 0, run_dir: str | os.PathLike, max_tokens: int = 256,
             progress: bool = True, exec_timeout: float = 3.0) -> list[Rationale]:
    """Rationales of one teacher for problems x n samples in one mode, cached in ``run_dir``.

    Returns one ``Rationale`` per (problem, sample) the teacher covers, in problem then sample order:
    those already in ``run_dir/rationales.jsonl`` (no teacher call) and the new ones, each appended as
    soon as it is done. A recorded teacher yields at most the samples its source has, and nothing
    (with a warning) for problems it does not cover.
    """
    teacher = from_spec(teacher) if isinstance(teacher, str) else teacher
    problems = list(problems)
    for ok, message in [(mode in prompts.MODES, f"mode must be one of {prompts.MODES}, got {mode!r}"),
                        (n >= 1 and max_tokens >= 1, f"n and max_tokens must be >= 1, got {n} and {max_tokens}"),
                        (temperature >= 0, f"temperature must be >= 0, got {temperature}"),
                        (not (teacher.live and n > 1 and temperature == 0), f"n={n} samples with temperature 0 "
                         "would all be the same greedy answer; set temperature > 0 (e.g. 0.7) or n=1"),
                        (bool(problems), "generate() got no problems; check the dataset split and limit "
                         "(data.load(name, split, limit=...)) that produced the list")]:
        if not ok:
            raise ValueError(message)
    if not teacher.supports(mode):
        raise ValueError(f"{teacher.name} does not write {mode} rationales")
    by_id = {p.id: p for p in reversed(problems)}  # the first of duplicate ids wins
    by_id = {pid: by_id[pid] for pid in dict.fromkeys(p.id for p in problems)}
    if len(by_id) < len(problems):
        warnings.warn(f"{len(problems) - len(by_id)} duplicate problem ids ignored", stacklevel=2)
    run_dir = runs.run_dir(run_dir)
    store = runs.JsonlStore(run_dir / RATIONALES_FILE)
    existing = _records_by_id(store)

    params = teacher.key_params(temperature=temperature, max_tokens=max_tokens)
    key_seed = seed if teacher.live else None
    plan: dict[tuple[str, int], tuple[str, str]] = {}  # (problem, sample) -> (key, prompt hash), in return order
    requests: list[Request] = []
    missed = 0
    for pid, problem in by_id.items():
        available = teacher.available(problem, mode)
        count = n if available is None else min(n, available)
        missed += count == 0
        phash = teacher.prompt_hash(problem, mode) if count else ""
        for sample in range(count):
            plan[pid, sample] = (cache_key(teacher.name, phash, mode, pid, params, key_seed, sample), phash)
        todo = [s for s in range(count) if plan[pid, s][0] not in existing]
        if todo:
            requests.append(Request(problem, mode, todo, temperature, max_tokens, seed))
    if missed:
        warnings.warn(f"{teacher.name}: {missed} problems skipped" if teacher.live else f"{teacher.name}: no "
                      f"rationale for {missed} of {len(by_id)} problems (not covered by the source)", stacklevel=2)

    pending = sum(len(r.samples) for r in requests)
    failures: list[Completion] = []
    if pending:
        from tqdm.auto import tqdm

        cost = sum(existing[k].get("cost", 0.0) or 0.0 for k, _ in plan.values() if k in existing)
        with tqdm(total=pending, desc=f"{teacher.name} {mode}", unit="rationale", disable=not progress,
                  dynamic_ncols=True) as bar:
            for chunk in teacher.run(requests):
                failures += [c for c in chunk if c.failed]
                fresh = [c for c in chunk if not c.failed and plan[c.problem_id, c.sample][0] not in existing]
                records = _records(fresh, teacher, by_id, plan, params, key_seed, exec_timeout)
                store.extend(records)
                existing.update((r["id"], r) for r in records)
                cost += sum(r["cost"] for r in records)
                bar.update(len(chunk))
                bar.set_postfix(cost=f"${cost:.4f}")
        calls = runs.read_manifest(run_dir).get("stages", {}).get("teachers", {}).get("calls", {})
        calls[f"{teacher.name}|{mode}"] = dict(n=n, temperature=temperature, seed=key_seed, params=params,
                                                written=pending - len(failures), missed=missed)
        runs.update_manifest(run_dir, "teachers", calls=calls)
    if failures:
        errors = sorted({f.error or "unknown" for f in failures})
        raise TeacherError(f"{teacher.name}: {len(failures)} of {pending} rationales failed after retries "
                           f"({'; '.join(errors[:3])}). The other rationales are saved in {store.path}; run "
                           "generate() again to retry only the failed ones.")
    return [Rationale.from_dict(existing[k]) for k, _ in plan.values() if k in existing]


def _records(chunk: list[Completion], teacher: Teacher, by_id: dict[str, Problem], plan: dict, params: dict,
             seed: int | None, exec_timeout: float) -> list[dict]:
    """The stored records of a chunk: cleaned, then scored in one batch (CoT extraction, PoT in the sandbox)."""
    texts = ["" if c.status == "api_error" else c.text if c.text is not None else
             clean_cot(c.raw or "") if c.mode == "cot" else answers.clean_program(c.raw or "") for c in chunk]
    scored = iter(answers.score([t for t, c in zip(texts, chunk) if c.status != "api_error"],
                                [c.mode for c in chunk if c.status != "api_error"], timeout=exec_timeout))
    out = []
    for c, text in zip(chunk, texts):
        s = next(scored) if c.status != "api_error" else answers.Scored(None, c.status, error=c.error)
        key, phash = plan[c.problem_id, c.sample]
        out.append(dataclasses.asdict(Rationale(
            id=key, problem_id=c.problem_id, mode=c.mode, text=text, teacher=teacher.name, sample=c.sample,
            answer=s.answer, status=s.status, dataset=by_id[c.problem_id].dataset,
            raw=None if (c.raw or "") == text else c.raw or "", prompt_hash=phash, params={**params, **c.params},
            seed=seed, tokens=c.tokens, cost=c.cost, error=s.error, finish_reason=c.finish_reason,
            created=time.time())))
    return out


def generate_all(config: TeacherConfig, problems: Sequence[Problem], run_dir: str | os.PathLike, *,
                 live: bool = True, progress: bool = True) -> list[Rationale]:
    """The config's ``cot`` and ``pot`` teachers over all problems (and, with ``live``, ``generate_live``)."""
    out: list[Rationale] = []
    for mode in prompts.MODES:
        for spec in getattr(config, mode):
            teacher = config.teacher(spec)
            with warnings.catch_warnings():
                if not teacher.live:
                    warnings.simplefilter("ignore")  # a recorded source's coverage is reported by summary()
                out += generate(teacher, problems, mode, **_options(config, run_dir, progress))
    return out + (generate_live(config, problems, run_dir, progress=progress) if live else [])


def generate_live(config: TeacherConfig, problems: Sequence[Problem], run_dir: str | os.PathLike, *,
                  progress: bool = True) -> list[Rationale]:
    """The config's ``live`` teachers, both modes, on the first ``live_problems`` problems."""
    subset = list(problems)[:config.live_problems]
    return [r for spec in (config.live if subset else []) for teacher in [config.teacher(spec)]
            for mode in prompts.MODES for r in generate(teacher, subset, mode, **_options(config, run_dir, progress))]


def _options(config: TeacherConfig, run_dir, progress: bool) -> dict:
    return dict(n=config.n, temperature=config.temperature, seed=config.seed, run_dir=run_dir,
                max_tokens=config.max_tokens, progress=progress)


def table(rationales: Sequence[Rationale], problems: Sequence[Problem] | None = None):
    """One row per rationale (pandas), ``correct`` against the gold answer when problems are given; ``text``
    on one line (breaks shown as ``⏎``) so that a cell shows it."""
    import pandas as pd

    gold_of = {p.id: p.answer for p in problems or ()}
    columns = ["teacher", "mode", "problem_id", "sample", "status", "answer", "cost", "tokens", "text"]
    rows = [[r.teacher, r.mode, r.problem_id, r.sample, r.status, r.answer, r.cost, sum((r.tokens or {}).values()),
             r.text.strip().replace("\n", " ⏎ ")] for r in rationales]
    df = pd.DataFrame(rows, columns=columns)  # fixed columns: selecting them works on an empty table too
    if problems:
        df["gold"] = df["problem_id"].map(gold_of)
        df["correct"] = [answers.same(a, gold_of[p]) if p in gold_of else None for a, p in zip(df.answer, df.problem_id)]
    return df


def summary(rationales: Sequence[Rationale], problems: Sequence[Problem]):
    """Per teacher and mode: rationales, problems covered and missed, statuses, raw accuracy, cost."""
    import pandas as pd

    df, rows = table(rationales, problems), []
    for (teacher, mode), group in df.groupby(["teacher", "mode"], sort=False):
        covered = group["problem_id"].nunique()
        asked = covered if teacher.startswith(("hf:", "openai:")) else len({p.id for p in problems})
        correct = group["correct"].fillna(False).astype(bool)
        rows.append({"teacher": teacher, "mode": mode, "rationales": len(group), "problems": covered,
                     "missed": max(0, asked - covered), "ok": int((group["status"] == "ok").sum()),
                     "correct": int(correct.sum()), "accuracy": round(float(correct.mean()), 3),
                     "statuses": ", ".join(f"{k} {v}" for k, v in group["status"].value_counts().items()),
                     "cost": float(group["cost"].sum())})
    return pd.DataFrame(rows, columns=["teacher", "mode", "rationales", "problems", "missed", "ok", "correct",
                                       "accuracy", "statuses", "cost"])


def side_by_side(rationales: Sequence[Rationale], problems: Sequence[Problem], *, k: int = 3,
                 problem_ids: Sequence[str] | None = None):
    """A few problems as rows, one column per teacher and mode (sample 0): the rationale and its answer.
    Without ``problem_ids``, the first problems answered by the most teachers (a live teacher's few first)."""
    import pandas as pd

    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rationales:
        if r.sample == 0:
            answer = gold.fmt_number(r.answer) if r.answer is not None else "-"
            cells[r.problem_id][f"{r.teacher} · {r.mode}"] = f"{r.text}\n\u2192 {answer} ({r.status})"
    order = {p.id: i for i, p in enumerate(problems)}
    if problem_ids is None:
        problem_ids = sorted((pid for pid in cells if pid in order), key=lambda pid: (-len(cells[pid]), order[pid]))[:k]
    columns = sorted({c for pid in problem_ids for c in cells[pid]}, key=lambda c: (c.rsplit(" · ", 1)[1], c))
    rows = [{"problem": pid, "question": problems[order[pid]].question if pid in order else "",
             "gold": gold.fmt_number(problems[order[pid]].answer) if pid in order else "",
             **{c: cells[pid].get(c, "") for c in columns}} for pid in problem_ids]
    return pd.DataFrame(rows).set_index("problem")

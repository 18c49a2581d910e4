"""Teacher backends and ``generate``: CoT and PoT rationales for every problem, kept on disk.

A *teacher* turns (problem, mode) into raw rationale texts. Four backends share one protocol
(``Teacher``):

- ``OpenAICompatible``: any OpenAI-style server (OpenAI, vLLM, ``transformers serve``, Ollama,
  LM Studio) through the official async ``openai`` client. Requests run concurrently under an
  ``asyncio.Semaphore``. ``n`` samples go in one request where the server honours ``n``; a server
  that answers with fewer choices (``transformers serve`` ignores ``n``) is remembered, and the
  missing samples are asked for one request each. 429, 5xx, timeouts, dropped connections and
  malformed JSON are retried with exponential backoff (``tenacity``); other 4xx answers are
  recorded as ``api_error`` (400/422) or stop the run (401/403/404). Token usage is priced from a
  table the user supplies. The API key is read from an environment variable when the client is
  made, never logged or written anywhere; a loopback server needs none.
- ``HFLocal``: a transformers model in this process, batched, ``num_return_sequences`` samples
  from one prefill, the torch seed of every batch recorded.
- ``Recorded``: published teacher outputs (``RECORDED`` lists them): PaLM-540B CoT for SVAMP,
  Codex PoT for SVAMP and the GSM8K test set, text-davinci-002 CoT, MCC-KD's ten CoTs per SVAMP
  train question and its ASDiv CoTs. Rows are matched to problem ids by their text. PaLM's run-on
  into the next exemplar is cut and its expression answers are evaluated ("The answer is
  (16 * 17) * 4." -> "The answer is 1088."); the raw text is kept in ``Rationale.raw``. A recorded
  teacher yields rationales only for the problems it covers; ``generate`` says how many it misses.
- ``Annotations``: gold rationales written from the datasets' own derivations (SVAMP ``Equation``,
  ASDiv ``Formula``, GSM8K ``<<a*b=c>>`` calculator annotations): a "perfect teacher" baseline.

``generate(teacher, problems, mode, n=..., temperature=..., seed=..., run_dir=...)`` appends one
record per rationale to ``run_dir/rationales.jsonl`` (``runs.JsonlStore``) as soon as it is done.
The record id is a hash of the cache key: teacher, prompt hash, mode, problem, sampling
parameters, seed and sample index. Before asking the teacher, ``generate`` reads the file and
skips every key already there, so a rerun makes no teacher call and a run killed at any moment
resumes with nothing lost (but the requests in flight) and nothing written twice.
The answer of a CoT rationale is ``answers.extract(text)``; a PoT rationale is the cleaned
program (markdown fences and prose stripped), run in ``sandbox.run_many``, and its answer and
status come from the ``ExecResult``. A rationale without a final answer or without code is kept
with status ``no_answer`` / ``no_code``, not dropped.

Simplifications: one process writes a run directory at a time; an ``api_error`` record counts
as done (delete its line to ask again); requests that still fail after
all retries are not written (a rerun asks for exactly those again) and ``generate`` raises
``TeacherError`` naming them after everything else is saved; an empty problem list is refused
with ``ValueError`` (it is almost always a wrong split or limit); a recorded teacher's sampling
parameters are those of its source, so ``temperature`` and ``seed`` do not apply to it.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import hashlib
import ipaddress
import json
import math
import os
import queue
import re
import textwrap
import threading
import time
import warnings
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence
from urllib.parse import urlparse

from mdlab import answers, prompts, runs
from mdlab.data import Problem

RATIONALES_FILE = "rationales.jsonl"
CHAT_API = ("chat", "completions")


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
    status: str  # "ok" | "no_answer" | "error" | ... (why a rationale has no usable answer)
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


# Statuses: "ok"; "no_answer" (CoT without a number, or a program that sets no answer);
# "no_code" (PoT text with no program in it); the sandbox's "error" / "timeout" / "memory" /
# "forbidden"; "api_error" (the server refused this one request, e.g. a prompt too long).
STATUSES = ("ok", "no_answer", "no_code", "error", "timeout", "memory", "forbidden", "api_error")


# ------------------------------------------------------------------------------- the protocol

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
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    cost: float = 0.0
    finish_reason: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # request details (request_seed, ...)
    status: str | None = None  # set by the backend only for api_error
    error: str | None = None
    failed: bool = False  # transport failure after all retries: not written, retried by a rerun


class Teacher(Protocol):
    """A source of rationales. ``generate`` is the only caller; backends need these members."""

    name: str  # stable name, part of every cache key ("openai:gpt-4o-mini", "recorded:svamp-palm-cot")
    live: bool  # True: samples depend on temperature/seed; False: fixed outputs (recorded, gold)

    def supports(self, mode: str) -> bool: ...

    def prompt_hash(self, problem: Problem, mode: str) -> str: ...

    def key_params(self, *, temperature: float, max_tokens: int) -> dict: ...

    def available(self, problem: Problem, mode: str) -> int | None:
        """How many samples exist for this problem (None: as many as asked; 0: not covered)."""

    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        """Completions in chunks, each chunk as soon as it is done (any order)."""


# ------------------------------------------------------------------------------------- helpers

def _sha(*parts: Any) -> str:
    return hashlib.sha256(runs.dumps(list(parts)).encode("utf-8")).hexdigest()


def cache_key(teacher: str, prompt_hash: str, mode: str, problem_id: str, params: dict, seed: int | None,
              sample: int) -> str:
    """The record id: everything that determines a rationale, hashed (params in canonical order)."""
    params = dict(sorted(params.items()))
    return _sha("rationale-v1", teacher, prompt_hash, mode, problem_id, params, seed, sample)[:24]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed derived from a base seed and labels (the same inputs give the same seed)."""
    return int(_sha("seed", seed, *parts)[:8], 16) & 0x7FFFFFFF


def fmt_number(value: float) -> str:
    """A number as a rationale writes it: 1088, 9.5, 0.333333 (at most six decimals)."""
    if value is None or not math.isfinite(value):
        return str(value)
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _norm_text(text: str) -> str:
    """Problem text for matching across sources: lower case, letters and digits only."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


# ------------------------------------------------------------------------------------ cleaning

_ANSWER_EXPR = re.compile(r"The answer is\s*(.+?)\s*\.?\s*$", re.S)


def clean_cot(text: str) -> str:
    """A CoT as the student should see it: no run-on into the next exemplar, no echoed 'A:'."""
    text = answers.cut_run_on(text or "").strip()
    return re.sub(r"^A:\s*", "", text)


def with_answer_phrase(text: str) -> str:
    """A CoT that ends in prose ("Therefore, Luke scored 42 points ...") with "The answer is 42." appended.

    MCC-KD's gpt-3.5 CoTs state their answer in a sentence; the student is taught to finish
    with "The answer is N." (``prompts.STUDENT_INSTRUCTION``), so they get that line, with the
    number ``answers.extract`` reads from them. Texts that already have the phrase, or commit to
    no number, are returned unchanged.
    """
    text = text.rstrip()
    if re.search(r"answer\s*(?:is|=|:)", text, re.IGNORECASE):
        return text
    value = answers.extract(text)
    if value is None:
        return text
    number = str(int(value)) if float(value).is_integer() else f"{value:.4f}".rstrip("0").rstrip(".")
    return f"{text}\nThe answer is {number}."


def clean_palm(text: str) -> str:
    """PaLM's recorded CoT: cut the run-on, and 'The answer is (16 * 17) * 4.' -> 'The answer is 1088.'.

    An answer expression that does not evaluate (``(some bags + 4 bags)``) is left as written.
    """
    text = clean_cot(text)
    idx = text.rfind("The answer is")
    if idx < 0:
        return text
    match = _ANSWER_EXPR.match(text[idx:])
    if match:
        value = answers.safe_arith(match.group(1).strip())
        if value is not None:
            return f"{text[:idx]}The answer is {fmt_number(value)}."
    return text


# --------------------------------------------------------------------------------- price table

def load_prices(prices: str | os.PathLike | dict | None) -> dict[str, dict[str, float]]:
    """USD per million tokens per model: ``{"gpt-4o-mini": {"input": 0.15, "output": 0.60}}``.

    ``prices`` is that mapping, or a YAML/JSON file holding it, or None (every call costs 0).
    """
    if prices is None:
        return {}
    if isinstance(prices, (str, os.PathLike)):
        path = Path(prices)
        if not path.exists():
            raise TeacherError(f"price table {path} does not exist; give a YAML/JSON file mapping model -> "
                               "{input: USD per 1M tokens, output: USD per 1M tokens}")
        import yaml

        prices = yaml.safe_load(path.read_text()) or {}
    if not isinstance(prices, dict):
        raise TeacherError(f"price table must map model -> {{input, output}}, got {type(prices).__name__}")
    table = {}
    for model, row in prices.items():
        if not isinstance(row, dict) or not {"input", "output"} <= set(row):
            raise TeacherError(f"price table entry {model!r} must have 'input' and 'output' (USD per 1M tokens), "
                               f"got {row!r}")
        table[str(model)] = {"input": float(row["input"]), "output": float(row["output"])}
    return table


def price(table: dict, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Cost in USD, or None when the model is not in the table."""
    row = table.get(model)
    if row is None:
        return None
    return (prompt_tokens * row["input"] + completion_tokens * row["output"]) / 1e6


def _split_tokens(total: int, parts: int) -> list[int]:
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --------------------------------------------------------------------------- OpenAICompatible

class _MalformedResponse(Exception):
    """The server answered 200 with something that is not a usable completion."""


def is_loopback(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (_MalformedResponse, json.JSONDecodeError, openai.APIResponseValidationError,
                        openai.APITimeoutError, openai.APIConnectionError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409, 429)
    return False


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 500 else text[:497] + "..."


class OpenAICompatible:
    """A teacher behind an OpenAI-compatible HTTP API (chat or legacy completions).

    ``prices`` maps model -> {"input", "output"} USD per million tokens (dict or YAML/JSON path).
    ``retries`` attempts per request in all; ``retry_wait`` = (first, max) backoff seconds.
    """

    _n_support: dict[tuple[str, str], bool] = {}  # (base_url, model) -> honours n; shared per process
    _n_lock = threading.Lock()

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, api: Literal["chat", "completions"] = "chat",
                 prices: str | os.PathLike | dict | None = None, timeout: float = 60.0, retries: int = 6,
                 retry_wait: tuple[float, float] = (0.5, 30.0), name: str | None = None,
                 shots: int | None = None, extra_body: dict | None = None):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if api not in CHAT_API:
            raise ValueError(f"api must be one of {CHAT_API}, got {api!r}")
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.api = api
        self.prices = load_prices(prices)
        self.timeout = timeout
        self.retries = retries
        self.retry_wait = retry_wait
        self.shots = shots
        self.extra_body = extra_body or {}
        self.name = name or f"openai:{model}"
        self.live = True
        self.requests_sent = 0  # HTTP attempts made by this object (retries included)
        self._warned_price = False
        self._abort: str | None = None
        self._api_key()  # fail now, not after the first request, when the key is missing

    def __repr__(self) -> str:  # never shows the key
        return (f"OpenAICompatible(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, api={self.api!r})")

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if is_loopback(self.base_url):
            return "not-needed"  # local servers accept any key
        where = self.base_url or "https://api.openai.com/v1 (the default)"
        raise TeacherError(f"no API key: the environment variable {self.api_key_env} is not set, and {where} is "
                           f"not a loopback server. Set it (export {self.api_key_env}=...) or pass "
                           "api_key_env= naming the variable that holds the key; keys are never read from "
                           "configs or arguments.")

    @property
    def _server(self) -> tuple[str, str]:
        return (self.base_url or "https://api.openai.com/v1", self.model)

    def supports(self, mode: str) -> bool:
        return mode in prompts.MODES

    def prompt(self, problem: Problem, mode: str) -> str | list[dict]:
        if self.api == "chat":
            return prompts.teacher_messages(problem.question, mode, shots=self.shots)
        return prompts.teacher_completion(problem.question, mode, shots=self.shots)

    def prompt_hash(self, problem: Problem, mode: str) -> str:
        return prompts.prompt_hash(self.prompt(problem, mode))

    def key_params(self, *, temperature: float, max_tokens: int) -> dict:
        return {"temperature": temperature, "max_tokens": max_tokens, "api": self.api,
                **({"extra_body": self.extra_body} if self.extra_body else {})}

    def available(self, problem: Problem, mode: str) -> int | None:
        return None

    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        return _iterate_async(lambda emit: self._run_async(requests, emit))

    # --- async machinery (runs in its own event loop thread, see _iterate_async)

    async def _run_async(self, requests: list[Request], emit: Callable[[Completion], None]) -> None:
        import openai

        client = openai.AsyncOpenAI(api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout,
                                    max_retries=0)
        semaphore = asyncio.Semaphore(self.concurrency)
        probe = {"lock": asyncio.Lock()}
        self._abort: str | None = None  # set by the first fatal answer; no request starts after it
        tasks = [asyncio.ensure_future(self._handle(client, semaphore, probe, req, emit)) for req in requests]
        if not tasks:
            await client.close()
            return
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:  # a fatal answer (bad key, unknown model): stop everything else
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await client.close()

    async def _handle(self, client, semaphore, probe, req: Request, emit) -> None:
        samples = list(req.samples)
        if len(samples) > 1:
            known = self._n_support.get(self._server)
            if known is None:
                async with probe["lock"]:  # one probe per server; the others wait for its verdict
                    known = self._n_support.get(self._server)
                    if known is None:
                        samples = await self._batch(client, semaphore, req, samples, emit, probing=True)
                        known = self._n_support.get(self._server, False)
                        if not samples:
                            return
            if known:
                samples = await self._batch(client, semaphore, req, samples, emit, probing=False)
        await asyncio.gather(*(self._single(client, semaphore, req, s, emit) for s in samples))

    async def _batch(self, client, semaphore, req: Request, samples: list[int], emit, *, probing: bool) -> list[int]:
        """One request with n = len(samples); emits what came back, returns the samples still missing."""
        request_seed = derive_seed(req.seed, req.problem.id, req.mode, "n", samples[0])
        try:
            choices, usage = await self._call(client, semaphore, req, n=len(samples), seed=request_seed)
        except _Fatal:
            raise
        except Exception as exc:  # exhausted retries or a refused request: count it for every sample
            for s in samples:
                emit(self._failure(req, s, exc, request_seed))
            return []
        got = min(len(choices), len(samples))
        if probing:
            with self._n_lock:
                self._n_support[self._server] = len(choices) >= len(samples)
        self._emit_choices(req, samples[:got], choices[:got], usage, request_seed, emit, n=len(samples))
        return samples[got:]

    async def _single(self, client, semaphore, req: Request, sample: int, emit) -> None:
        request_seed = derive_seed(req.seed, req.problem.id, req.mode, sample)
        try:
            choices, usage = await self._call(client, semaphore, req, n=1, seed=request_seed)
        except _Fatal:
            raise
        except Exception as exc:
            emit(self._failure(req, sample, exc, request_seed))
            return
        self._emit_choices(req, [sample], choices[:1], usage, request_seed, emit, n=1)

    def _failure(self, req: Request, sample: int, exc: BaseException, request_seed: int) -> Completion:
        import openai

        refused = isinstance(exc, openai.APIStatusError) and not _retryable(exc)
        return Completion(req.problem.id, req.mode, sample, raw=None if not refused else "",
                          status="api_error" if refused else None, error=_short_error(exc),
                          params={"request_seed": request_seed}, failed=not refused)

    def _emit_choices(self, req, samples, choices, usage, request_seed, emit, *, n: int) -> None:
        k = max(1, len(samples))
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        p_parts, c_parts = _split_tokens(prompt_tokens, k), _split_tokens(completion_tokens, k)
        for i, (sample, choice) in enumerate(zip(samples, choices)):
            tokens = {"prompt": p_parts[i], "completion": c_parts[i]} if usage is not None else {}
            cost = price(self.prices, self.model, p_parts[i], c_parts[i]) if usage is not None else None
            if cost is None and self.prices and not self._warned_price:
                warnings.warn(f"no price for model {self.model!r} in the price table; its cost counts as 0",
                              stacklevel=2)
                self._warned_price = True
            emit(Completion(req.problem.id, req.mode, sample, raw=choice[0], tokens=tokens, cost=cost or 0.0,
                            finish_reason=choice[1], params={"request_seed": request_seed, "request_n": n}))

    async def _call(self, client, semaphore, req: Request, *, n: int, seed: int):
        import openai
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        from openai.types import Completion as TextCompletion
        from openai.types.chat import ChatCompletion

        # the body goes through client.post as is: the SDK's per-request type walk over 17 chat
        # messages costs more CPU than the rest of a request (bench/teachers.py)
        body = {"model": self.model, "max_tokens": req.max_tokens, "temperature": req.temperature, "seed": seed}
        if n > 1:
            body["n"] = n
        prompt = self.prompt(req.problem, req.mode)
        if self.api == "chat":
            path, cast_to, body["messages"] = "/chat/completions", ChatCompletion, prompt
        else:
            path, cast_to, body["prompt"] = "/completions", TextCompletion, prompt
            body["stop"] = prompts.STOP[req.mode][:4]
        body.update(self.extra_body)
        retrying = AsyncRetrying(retry=retry_if_exception(_retryable), reraise=True,
                                 stop=stop_after_attempt(self.retries),
                                 wait=wait_exponential_jitter(initial=self.retry_wait[0], max=self.retry_wait[1]))
        async for attempt in retrying:
            with attempt:
                async with semaphore:
                    if self._abort:
                        raise _Fatal(self._abort)
                    self.requests_sent += 1
                    try:
                        resp = await client.post(path, body=body, cast_to=cast_to)
                    except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                        self._abort = f"{self.name} at {self._server[0]}: {_short_error(exc)}"
                        raise _Fatal(self._abort) from None
                return self._parse(resp), getattr(resp, "usage", None)
        raise AssertionError("unreachable")

    def _parse(self, resp) -> list[tuple[str, str | None]]:
        choices = getattr(resp, "choices", None)
        if isinstance(resp, (str, bytes)) or not isinstance(choices, list) or not choices:
            raise _MalformedResponse(f"no choices in the response: {str(resp)[:200]!r}")
        out = []
        for choice in sorted(choices, key=lambda c: getattr(c, "index", 0) or 0):
            if self.api == "chat":
                message = getattr(choice, "message", None)
                text = getattr(message, "content", None) if message is not None else None
                if message is None or (text is not None and not isinstance(text, str)):
                    raise _MalformedResponse(f"a choice without a message: {str(choice)[:200]!r}")
            else:
                text = getattr(choice, "text", None)
                if text is not None and not isinstance(text, str):
                    raise _MalformedResponse(f"a choice without text: {str(choice)[:200]!r}")
            out.append((text or "", getattr(choice, "finish_reason", None)))
        return out


class _Fatal(TeacherError):
    """The server refuses every request (bad key, no access, unknown model): stop the run."""


def _iterate_async(start: Callable[[Callable[[Completion], None]], Any]) -> Iterator[list[Completion]]:
    """Run a coroutine in its own event-loop thread and yield what it emits, in chunks.

    A thread of its own means this works from plain scripts and from Jupyter (whose loop is
    already running) alike. Each chunk holds everything emitted since the last one (>= 1 item).
    """
    items: queue.Queue = queue.Queue()
    state: dict[str, Any] = {}
    done = object()

    def worker() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop
        try:
            task = loop.create_task(start(items.put))
            state["task"] = task
            loop.run_until_complete(task)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            state["error"] = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            items.put(done)

    thread = threading.Thread(target=worker, name="mdlab-teacher", daemon=True)
    thread.start()
    finished = False
    try:
        while not finished:
            chunk = [items.get()]
            while True:
                try:
                    chunk.append(items.get_nowait())
                except queue.Empty:
                    break
            if chunk[-1] is done:
                chunk.pop()
                finished = True
            if chunk:
                yield chunk
        error = state.get("error")
        if error is not None and not isinstance(error, asyncio.CancelledError):
            raise error
    finally:
        if not finished:  # the consumer stopped early (an exception, a KeyboardInterrupt): cancel
            loop, task = state.get("loop"), state.get("task")
            if loop is not None and task is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass
            thread.join(timeout=10)


# ----------------------------------------------------------------------------------- HFLocal

class HFLocal:
    """A transformers causal LM in this process, decoded by ``generation.HFBackend`` like the students.

    ``model`` is anything ``models.resolve`` takes ("embedded", "tiny", a hub id, a local path).
    ``chat``: use the tokenizer's chat template (None = when it has one). A prompt's n samples share
    one prefill; each sample has its own seed, ``generation.sample_seed(seed, problem, mode, sample)``,
    recorded as ``params.request_seed``, so it does not depend on batching. ``batch_size``: prompts
    decoded at once.
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

    def load(self):
        """(model, tokenizer), loaded once."""
        return self.engine().model, self.engine().tokenizer

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


# ---------------------------------------------------------------------------------- Recorded

@dataclasses.dataclass(frozen=True)
class RecordedSource:
    mode: str  # "cot" | "pot"
    dataset: str  # registry name of the problems it covers
    files: tuple[str, ...]  # data files it reads (their sha256 goes into the prompt hash)
    params: dict  # the original run's sampling parameters, as documented by its authors
    teacher_model: str  # the model that wrote them
    description: str


RECORDED: dict[str, RecordedSource] = {
    "svamp-palm-cot": RecordedSource(
        "cot", "svamp", ("svamp/distilling_step_by_step/svamp_train.json", "svamp/distilling_step_by_step/svamp_test.json",
                         "svamp/distilling_step_by_step/llm/train_CoT_0.json",
                         "svamp/distilling_step_by_step/llm/train_CoT_1.json",
                         "svamp/distilling_step_by_step/llm/test_CoT_0.json"),
        {"prompt": "few-shot CoT (Wei et al.)", "temperature": 0.0}, "PaLM-540B",
        "PaLM few-shot CoT for all 1000 SVAMP problems (distilling-step-by-step); run-ons cut, expression answers "
        "evaluated"),
    "svamp-codex-pot": RecordedSource(
        "pot", "svamp", ("svamp/program_of_thoughts/svamp_s0_e-1_11_24_14_38.jsonl",),
        {"prompt": "few-shot PoT", "temperature": 0.0, "max_tokens": 256}, "code-davinci-002",
        "Codex few-shot greedy PoT for 999 SVAMP problems (Program-of-Thoughts)"),
    "svamp-codex-pot-zs": RecordedSource(
        "pot", "svamp", ("svamp/program_of_thoughts/svamp_zs_s0_e-1_11_18_20_12.jsonl",),
        {"prompt": "zero-shot PoT", "temperature": 0.0, "max_tokens": 300}, "code-davinci-002",
        "Codex zero-shot PoT (def solver()) for 999 SVAMP problems (Program-of-Thoughts)"),
    "gsm8k-codex-pot": RecordedSource(
        "pot", "gsm8k", ("gsm8k/program_of_thoughts/gsm8K_s0_e-1_11_17_10_20.jsonl",),
        {"prompt": "few-shot PoT", "temperature": 0.0, "max_tokens": 256}, "code-davinci-002",
        "Codex few-shot greedy PoT for the GSM8K *test* set (Program-of-Thoughts); its prompt's exemplars are "
        "GSM8K test problems"),
    "gsm8k-codex-pot-zs": RecordedSource(
        "pot", "gsm8k", ("gsm8k/program_of_thoughts/gsm8K_zs_s0_e-1_11_19_09_55.jsonl",),
        {"prompt": "zero-shot PoT", "temperature": 0.0}, "code-davinci-002",
        "Codex zero-shot PoT for the GSM8K *test* set (Program-of-Thoughts)"),
    "svamp-davinci-cot": RecordedSource(
        "cot", "svamp", ("svamp/reasoning_teacher/completion_data/B_text-davinci-002__C_zs_cot/D_svamp.json",),
        {"prompt": "zero-shot CoT (Let's think step by step)", "temperature": 0.0, "max_tokens": 128},
        "text-davinci-002",
        "text-davinci-002 zero-shot CoT for all 1000 SVAMP problems (Fine-tune-CoT): the reasoning, then "
        "'Therefore, the answer is' and the model's answer completion"),
    "svamp-mcckd-cot": RecordedSource(
        "cot", "svamp", ("svamp/mcc_kd/train.json",),
        {"prompt": "unknown (MCC-KD)", "samples": 10}, "gpt-3.5-turbo (per the MCC-KD paper)",
        "MCC-KD: 10 sampled CoTs per question for its 700 SVAMP train questions (unfiltered)"),
    "asdiv-mcckd-cot": RecordedSource(
        "cot", "asdiv", ("asdiv/mentor_kd/asdiv_3_train.json",),
        {"prompt": "unknown (MCC-KD)", "samples": 3}, "gpt-3.5-turbo (per the MCC-KD paper)",
        "MCC-KD's ASDiv CoTs via Mentor-KD: up to 3 per question for 1422 train questions, filtered to correct "
        "ones by their authors"),
}


def _read_json(rel: str):
    from mdlab import data

    return json.loads(data.resolve(rel).read_text(encoding="utf-8"))


def _read_jsonl(rel: str) -> list[dict]:
    from mdlab import data

    return [json.loads(line) for line in data.resolve(rel).read_text(encoding="utf-8").splitlines() if line.strip()]


@lru_cache(maxsize=None)
def _text_index(dataset: str, split: str) -> dict[str, list[str]]:
    """Normalised problem text -> problem ids (a list: a few datasets repeat a text)."""
    from mdlab import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = data.load(dataset, split)
    index: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        index[_norm_text(p.question)].append(p.id)
    return dict(index)


def _load_recorded(source: str) -> tuple[dict[str, list[tuple[str, str | None]]], int]:
    """problem id -> [(raw, cleaned text or None)], and the number of source rows that matched no problem."""
    out: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    unmatched = 0

    def add(ids: list[str] | None, raw: str, text: str | None = None) -> None:
        nonlocal unmatched
        if not ids:
            unmatched += 1
            return
        for pid in ids:
            out[pid].append((raw, text))

    if source == "svamp-palm-cot":
        svamp = _text_index("svamp", "all")
        base = "svamp/distilling_step_by_step/"
        rows = _read_jsonl(base + "svamp_train.json") + _read_jsonl(base + "svamp_test.json")
        texts = (_read_json(base + "llm/train_CoT_0.json") + _read_json(base + "llm/train_CoT_1.json")
                 + _read_json(base + "llm/test_CoT_0.json"))
        if len(rows) != len(texts):
            raise TeacherError(f"{source}: {len(rows)} rows but {len(texts)} rationales; the files are not the "
                               "pinned versions")
        for row, raw in zip(rows, texts):
            add(svamp.get(_norm_text(row["input"])), raw, clean_palm(raw))
    elif source in ("svamp-codex-pot", "svamp-codex-pot-zs"):
        svamp = _text_index("svamp", "all")
        for row in _read_jsonl(RECORDED[source].files[0]):
            if "generated" not in row:  # the few-shot prompt ("demonstration") lines of resumed runs
                continue
            program = row["generated"][0] if isinstance(row["generated"], list) else row["generated"]
            add(svamp.get(_norm_text(f"{row['passage']} {row['question']}")), program)
    elif source in ("gsm8k-codex-pot", "gsm8k-codex-pot-zs"):
        gsm = _text_index("gsm8k", "test")
        for row in _read_jsonl(RECORDED[source].files[0]):
            if "generated" not in row:
                continue
            program = row["generated"][0] if isinstance(row["generated"], list) else row["generated"]
            add(gsm.get(_norm_text(row["question"])), program)
    elif source == "svamp-davinci-cot":
        from mdlab import data

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svamp_all = data.load("svamp", "all")
        blob = _read_json(RECORDED[source].files[0])
        for index, rows in sorted(blob["data"].items(), key=lambda kv: int(kv[0])):
            for row in rows:
                problem = svamp_all[int(row["sample_index"])]
                if _norm_text(problem.question) != _norm_text(row["question"]):
                    raise TeacherError(f"{source}: sample_index {row['sample_index']} is not SVAMP.json's problem "
                                       f"{problem.id}; the file is not the pinned version")
                raw = (row["reasoning_completion"].rstrip() + "\nTherefore, the answer is"
                       + row.get("completion", "").rstrip())
                add([problem.id], raw)
    elif source == "svamp-mcckd-cot":
        svamp = _text_index("svamp", "all")
        for row in _read_json(RECORDED[source].files[0]):
            ids = svamp.get(_norm_text(row["instruction"]))
            for raw in row["output"]:
                add(ids, raw, with_answer_phrase(raw))
    elif source == "asdiv-mcckd-cot":
        asdiv = _text_index("asdiv", "all")
        for row in _read_json(RECORDED[source].files[0]):
            add(asdiv.get(_norm_text(row["input"])), row["chain"])
    else:
        raise TeacherError(f"unknown recorded source {source!r}; known: {', '.join(RECORDED)}")
    return dict(out), unmatched


class Recorded:
    """Published teacher outputs as a teacher (see ``RECORDED`` for the sources).

    ``sample`` i is the source's i-th rationale for a problem (MCC-KD has 10 per question). A
    problem the source does not cover gets nothing; ``coverage(problems)`` counts them.
    """

    def __init__(self, source: str):
        if source not in RECORDED:
            raise TeacherError(f"unknown recorded source {source!r}; known: {', '.join(RECORDED)}")
        self.source = source
        self.spec = RECORDED[source]
        self.name = f"recorded:{source}"
        self.live = False
        self._rows: dict[str, list[tuple[str, str | None]]] | None = None
        self.unmatched = 0  # source rows that matched no problem text

    def __repr__(self) -> str:
        return f"Recorded({self.source!r})"

    @property
    def rows(self) -> dict[str, list[tuple[str, str | None]]]:
        if self._rows is None:
            self._rows, self.unmatched = _load_recorded(self.source)
        return self._rows

    def supports(self, mode: str) -> bool:
        return mode == self.spec.mode

    def prompt_hash(self, problem: Problem, mode: str) -> str:
        from mdlab import data

        return _sha("recorded-v1", self.source, [data.SOURCES[f]["sha256"] for f in self.spec.files])

    def key_params(self, *, temperature: float, max_tokens: int) -> dict:
        return dict(self.spec.params)

    def available(self, problem: Problem, mode: str) -> int | None:
        return len(self.rows.get(problem.id, ())) if mode == self.spec.mode else 0

    def coverage(self, problems: Sequence[Problem]) -> tuple[int, int]:
        """(problems covered, problems missed)."""
        covered = sum(1 for p in problems if self.rows.get(p.id))
        return covered, len(problems) - covered

    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        chunk: list[Completion] = []
        for req in requests:
            rows = self.rows.get(req.problem.id, [])
            for sample in req.samples:
                if sample < len(rows):
                    raw, text = rows[sample]
                    chunk.append(Completion(req.problem.id, req.mode, sample, raw=raw, text=text,
                                            params={"source": self.source}))
            if len(chunk) >= 200:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


# ------------------------------------------------------------------------------- Annotations

_GSM_CALC = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_STOPWORDS = {"a", "an", "the", "of", "in", "on", "at", "to", "for", "and", "or", "is", "are", "was", "were", "each",
              "per", "more", "less", "than", "with", "from", "by", "so", "that", "this", "it", "he", "she", "they",
              "his", "her", "their", "them", "has", "had", "have", "be", "as", "if", "then", "total", "will", "would"}


def _identifier(words: Sequence[str], used: set[str], fallback: str) -> str:
    import keyword

    words = [w.lower() for w in words if re.fullmatch(r"[A-Za-z]+", w)]
    while words and words[-1] in _STOPWORDS:
        words.pop()
    while words and words[0] in _STOPWORDS - {"per"}:
        words.pop(0)
    if words == ["per"]:
        words = []
    name = "_".join(words[:3]) or fallback
    if keyword.iskeyword(name) or name in {"ans", "print", "sum", "max", "min", "round", "len", "abs", "int", "float"}:
        name = f"num_{name}"
    candidate, i = name, 2
    while candidate in used:
        candidate, i = f"{name}_{i}", i + 1
    used.add(candidate)
    return candidate


def _number_context(question: str, value: float, taken: set[int]) -> list[str]:
    """The words after the first not-yet-used occurrence of a number in a question."""
    for match in re.finditer(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)(?![\d])", question):
        if match.start() in taken:
            continue
        try:
            number = float(match.group(1).replace(",", ""))
        except ValueError:
            continue
        if abs(number - value) < 1e-9:
            taken.add(match.start())
            return _words_after(question[match.end():])
    return []


def _words_after(text: str) -> list[str]:
    """The words that name a quantity written just before ``text``: '24 clips in May.' -> clips, in, may."""
    words = []
    for token in re.findall(r"[A-Za-z]+|\S", re.sub(r"^\s*%?", "", text[:60])):
        if not token.isalpha() or len(words) == 3:
            break
        words.append(token)
    return words


_BINOPS = {ast.Add: ("+", "+"), ast.Sub: ("-", "-"), ast.Mult: ("*", "*"), ast.Div: ("/", "/")}


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
    counter = [0]

    def visit(node) -> tuple[float, str, str] | None:  # (value, text in CoT, name in program)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            value = float(node.value)
            name = _identifier(_number_context(question, value, taken), used, f"num_{len(used) + 1}")
            lines.append(f"{name} = {fmt_number(value)}")
            return value, fmt_number(value), name
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = visit(node.operand)
            return None if inner is None else (-inner[0], f"-{inner[1]}", f"-{inner[2]}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = visit(node.left), visit(node.right)
            if left is None or right is None:
                return None
            symbol = _BINOPS[type(node.op)][0]
            try:
                value = {"+": left[0] + right[0], "-": left[0] - right[0], "*": left[0] * right[0],
                         "/": left[0] / right[0]}[symbol]
            except ZeroDivisionError:
                return None
            counter[0] += 1
            steps.append(f"{left[1]} {symbol} {right[1]} = {fmt_number(value)}.")
            name = _identifier([], used, f"step_{counter[0]}")
            lines.append(f"{name} = {left[2]} {symbol} {right[2]}")
            return value, fmt_number(value), name
        return None

    result = visit(tree)
    if result is None:
        return None
    answer = fmt_number(result[0])
    cot = " ".join(steps + [f"The answer is {answer}."])
    if lines and lines[-1].startswith(f"{result[2]} = "):
        lines[-1] = "ans = " + lines[-1].split(" = ", 1)[1]
    else:
        lines.append(f"ans = {result[2]}")
    return cot, "\n".join(lines)


def _gsm8k_cot(solution: str, gold: float) -> str:
    """A GSM8K reference solution as a CoT: annotations removed, '#### N' -> 'The answer is N.'."""
    body = solution.rpartition("####")[0]
    cot = re.sub(r"[ \t]+", " ", _GSM_CALC.sub("", body)).strip()
    return f"{cot}\nThe answer is {fmt_number(gold)}."


def _gsm8k_rationales(solution: str, gold: float) -> tuple[str, str] | None:
    """(CoT, PoT) from a GSM8K reference solution with <<expr=result>> calculator annotations."""
    body = solution.rpartition("####")[0]
    cot = _gsm8k_cot(solution, gold)
    lines: list[str] = []
    known: list[tuple[float, str]] = []  # (value, variable) of earlier steps
    used: set[str] = set()
    for i, match in enumerate(_GSM_CALC.finditer(body), 1):
        expr = match.group(1).replace(",", "").replace("x", "*").replace("X", "*").replace("÷", "/")
        expr = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", expr)
        value = answers.safe_arith(expr)
        if value is None:
            return None

        def name_for(m: re.Match) -> str:
            number = float(m.group(0))
            for v, var in reversed(known):
                if abs(v - number) < 1e-9:
                    return var
            return m.group(0)

        code = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", name_for, expr)
        after = _words_after(re.sub(r"^\s*\$?\s*-?[\d,]*\.?\d+", "", body[match.end():]))
        var = _identifier(after, used, f"step_{i}")
        lines.append(f"{var} = {code.strip()}")
        known.append((value, var))
    target = next((var for v, var in reversed(known) if answers.same(v, gold)), None)
    if target is None:  # the last step is often written without an annotation: '20/4 = $5'
        plain = _GSM_CALC.sub("", body).replace("\u00d7", "*").replace("\u2212", "-").replace("$", "")
        steps = re.findall(r"((?:-?\d[\d,]*(?:\.\d+)?\s*[-+*/x]\s*)+\d[\d,]*(?:\.\d+)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)",
                           plain)
        if steps:
            expr = steps[-1][0].replace(",", "").replace("x", "*")
            value = answers.safe_arith(expr)
            if value is not None and answers.same(value, gold) and answers.same(value, answers.to_float(steps[-1][1])):
                code = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])",
                              lambda m: next((var for v, var in reversed(known) if abs(v - float(m.group(0))) < 1e-9),
                                             m.group(0)), expr)
                lines.append(f"ans = {code.strip()}")
                return cot, "\n".join(lines)
        return None
    lines.append(f"ans = {target}")
    return cot, "\n".join(lines)


class Annotations:
    """Gold rationales written from each dataset's own derivation: a "perfect teacher" baseline.

    SVAMP ``Equation`` and ASDiv ``Formula`` become step sentences ("16 * 17 = 272.") ending in
    "The answer is N.", and a program with one variable per quantity (named from the words
    after that number in the question) and ``ans``; GSM8K's reference solution becomes the CoT
    with its ``<<...>>`` annotations removed, and a program with one variable per annotation.
    Problems with no usable derivation (MAWPS, a few ASDiv formulas) get nothing.
    """

    def __init__(self):
        self.name = "annotations"
        self.live = False

    def __repr__(self) -> str:
        return "Annotations()"

    def supports(self, mode: str) -> bool:
        return mode in prompts.MODES

    def prompt_hash(self, problem: Problem, mode: str) -> str:
        return _sha("annotations-v1", mode)

    def key_params(self, *, temperature: float, max_tokens: int) -> dict:
        return {}

    def rationale(self, problem: Problem, mode: str) -> str | None:
        """The gold CoT or PoT for a problem, or None when its derivation gives none."""
        if problem.dataset == "gsm8k" and problem.equation and mode == "cot":
            return _gsm8k_cot(problem.equation, problem.answer)  # the solution text needs no step parsing
        pair = self.rationales(problem)
        return None if pair is None else pair[0 if mode == "cot" else 1]

    def rationales(self, problem: Problem) -> tuple[str, str] | None:
        """(CoT, PoT) for a problem, or None when its dataset has no usable derivation."""
        if not problem.equation:
            return None
        if problem.dataset == "gsm8k":
            return _gsm8k_rationales(problem.equation, problem.answer)
        expr = problem.equation
        if problem.dataset == "asdiv":
            expr = expr.split("=")[0] if expr.count("=") == 1 else ""
            expr = expr.replace("x", "*").replace("÷", "/")
        if not expr.strip():
            return None
        out = _equation_rationales(expr, problem.question)
        if out is None:
            return None
        value = answers.extract(out[0])
        if not math.isnan(problem.answer) and not answers.same(value, problem.answer):
            return None  # the derivation does not reach the gold answer: not a gold rationale
        return out

    def available(self, problem: Problem, mode: str) -> int | None:
        return 1 if self.rationale(problem, mode) is not None else 0

    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        chunk = []
        for req in requests:
            text = self.rationale(req.problem, req.mode)
            if text is not None and 0 in req.samples:
                chunk.append(Completion(req.problem.id, req.mode, 0, raw=text, text=text))
            if len(chunk) >= 200:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


# ------------------------------------------------------------------------------------ specs

def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'recorded:svamp-palm-cot' | 'hf:embedded' | 'openai:MODEL[@BASE_URL]' | 'annotations' -> (kind, arg, url)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a teacher spec is a non-empty string, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "annotations":
        return kind, rest or "gold", None
    if kind == "recorded":
        if rest not in RECORDED:
            raise ValueError(f"teacher spec {spec!r}: unknown recorded source {rest!r}; known: {', '.join(RECORDED)}")
        return kind, rest, None
    if kind == "hf":
        return kind, rest or "embedded", None
    if kind == "openai":
        url = None
        if "@" in rest:
            model, _, maybe_url = rest.rpartition("@")
            if maybe_url.startswith(("http://", "https://")):
                rest, url = model, maybe_url
        if not rest:
            raise ValueError(f"teacher spec {spec!r}: name the model, e.g. openai:gpt-4o-mini")
        return kind, rest, url
    raise ValueError(f"teacher spec {spec!r}: unknown kind {kind!r}; use recorded:<source>, hf:<model>, "
                     "openai:<model>[@<base_url>] or annotations")


def spec_modes(spec: str) -> tuple[str, ...]:
    kind, arg, _ = parse_spec(spec)
    return (RECORDED[arg].mode,) if kind == "recorded" else prompts.MODES


def from_spec(spec: str, *, concurrency: int = 8, api: str = "chat", prices=None, timeout: float = 60.0,
              batch_size: int = 8, api_key_env: str = "OPENAI_API_KEY", shots: int | None = None) -> Teacher:
    """A teacher from a spec string (see ``parse_spec``); options go to the backend that takes them."""
    kind, arg, url = parse_spec(spec)
    if kind == "recorded":
        return Recorded(arg)
    if kind == "annotations":
        return Annotations()
    if kind == "hf":
        return HFLocal(arg, batch_size=batch_size, shots=shots)
    return OpenAICompatible(arg, base_url=url, api_key_env=api_key_env, concurrency=concurrency, api=api,
                            prices=prices, timeout=timeout, shots=shots)


# ------------------------------------------------------------------------------------ config

@dataclasses.dataclass
class TeacherConfig:
    # Teacher specs: "recorded:<source>" (RECORDED), "annotations", "hf:<model>" (embedded | tiny | hub id |
    # path), "openai:<model>[@<base_url>]" (key from $OPENAI_API_KEY unless the URL is loopback).
    cot: list[str] = dataclasses.field(default_factory=lambda: ["recorded:svamp-palm-cot"])  # CoT teachers
    pot: list[str] = dataclasses.field(default_factory=lambda: ["recorded:svamp-codex-pot"])  # PoT teachers
    n: int = 1  # samples per problem and mode (live teachers)
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
        if self.n < 1:
            raise ValueError(f"teacher.n must be >= 1, got {self.n}")
        for field in ("cot", "pot", "live"):
            specs = getattr(self, field)
            if isinstance(specs, str):
                specs = [specs]
                setattr(self, field, specs)
            if not isinstance(specs, list):
                raise ValueError(f"teacher.{field} must be a list of teacher specs, got {type(specs).__name__}")
            for spec in specs:
                try:
                    modes = spec_modes(spec)
                except ValueError as exc:
                    raise ValueError(f"teacher.{field}: {exc}") from None
                if field in ("cot", "pot") and field not in modes:
                    raise ValueError(f"teacher.{field}: {spec!r} writes only {'/'.join(modes)} rationales")
        if self.temperature < 0:
            raise ValueError(f"teacher.temperature must be >= 0, got {self.temperature}")
        # recorded and annotation teachers replay what they hold: n counts their stored samples, at any temperature
        called = [spec for spec in self.cot + self.pot + self.live if parse_spec(spec)[0] in ("hf", "openai")]
        if self.n > 1 and self.temperature == 0 and called:
            raise ValueError(f"teacher.n > 1 needs teacher.temperature > 0 for the live teacher(s) {called} "
                             "(greedy samples are all the same)")
        if self.shots is not None and not 0 <= self.shots <= len(prompts.EXEMPLARS):
            raise ValueError(f"teacher.shots must be 0..{len(prompts.EXEMPLARS)} or null, got {self.shots}")
        for field in ("live_problems", "max_tokens", "concurrency", "batch_size"):
            if getattr(self, field) < (0 if field == "live_problems" else 1):
                raise ValueError(f"teacher.{field} must be positive, got {getattr(self, field)}")
        if self.api not in CHAT_API:
            raise ValueError(f"teacher.api must be one of {CHAT_API}, got {self.api!r}")
        if self.timeout <= 0:
            raise ValueError(f"teacher.timeout must be > 0, got {self.timeout}")
        if isinstance(self.prices, dict):
            try:
                load_prices(self.prices)
            except TeacherError as exc:
                raise ValueError(f"teacher.prices: {exc}") from None
        elif self.prices is not None and not isinstance(self.prices, str):
            raise ValueError(f"teacher.prices must be a mapping or a file path, got {type(self.prices).__name__}")

    def teacher(self, spec: str) -> Teacher:
        """The teacher for one spec, with this config's options."""
        return from_spec(spec, concurrency=self.concurrency, api=self.api, prices=self.prices,
                         timeout=self.timeout, batch_size=self.batch_size, shots=self.shots)


# ---------------------------------------------------------------------------------- generate

def _records_by_id(store: runs.JsonlStore) -> dict[str, dict]:
    return {r["id"]: r for r in store.read() if isinstance(r, dict) and "id" in r}


def load(run_dir: str | os.PathLike) -> list[Rationale]:
    """Every rationale in ``run_dir/rationales.jsonl`` (one per id, in file order)."""
    records = _records_by_id(runs.JsonlStore(Path(run_dir) / RATIONALES_FILE))
    return [Rationale.from_dict(r) for r in records.values()]


def _finish(completions: list[Completion], exec_timeout: float) -> list[dict]:
    """Clean, then score (``answers.score``), and build the record fields (no ids yet) for a chunk."""
    out: list[dict] = []
    for c in completions:
        raw = c.raw or ""
        text = "" if c.status == "api_error" else c.text if c.text is not None else (
            clean_cot(raw) if c.mode == "cot" else answers.clean_program(raw))
        out.append({"completion": c, "raw": raw, "text": text, "answer": None, "status": c.status, "error": c.error})
    scorable = [row for row in out if row["status"] != "api_error"]
    scored = answers.score([row["text"] for row in scorable], [row["completion"].mode for row in scorable],
                           timeout=exec_timeout)
    for row, s in zip(scorable, scored):
        row.update(answer=s.answer, status=s.status, error=s.error)
    return out


def generate(teacher: Teacher | str, problems: Sequence[Problem], mode: str, *, n: int = 1,
             temperature: float = 0.0, seed: int = 0, run_dir: str | os.PathLike, max_tokens: int = 256,
             progress: bool = True, exec_timeout: float = 3.0) -> list[Rationale]:
    """Rationales of one teacher for problems x n samples in one mode, cached in ``run_dir``.

    Returns one ``Rationale`` per (problem, sample) the teacher covers, in problem order then
    sample order: those already in ``run_dir/rationales.jsonl`` (no teacher call) and the new
    ones, each appended to the file as soon as it is done. An empty ``problems`` raises
    ``ValueError``. A recorded teacher yields at most the samples its source has and nothing
    for problems it does not cover (a warning says how many). Requests that fail after every
    retry are not written; ``TeacherError`` names them at the end and a rerun asks again.
    """
    if isinstance(teacher, str):
        teacher = from_spec(teacher)
    if mode not in prompts.MODES:
        raise ValueError(f"mode must be one of {prompts.MODES}, got {mode!r}")
    if not teacher.supports(mode):
        raise ValueError(f"{teacher.name} does not write {mode} rationales")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if teacher.live and n > 1 and temperature == 0:
        raise ValueError(f"n={n} samples with temperature 0 would all be the same greedy answer; "
                         "set temperature > 0 (e.g. 0.7) or n=1")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    problems = list(problems)
    if not problems:
        raise ValueError("generate() got no problems; check the dataset split and limit (data.load(name, split, "
                         "limit=...)) that produced the list")
    by_id: dict[str, Problem] = {}
    for p in problems:
        by_id.setdefault(p.id, p)
    if len(by_id) < len(problems):
        warnings.warn(f"{len(problems) - len(by_id)} duplicate problem ids ignored", stacklevel=2)
    run_dir = runs.run_dir(run_dir)
    store = runs.JsonlStore(run_dir / RATIONALES_FILE)
    existing = _records_by_id(store)

    params = teacher.key_params(temperature=temperature, max_tokens=max_tokens)
    key_seed = seed if teacher.live else None
    plan: list[str] = []  # every key this call returns, in order
    meta: dict[tuple[str, int], tuple[str, str]] = {}  # (problem_id, sample) -> (key, prompt hash)
    requests: list[Request] = []
    missed = 0
    for pid, problem in by_id.items():
        available = teacher.available(problem, mode)
        count = n if available is None else min(n, available)
        if count == 0:
            missed += 1
            continue
        phash = teacher.prompt_hash(problem, mode)
        todo = []
        for sample in range(count):
            key = cache_key(teacher.name, phash, mode, pid, params, key_seed, sample)
            plan.append(key)
            meta[(pid, sample)] = (key, phash)
            if key not in existing:
                todo.append(sample)
        if todo:
            requests.append(Request(problem, mode, todo, temperature, max_tokens, seed))
    if missed:
        warnings.warn(f"{teacher.name}: no rationale for {missed} of {len(by_id)} problems (not covered by the "
                      "source)" if not teacher.live else f"{teacher.name}: {missed} problems skipped", stacklevel=2)

    pending = sum(len(r.samples) for r in requests)
    failures: list[Completion] = []
    cost = sum(existing[k].get("cost", 0.0) or 0.0 for k in plan if k in existing)
    if pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=pending, desc=f"{teacher.name} {mode}", unit="rationale", disable=not progress,
                   dynamic_ncols=True)
        bar.set_postfix(cost=f"${cost:.4f}")
        try:
            for chunk in teacher.run(requests):
                good = [c for c in chunk if not c.failed]
                failures.extend(c for c in chunk if c.failed)
                records = []
                for row in _finish(good, exec_timeout):
                    c: Completion = row["completion"]
                    key, phash = meta[(c.problem_id, c.sample)]
                    if key in existing:
                        continue
                    record = Rationale(
                        id=key, problem_id=c.problem_id, mode=mode, text=row["text"], teacher=teacher.name,
                        sample=c.sample, answer=row["answer"], status=row["status"],
                        dataset=by_id[c.problem_id].dataset, raw=None if row["raw"] == row["text"] else row["raw"],
                        prompt_hash=phash, params={**params, **c.params}, seed=key_seed, tokens=c.tokens,
                        cost=c.cost, error=row["error"], finish_reason=c.finish_reason, created=time.time())
                    records.append(dataclasses.asdict(record))
                    existing[key] = records[-1]
                    cost += c.cost
                store.extend(records)
                bar.update(len(chunk))
                bar.set_postfix(cost=f"${cost:.4f}")
        finally:
            bar.close()
        _note_manifest(run_dir, teacher, mode, n=n, temperature=temperature, seed=key_seed, params=params,
                       written=pending - len(failures), missed=missed)
    if failures:
        errors = sorted({f.error or "unknown" for f in failures})
        raise TeacherError(f"{teacher.name}: {len(failures)} of {pending} rationales failed after "
                           f"retries ({'; '.join(errors[:3])}). The other rationales are saved in "
                           f"{store.path}; run generate() again to retry only the failed ones.")
    return [Rationale.from_dict(existing[k]) for k in plan if k in existing]


def _note_manifest(run_dir: Path, teacher: Teacher, mode: str, **fields: Any) -> None:
    section = runs.read_manifest(run_dir).get("stages", {}).get("teachers", {})
    calls = dict(section.get("calls", {}))
    calls[f"{teacher.name}|{mode}"] = fields
    runs.update_manifest(run_dir, "teachers", calls=calls)


# ------------------------------------------------------------------------- profile & tables

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
                out += generate(teacher, problems, mode, **_common(config, run_dir, progress))
    if live:
        out += generate_live(config, problems, run_dir, progress=progress)
    return out


def generate_live(config: TeacherConfig, problems: Sequence[Problem], run_dir: str | os.PathLike, *,
                  progress: bool = True) -> list[Rationale]:
    """The config's ``live`` teachers, both modes, on the first ``live_problems`` problems."""
    out: list[Rationale] = []
    subset = list(problems)[:config.live_problems]
    for spec in config.live if subset else []:
        teacher = config.teacher(spec)
        for mode in prompts.MODES:
            out += generate(teacher, subset, mode, **_common(config, run_dir, progress))
    return out


def _common(config: TeacherConfig, run_dir, progress: bool) -> dict:
    return dict(n=config.n, temperature=config.temperature, seed=config.seed, run_dir=run_dir,
                max_tokens=config.max_tokens, progress=progress)


def table(rationales: Sequence[Rationale], problems: Sequence[Problem] | None = None):
    """One row per rationale (pandas), with ``correct`` against the gold answer when problems are given.

    ``text`` is on one line (line breaks shown as ``⏎``) so that a table cell shows it; ``load`` has the
    rationales as written."""
    import pandas as pd

    gold = {p.id: p for p in problems or ()}
    rows = []
    for r in rationales:
        row = {"teacher": r.teacher, "mode": r.mode, "problem_id": r.problem_id, "sample": r.sample,
               "status": r.status, "answer": r.answer, "cost": r.cost,
               "tokens": sum((r.tokens or {}).values()), "text": r.text.strip().replace("\n", " ⏎ ")}
        if r.problem_id in gold:
            row["gold"] = gold[r.problem_id].answer
            row["correct"] = answers.same(r.answer, gold[r.problem_id].answer)
        rows.append(row)
    # fixed columns, so that selecting them works on an empty table too (a profile without live teachers)
    columns = ["teacher", "mode", "problem_id", "sample", "status", "answer", "cost", "tokens", "text"]
    return pd.DataFrame(rows, columns=columns + (["gold", "correct"] if problems else []))


def summary(rationales: Sequence[Rationale], problems: Sequence[Problem]):
    """Per teacher and mode: rationales, problems covered and missed, statuses, raw accuracy, cost."""
    import pandas as pd

    df = table(rationales, problems)
    if df.empty:
        return pd.DataFrame(columns=["teacher", "mode", "rationales", "problems", "missed", "ok", "correct",
                                     "accuracy", "cost"])
    ids = {p.id for p in problems}
    rows = []
    for (teacher, mode), group in df.groupby(["teacher", "mode"], sort=False):
        covered = group["problem_id"].nunique()
        asked = len(ids) if not teacher.startswith(("hf:", "openai:")) else covered
        rows.append({"teacher": teacher, "mode": mode, "rationales": len(group), "problems": covered,
                     "missed": max(0, asked - covered), "ok": int((group["status"] == "ok").sum()),
                     "correct": int(group.get("correct", pd.Series(dtype=bool)).sum()),
                     "accuracy": round(float(group.get("correct", pd.Series(dtype=bool)).mean()), 3),
                     "statuses": ", ".join(f"{k} {v}" for k, v in group["status"].value_counts().items()),
                     "cost": float(group["cost"].sum())})
    return pd.DataFrame(rows)


def side_by_side(rationales: Sequence[Rationale], problems: Sequence[Problem], *, k: int = 3,
                 problem_ids: Sequence[str] | None = None):
    """A few problems as rows, one column per teacher and mode (sample 0): the rationale and its answer.

    Without ``problem_ids``, the first problems answered by the most teachers (so a live teacher's
    few problems show next to the recorded ones).
    """
    import pandas as pd

    by_problem: dict[str, dict[str, Rationale]] = defaultdict(dict)
    for r in rationales:
        if r.sample == 0:
            by_problem[r.problem_id][f"{r.teacher} · {r.mode}"] = r
    order = {p.id: i for i, p in enumerate(problems)}
    if problem_ids is None:
        candidates = [pid for pid in by_problem if pid in order]
        problem_ids = sorted(candidates, key=lambda pid: (-len(by_problem[pid]), order[pid]))[:k]
    gold = {p.id: p for p in problems}
    columns = sorted({c for pid in problem_ids for c in by_problem.get(pid, {})},
                     key=lambda c: (c.rsplit(" · ", 1)[1], c))
    rows = []
    for pid in problem_ids:
        row = {"problem": pid, "question": gold[pid].question if pid in gold else "",
               "gold": fmt_number(gold[pid].answer) if pid in gold else ""}
        for column in columns:
            r = by_problem.get(pid, {}).get(column)
            row[column] = "" if r is None else (
                f"{r.text}\n\u2192 {fmt_number(r.answer) if r.answer is not None else '-'} ({r.status})")
        rows.append(row)
    return pd.DataFrame(rows).set_index("problem")

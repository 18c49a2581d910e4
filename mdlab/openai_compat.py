"""Teachers (and served students) behind an OpenAI-compatible HTTP API: OpenAI, vLLM, ``transformers serve``.

One request is ``OpenAICompatible._run.ask``: the official async ``openai`` client sends it and retries
408/409/429/5xx, timeouts and dropped connections itself (``max_retries``, honouring Retry-After);
``tenacity`` retries only what the SDK cannot see, a 200 without a completion in it. A 400/422 is
recorded as ``api_error``; a 401/403/404 stops the run. ``n`` samples go in one request while the
server honours ``n`` (``transformers serve`` does not: then one request per sample). The key comes
from an environment variable only and is never stored or shown. ``teachers.OpenAICompatible`` is
this class; ``evaluate.OpenAIBackend`` builds on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import queue
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal
from urllib.parse import urlparse

from mdlab import prompts
from mdlab.data import Problem
from mdlab.teachers import CHAT_API, Completion, Request, TeacherError, derive_seed

OPENAI_URL = "https://api.openai.com/v1"

def load_prices(prices: str | os.PathLike | dict | None) -> dict[str, dict[str, float]]:
    """USD per million tokens per model, ``{"gpt-4o-mini": {"input": 0.15, "output": 0.60}}``, from that
    mapping, a YAML/JSON file holding it, or None (every call costs 0)."""
    if isinstance(prices, (str, os.PathLike)):
        if not Path(prices).exists():
            raise TeacherError(f"price table {prices} does not exist; give a YAML/JSON file mapping model -> "
                               "{input: USD per 1M tokens, output: USD per 1M tokens}")
        import yaml

        prices = yaml.safe_load(Path(prices).read_text()) or {}
    if not isinstance(prices, (dict, type(None))):
        raise TeacherError(f"price table must map model -> {{input, output}}, got {type(prices).__name__}")
    for model, row in (prices or {}).items():
        if not isinstance(row, dict) or not {"input", "output"} <= set(row):
            raise TeacherError(f"price table entry {model!r} must have 'input' and 'output' (USD per 1M tokens), "
                               f"got {row!r}")
    return {str(m): {"input": float(r["input"]), "output": float(r["output"])} for m, r in (prices or {}).items()}


def is_loopback(base_url: str | None) -> bool:
    """A server on this machine, which needs no API key."""
    host = urlparse(base_url or "").hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Malformed(Exception):
    """The server answered 200 with something that is not a completion."""


class OpenAICompatible:
    """A teacher behind an OpenAI-compatible HTTP API (chat or legacy completions), ``concurrency`` requests
    in flight. ``prices``: see ``load_prices``. ``retries``: attempts per request in all. The key comes from
    the environment variable ``api_key_env`` only (none needed on loopback) and is never stored or shown."""

    _n_support: dict[tuple[str, str], bool] = {}  # (base_url, model) -> the server honours n; one verdict a process

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, api: Literal["chat", "completions"] = "chat",
                 prices: str | os.PathLike | dict | None = None, timeout: float = 60.0, retries: int = 6,
                 name: str | None = None, shots: int | None = None, extra_body: dict | None = None):
        if concurrency < 1 or retries < 1 or api not in CHAT_API:
            raise ValueError(f"need concurrency >= 1 (got {concurrency}), retries >= 1 (got {retries}) and api in "
                             f"{CHAT_API} (got {api!r})")
        self.model, self.base_url, self.api_key_env, self.api = model, base_url, api_key_env, api
        self.concurrency, self.timeout, self.retries, self.shots = concurrency, timeout, retries, shots
        self.prices = load_prices(prices)
        self.extra_body = extra_body or {}  # sent with every request (vLLM options, top_p, ...)
        self.name = name or f"openai:{model}"
        self.live = True
        self.requests_sent = 0  # HTTP attempts made by this object, retries included
        self._warned_price = False
        self._api_key()  # fail now, not after the first request, when the key is missing

    def __repr__(self) -> str:  # never shows the key
        return (f"OpenAICompatible(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, api={self.api!r})")

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env) or ("not-needed" if is_loopback(self.base_url) else None)
        if key is None:
            raise TeacherError(f"no API key: the environment variable {self.api_key_env} is not set, and "
                               f"{self.base_url or OPENAI_URL} is not a loopback server. Set it (export "
                               f"{self.api_key_env}=...) or pass api_key_env= naming the variable that holds the "
                               "key; keys are never read from configs or arguments.")
        return key

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
        return _iterate_async(lambda emit: self._run(requests, emit))

    async def _run(self, requests: list[Request], emit: Callable[[Completion], None]) -> None:
        import openai
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

        async def count(_request) -> None:
            self.requests_sent += 1

        # the SDK retries 408/409/429/5xx, timeouts and dropped connections, honouring Retry-After
        client = openai.AsyncOpenAI(api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout,
                                    max_retries=self.retries - 1,
                                    http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]}))
        server = (self.base_url or OPENAI_URL, self.model)
        gate = asyncio.Semaphore(self.concurrency)
        refused: list[str] = []  # a 401/403/404 refuses every request: none starts after the first

        async def ask(req: Request, samples: list[int], seed: int) -> int | None:
            """One request for ``samples`` (n = their number); emits what came back, returns how many."""
            body = {"model": self.model, "max_tokens": req.max_tokens, "temperature": req.temperature, "seed": seed,
                    **({"n": len(samples)} if len(samples) > 1 else {})}
            prompt = self.prompt(req.problem, req.mode)
            if self.api == "chat":
                path, cast_to, body["messages"] = "/chat/completions", openai.types.chat.ChatCompletion, prompt
            else:
                path, cast_to, body["prompt"], body["stop"] = ("/completions", openai.types.Completion, prompt,
                                                               prompts.STOP[req.mode][:4])
            body.update(self.extra_body)
            try:  # the SDK does not retry a 200 without a completion in it
                async for attempt in AsyncRetrying(retry=retry_if_exception_type((_Malformed, json.JSONDecodeError)),
                                                   stop=stop_after_attempt(self.retries), reraise=True,
                                                   wait=wait_exponential_jitter(initial=0.5, max=8.0)):
                    with attempt:
                        async with gate:
                            if refused:
                                raise TeacherError(refused[0])
                            try:  # the body goes as is: the SDK's type walk over it costs more CPU than the request
                                resp = await client.post(path, body=body, cast_to=cast_to)
                            except (openai.AuthenticationError, openai.PermissionDeniedError,
                                    openai.NotFoundError) as exc:
                                refused.append(f"{self.name} at {server[0]}: {_short_error(exc)}")
                                raise TeacherError(refused[0]) from None
                        choices = _choices(resp, self.api)
            except TeacherError:
                raise
            except Exception as exc:  # retries exhausted (not written), or a 400/422 refusal (recorded as api_error)
                transient = not isinstance(exc, openai.APIStatusError) or exc.status_code in (408, 409, 429) \
                    or exc.status_code >= 500
                for s in samples:
                    emit(Completion(req.problem.id, req.mode, s, raw=None if transient else "",
                                    status=None if transient else "api_error", error=_short_error(exc),
                                    params={"request_seed": seed}, failed=transient))
                return None
            usage = getattr(resp, "usage", None)
            got = min(len(choices), len(samples))
            prompt_tokens = _split(getattr(usage, "prompt_tokens", 0), got)
            completion_tokens = _split(getattr(usage, "completion_tokens", 0), got)
            for i, (text, finish) in enumerate(choices[:got]):
                cost = self._price(prompt_tokens[i], completion_tokens[i])
                emit(Completion(req.problem.id, req.mode, samples[i], raw=text, finish_reason=finish, cost=cost,
                                tokens={"prompt": prompt_tokens[i], "completion": completion_tokens[i]} if usage else {},
                                params={"request_seed": seed, "request_n": len(samples)}))
            return got

        async def answer(req: Request) -> None:
            """All missing samples of one problem: n in one request unless the server is known to ignore n."""
            samples = list(req.samples)
            if len(samples) > 1 and self._n_support.get(server, True):
                got = await ask(req, samples, derive_seed(req.seed, req.problem.id, req.mode, "n", samples[0]))
                if got is None:
                    return
                self._n_support[server] = got == len(samples)
                samples = samples[got:]
            await asyncio.gather(*(ask(req, [s], derive_seed(req.seed, req.problem.id, req.mode, s)) for s in samples))

        tasks = [asyncio.ensure_future(answer(req)) for req in requests]
        try:
            await asyncio.gather(*tasks)
        finally:  # a refusal or a cancelled run: stop the others
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    def _price(self, prompt_tokens: int, completion_tokens: int) -> float:
        row = self.prices.get(self.model)
        if row is None and self.prices and not self._warned_price:
            warnings.warn(f"no price for model {self.model!r} in the price table; its cost counts as 0", stacklevel=2)
            self._warned_price = True
        return 0.0 if row is None else (prompt_tokens * row["input"] + completion_tokens * row["output"]) / 1e6


def _choices(resp, api: str) -> list[tuple[str, str | None]]:
    """(text, finish_reason) of each choice, in index order; ``_Malformed`` when there is no completion."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Malformed(f"no choices in the response: {str(resp)[:200]!r}")
    out = []
    for choice in sorted(choices, key=lambda c: getattr(c, "index", 0) or 0):
        holder = getattr(choice, "message", None) if api == "chat" else choice
        text = getattr(holder, "content" if api == "chat" else "text", None)
        if holder is None or not isinstance(text, (str, type(None))):
            raise _Malformed(f"a choice without a {'message' if api == 'chat' else 'text'}: {str(choice)[:200]!r}")
        out.append((text or "", getattr(choice, "finish_reason", None)))
    return out


def _split(total: int | None, parts: int) -> list[int]:
    """Token counts of one request shared out over its choices."""
    base, extra = divmod(int(total or 0), max(1, parts))
    return [base + (i < extra) for i in range(max(1, parts))]


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 500 else text[:497] + "..."


def _iterate_async(start: Callable[[Callable[[Completion], None]], Any]) -> Iterator[list[Completion]]:
    """Run ``start(emit)`` in an event loop of its own thread, and yield what it emits in chunks.

    A thread of its own makes this work from scripts and from Jupyter (whose loop is already running).
    """
    items: queue.Queue = queue.Queue()
    done = object()
    loop = asyncio.new_event_loop()
    task = loop.create_task(start(items.put))
    error: list[BaseException] = []

    def worker() -> None:
        try:
            loop.run_until_complete(task)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            error.append(exc)
        finally:
            loop.close()
            items.put(done)

    thread = threading.Thread(target=worker, name="mdlab-teacher", daemon=True)
    thread.start()
    finished = False
    try:
        while not finished:
            chunk = [items.get()]
            while not items.empty():
                chunk.append(items.get_nowait())
            finished = chunk[-1] is done
            if chunk := [c for c in chunk if c is not done]:
                yield chunk
        if error and not isinstance(error[0], asyncio.CancelledError):
            raise error[0]
    finally:
        if not finished:  # the consumer stopped early (an exception, a KeyboardInterrupt): cancel
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass
            thread.join(timeout=10)

"""Where model texts come from: the one local engine (``HFBackend``), a served model, vLLM.

Students (``evaluate``) and the local teacher (``teachers.HFLocal``) both hand ``HFBackend`` a list
of ``Job``s (a prompt, the indices of its missing paths and one seed per path) and get one
``Completion`` per path back. It is a small decode loop rather than ``model.generate`` because:
a prompt's k paths share one prefill (its KV cache is copied to each row); a finished path leaves
the batch at once and the next prompts are prefilled into the freed rows (continuous batching);
and every sampled path owns a ``random.Random(seed)`` that draws one uniform per token, picking the
token by inverting the cumulative softmax(logits / T) after the top-p cut, so no other path, batch
size or problem order moves its stream. Greedy paths (seed None) take the argmax.

Reproducible: same jobs, batch size, model, versions, device and threads give bit-identical paths.
Another batch shape changes a path only where last-bit rounding of batched matrix products moves a
uniform across a boundary of the cumulative distribution (~1e-6): rare for trained models, a few
paths in a hundred for the near-uniform test model. A path ends at EOS (the tokenizer's and the
generation config's ids), at ``max_new_tokens``, or at a stop string (the text is cut there).
``OpenAIBackend`` (a served student, the teachers' client) and ``VLLMBackend`` take the same jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mdlab import prompts, teachers

# where an under-trained student runs on into a new problem: stop and cut there
STOP = ("\nQuestion:", *(f"\n[{m.upper()}]" for m in prompts.MODES))


@dataclasses.dataclass
class Job:
    """One prompt's missing paths."""

    problem: Any  # data.Problem
    mode: str
    prompt: str  # the text the model continues
    indices: list[int]  # path indices (-1 = greedy)
    seeds: list[int | None]  # per-path seeds (None = greedy), from sample_seed


@dataclasses.dataclass
class Completion:
    text: str  # generated text, cut at a stop string, without EOS
    tokens: int  # generated tokens (EOS included)
    finish: str  # "eos" | "stop" | "length"
    seed: int | None = None  # the seed actually used (a server backend may derive its own)
    error: str | None = None  # set when the backend could not produce this path (written, no vote)


def sample_seed(seed: int, problem_id: str, mode: str, index: int) -> int:
    """The seed of one sampled path: a hash of the base seed, problem, mode and index (63 bits)."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{mode}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def cut_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def mergeable(cache) -> bool:
    """Whether ``merge`` / ``trim`` may edit this KV cache: a ``DynamicCache`` of plain ``DynamicLayer``s.

    transformers has no public call that concatenates two caches along the batch or drops leading
    columns, so those two set ``layer.keys`` / ``layer.values``: all a ``DynamicLayer`` holds (its
    length is read from ``keys``). Sliding-window, quantized or static layers keep more state; a
    model using them decodes its prompts one admission at a time instead. Pinned by a test.
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def merge(cache, mask, new_cache, new_mask):
    """Append the rows of ``new_cache`` to ``cache``, left-padding the shorter one (and its mask)."""
    import torch
    import torch.nn.functional as F

    width = max(mask.shape[1], new_mask.shape[1])
    pad_a, pad_b = width - mask.shape[1], width - new_mask.shape[1]
    for layer, new in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([F.pad(layer.keys, (0, 0, pad_a, 0)), F.pad(new.keys, (0, 0, pad_b, 0))])
        layer.values = torch.cat([F.pad(layer.values, (0, 0, pad_a, 0)), F.pad(new.values, (0, 0, pad_b, 0))])
    return cache, torch.cat([F.pad(mask, (pad_a, 0)), F.pad(new_mask, (pad_b, 0))])


def trim(cache, mask):
    """Drop leading KV columns no live row attends to (the left padding of rows now gone)."""
    used = mask.any(0)
    first = int(used.nonzero()[0]) if bool(used.any()) else 0
    if first > 0:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        mask = mask[:, first:]
    return mask


def pick(logits, greedy, streams, temperature: float, top_p: float):
    """Next token per row: argmax for greedy rows, else inverse-CDF sampling on the row's own stream."""
    import torch

    best = logits.argmax(-1)
    if temperature == 0 or bool(greedy.all()):
        return best
    probs = torch.softmax(logits / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # drop the tail beyond top_p, keeping the token that crosses it
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    # one uniform per row and step, from the row's own random.Random(seed): nothing else moves it
    u = torch.tensor([s.random() if s is not None else 0.0 for s in streams], device=logits.device)
    drawn = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    drawn = drawn.clamp(max=probs.shape[-1] - 1)
    if order is not None:
        drawn = order.gather(1, drawn.unsqueeze(1)).squeeze(1)
    return torch.where(greedy, best, drawn)


class HFBackend:
    """A transformers model: shared prefill, per-path random streams, continuous batching.

    ``stop``: the default stop strings of ``stream``; ``special_tokens``: whether the tokenizer adds
    its BOS to prompts (False for chat-template prompts, which carry their own).
    """

    def __init__(self, model, tokenizer, tag: str, *, batch_rows: int = 64, stop: Sequence[str] = (),
                 special_tokens: bool = True):
        import torch

        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.tag, self.batch_rows = model, tokenizer, tag, batch_rows
        self.stop, self.special_tokens = tuple(stop), special_tokens
        self.device = next(model.parameters()).device
        ends = {tokenizer.eos_token_id}
        generation_ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ends.update(generation_ends if isinstance(generation_ends, (list, tuple)) else [generation_ends])
        self.eos = torch.tensor(sorted(e for e in ends if e is not None), device=self.device)
        # transformers 5.24 renamed the KV cache's keyword and output field `past_key_values` to `cache`
        forward = inspect.signature(model.forward).parameters
        self.cache_key = "cache" if "cache" in forward else "past_key_values"

    def prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=self.special_tokens).input_ids)

    def _forward(self, cache, **inputs):
        out = self.model(**{self.cache_key: cache}, use_cache=True, logits_to_keep=1, **inputs)
        return out.logits[:, -1, :].float(), getattr(out, self.cache_key)

    def _prefill(self, jobs: list[Job]):
        """Logits, KV cache, attention mask and next positions of the paths of ``jobs`` (a prefill each)."""
        import torch

        enc = self.tokenizer([job.prompt for job in jobs], return_tensors="pt", padding=True,
                             padding_side="left", add_special_tokens=self.special_tokens).to(self.device)
        positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(None, input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                      position_ids=positions)
        owner = torch.tensor([j for j, job in enumerate(jobs) for _ in job.seeds], device=self.device)
        cache.batch_select_indices(owner)  # the paths of a prompt share its prefill
        return logits[owner], cache, enc.attention_mask[owner], positions[owner, -1] + 1

    def stream(self, jobs: list[Job], *, temperature: float, top_p: float, max_new_tokens: int,
               stop: Sequence[str] | None = None,
               batch_rows: int | None = None) -> Iterator[list[tuple[int, list[Completion]]]]:
        """Yield ``[(job index, completions), ...]`` each time some jobs have all their paths finished."""
        import torch

        stop = self.stop if stop is None else tuple(stop)
        pending = list(range(len(jobs)))
        left = {j: len(job.seeds) for j, job in enumerate(jobs)}
        done_rows: dict[int, list] = {j: [None] * len(job.seeds) for j, job in enumerate(jobs)}
        limit = batch_rows or self.batch_rows
        rows: list[tuple[int, int]] = []  # (job, slot) of each row, aligned with the tensors below
        alive: list[bool] = []  # False: finished, still in the tensors until the next compaction
        streams: list[random.Random | None] = []
        tokens: list[list[int]] = []
        logits = cache = mask = position = greedy = None
        with torch.inference_mode():
            while pending or rows:
                admit, free = [], limit - len(rows)
                while pending and (len(jobs[pending[0]].seeds) <= free or not rows and not admit):
                    free -= len(jobs[pending[0]].seeds)
                    admit.append(pending.pop(0))
                if admit and (not rows or mergeable(cache)):
                    new_logits, new_cache, new_mask, new_position = self._prefill([jobs[j] for j in admit])
                    new_rows = [(j, slot) for j in admit for slot in range(len(jobs[j].seeds))]
                    seeds = [jobs[j].seeds[slot] for j, slot in new_rows]
                    new_greedy = torch.tensor([s is None for s in seeds], device=self.device)
                    if rows:
                        cache, mask = merge(cache, mask, new_cache, new_mask)
                        logits, greedy = torch.cat([logits, new_logits]), torch.cat([greedy, new_greedy])
                        position = torch.cat([position, new_position])
                    else:
                        logits, cache, mask, position = new_logits, new_cache, new_mask, new_position
                        greedy = new_greedy
                    rows += new_rows
                    alive += [True] * len(new_rows)
                    streams += [None if s is None else random.Random(s) for s in seeds]
                    tokens += [[] for _ in new_rows]
                elif admit:  # this cache cannot take new rows: wait until the batch is empty
                    pending[:0] = admit
                nxt = pick(logits, greedy, streams, temperature, top_p)
                ended = torch.isin(nxt, self.eos).tolist()
                finished = []
                for i, token in enumerate(nxt.tolist()):
                    if not alive[i]:
                        continue
                    tokens[i].append(token)
                    finish = ("eos" if ended[i] else
                              "stop" if stop and any(s in self.tokenizer.decode(tokens[i][-8:]) for s in stop)
                              else "length" if len(tokens[i]) >= max_new_tokens else None)
                    if finish is None:
                        continue
                    alive[i], streams[i] = False, None
                    job, slot = rows[i]
                    body = tokens[i][:-1] if finish == "eos" else tokens[i]
                    text, _ = cut_stop(self.tokenizer.decode(body, skip_special_tokens=True), stop)
                    done_rows[job][slot] = Completion(text, len(tokens[i]), finish, jobs[job].seeds[slot])
                    left[job] -= 1
                    if left[job] == 0:
                        finished.append((job, done_rows.pop(job)))
                if finished:
                    yield finished
                # Finished rows leave the batch (and the KV cache) in groups: each removal copies the
                # whole cache, so a few dead rows ride along until new prompts can take their place.
                live = sum(alive)
                dead = len(rows) - live
                if dead and (live == 0 or dead >= max(1, limit // 8)
                             or (pending and limit - live >= len(jobs[pending[0]].seeds))):
                    keep = [i for i in range(len(rows)) if alive[i]]
                    index = torch.tensor(keep, device=self.device, dtype=torch.long)
                    if keep:
                        cache.batch_select_indices(index)
                        mask = trim(cache, mask[index])
                    logits, nxt, position, greedy = logits[index], nxt[index], position[index], greedy[index]
                    rows, alive = [rows[i] for i in keep], [True] * len(keep)
                    streams, tokens = [streams[i] for i in keep], [tokens[i] for i in keep]
                if not rows:
                    continue
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                logits, cache = self._forward(cache, input_ids=nxt[:, None], attention_mask=mask,
                                              position_ids=position[:, None])
                position = position + 1

    def generate(self, jobs: list[Job], *, temperature: float, top_p: float, max_new_tokens: int,
                 stop: Sequence[str] | None = None) -> list[list[Completion]]:
        """One completion per (job, seed), in job order (``stream`` collected)."""
        out: list = [None] * len(jobs)
        for finished in self.stream(jobs, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                    stop=stop):
            for job, completions in finished:
                out[job] = completions
        return out


class OpenAIBackend(teachers.OpenAICompatible):
    """A served student over an OpenAI-compatible ``/v1/completions`` API (vLLM, ``transformers serve``).

    The teachers' client (retries, API-key rules, one request per path where the server ignores
    ``n``, seeds derived per request and recorded) with the student's plain-text prompt. Note that
    ``transformers serve`` samples only when the model's generation config says ``do_sample``.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 600.0, retries: int = 6,
                 extra_body: dict | None = None):
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                         api="completions", timeout=timeout, retries=retries, name=f"openai:{model}",
                         extra_body=extra_body)
        self.tag, self.batch_rows, self._extra = self.name, 4 * concurrency, dict(extra_body or {})

    def prompt(self, problem, mode: str) -> str:
        return prompts.student_prompt(problem.question, mode)

    def prompt_length(self, prompt: str) -> int:
        return len(prompt)

    def generate(self, jobs: list[Job], *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int = 0, stop: Sequence[str] = STOP) -> list[list[Completion]]:
        self.extra_body = {**self._extra, **({"top_p": top_p} if top_p < 1 else {})}
        requests = []
        for job in jobs:
            sampled = [i for i in job.indices if i >= 0]
            if -1 in job.indices:
                requests.append(teachers.Request(job.problem, job.mode, [-1], 0.0, max_new_tokens, seed))
            if sampled:
                requests.append(teachers.Request(job.problem, job.mode, sampled, temperature, max_new_tokens,
                                                 seed))
        got = {(c.problem_id, c.sample): c for chunk in self.run(requests) for c in chunk}
        out = []
        for job in jobs:
            group = []
            for index in job.indices:
                c = got.get((job.problem.id, index))
                if c is None or c.failed:  # transport failure after retries: not written, a rerun retries it
                    group.append(None)
                    continue
                text, cut = cut_stop(c.raw or "", stop)
                finish = "length" if c.finish_reason == "length" else ("stop" if cut else "eos")
                group.append(Completion(text, int(c.tokens.get("completion", 0)), finish,
                                        None if index < 0 else c.params.get("request_seed"),
                                        error=c.error if c.status == "api_error" else None))
            out.append(group)
        return out


class VLLMBackend:
    """vLLM in-process (GPU users; ``pip install vllm``): one request per path with its own seed.

    vLLM's prefix cache and scheduler already share prefills and batch continuously, so this only
    builds requests. ``adapter`` is a LoRA directory.
    """

    def __init__(self, model: str, *, adapter: str | os.PathLike | None = None, tag: str | None = None,
                 **llm_kwargs):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError("VLLMBackend needs vLLM (pip install vllm, on a CUDA machine)") from exc
        from mdlab import models

        self._vllm = vllm
        kwargs = {"enable_prefix_caching": True, **llm_kwargs}
        if adapter is not None:
            kwargs.setdefault("enable_lora", True)
        self.llm = vllm.LLM(model=models.resolve(model), **kwargs)
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("student", 1, str(adapter))
        if tag is None and adapter is not None:
            from mdlab import students  # the tag students' samples are read by: name + training fingerprint

            tag = students._adapter_tag(Path(adapter))
        self.tag = tag or str(model)
        self.batch_rows = 4096

    def prompt_length(self, prompt: str) -> int:
        return len(prompt)

    def generate(self, jobs: list[Job], *, temperature: float, top_p: float, max_new_tokens: int,
                 stop: Sequence[str] = STOP) -> list[list[Completion]]:
        params = [self._vllm.SamplingParams(n=1, temperature=0.0 if seed is None else temperature,
                                            top_p=1.0 if seed is None else top_p, seed=seed,
                                            max_tokens=max_new_tokens, stop=list(stop))
                  for job in jobs for seed in job.seeds]
        texts = [job.prompt for job in jobs for _ in job.seeds]
        results = iter(self.llm.generate(texts, params, lora_request=self.lora, use_tqdm=False))
        out = []
        for job in jobs:
            group = []
            for seed in job.seeds:
                choice = next(results).outputs[0]
                finish = ("length" if choice.finish_reason == "length"
                          else "stop" if choice.stop_reason else "eos")
                group.append(Completion(choice.text, len(choice.token_ids), finish, seed))
            out.append(group)
        return out

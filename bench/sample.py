"""Benchmark: generated tokens/s for k sampled paths per problem on the embedded model (CPU).

Candidate: ``evaluate.HFBackend`` (one prefill per prompt shared by its k paths, prompts
batched by length, finished rows dropped from the batch). Baseline: a naive loop of one
``model.generate`` per path (batch 1, what a first implementation does). Optionally also
transformers' own batched ``generate(num_return_sequences=k)`` over the same prompts.
All in one run on the same model, in alternating rounds, so a change in machine load hits
every method alike; the load average is printed per round to judge the noise. Not a test.

    .venv/bin/python bench/sample.py                  # k=8, 8 problems (64 paths), 64 new tokens, 3 rounds
    .venv/bin/python bench/sample.py --hf-batched     # also transformers' generate(num_return_sequences=8)
    .venv/bin/python bench/sample.py --bf16           # also mdlab's backend on bf16 weights (EvalConfig.dtype)

Every method runs on fp32 weights (the baseline) except ``mdlab_bf16``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# next to a checkout of this workplace the data is in ../shared/data (as the Makefile and the tests assume)
os.environ.setdefault("MDLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from mdlab import data, evaluate, models, prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--k", type=int, default=8, help="sampled paths per problem")
    parser.add_argument("--problems", type=int, default=8, help="SVAMP test problems for the batched runs")
    parser.add_argument("--naive-paths", type=int, default=2, help="paths the naive loop decodes per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every method once")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--mode", default="cot", choices=prompts.MODES)
    parser.add_argument("--hf-batched", action="store_true", help="also time transformers' batched generate")
    parser.add_argument("--bf16", action="store_true", help="also time mdlab's backend on bf16 weights")
    args = parser.parse_args()

    import torch

    model, tokenizer = models.load(args.model, quant="none", dtype="fp32")
    problems = data.load("svamp", "test", limit=args.problems)
    texts = [prompts.student_prompt(p.question, args.mode) for p in problems]
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, k={args.k}, {args.problems} problems, "
          f"max_new_tokens={args.max_new_tokens}, T={args.temperature}")

    engine = evaluate.backend((model, tokenizer), batch_rows=args.k * args.problems, tag=args.model)
    engine_bf16 = (evaluate.backend(models.load(args.model, quant="none", dtype="bf16"),
                                    batch_rows=args.k * args.problems, tag=args.model) if args.bf16 else None)

    def candidate(round_: int, engine=engine) -> int:
        """Shared prefill, batching, compaction (no stop strings: the baselines have none)."""
        jobs = [evaluate.Job(p, args.mode, text, list(range(args.k)),
                             [evaluate.sample_seed(round_, p.id, args.mode, i) for i in range(args.k)])
                for p, text in zip(problems, texts)]
        out = engine.generate(jobs, temperature=args.temperature, top_p=1.0,
                              max_new_tokens=args.max_new_tokens, stop=())
        return sum(c.tokens for group in out for c in group)

    def naive(round_: int) -> int:
        """One generate call per path, batch 1."""
        tokens = 0
        for i in range(args.naive_paths):
            path = round_ * args.naive_paths + i
            ids = tokenizer(texts[path // args.k % len(texts)], return_tensors="pt")
            torch.manual_seed(path)
            with torch.inference_mode():
                generated = model.generate(**ids, do_sample=True, temperature=args.temperature, top_p=1.0,
                                           top_k=0, max_new_tokens=args.max_new_tokens,
                                           pad_token_id=tokenizer.pad_token_id)
            tokens += int(_lengths(generated[:, ids.input_ids.shape[1]:], tokenizer).sum())
        return tokens

    def hf_batched(round_: int) -> int:
        """transformers' own batched generate with num_return_sequences=k (prefill repeated k times)."""
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
        torch.manual_seed(round_)
        with torch.inference_mode():
            generated = model.generate(**enc, do_sample=True, temperature=args.temperature, top_p=1.0,
                                       top_k=0, num_return_sequences=args.k,
                                       max_new_tokens=args.max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id)
        return int(_lengths(generated[:, enc.input_ids.shape[1]:], tokenizer).sum())

    methods = {"mdlab": candidate, "naive": naive}
    if args.hf_batched:
        methods["hf_batched"] = hf_batched
    if engine_bf16 is not None:
        methods["mdlab_bf16"] = lambda round_: candidate(round_, engine_bf16)
    totals = {name: [0, 0.0] for name in methods}
    # rounds alternate the methods, so a change in machine load hits all of them alike
    for round_ in range(args.rounds):
        line = []
        for name, method in methods.items():
            start = time.perf_counter()
            tokens = method(round_)
            seconds = time.perf_counter() - start
            totals[name][0] += tokens
            totals[name][1] += seconds
            line.append(f"{name} {tokens / seconds:6.1f} tok/s")
        print(f"round {round_ + 1}: " + ",  ".join(line) + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    rates = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    labels = {"mdlab": f"mdlab HFBackend (shared prefill, {args.problems * args.k} rows)",
              "naive": "naive loop, one generate per path",
              "hf_batched": f"transformers generate(num_return_sequences={args.k}), batched",
              "mdlab_bf16": "mdlab HFBackend, bf16 weights"}
    print()
    for name, (tokens, seconds) in totals.items():
        print(f"{labels[name]:<52} {tokens:7d} tokens in {seconds:6.1f} s = {rates[name]:6.1f} tokens/s")
    print(f"\nratio mdlab / naive: {rates['mdlab'] / rates['naive']:.1f}x"
          + (f";  mdlab / transformers batched: {rates['mdlab'] / rates['hf_batched']:.1f}x"
             if "hf_batched" in rates else "")
          + (f";  mdlab bf16 / mdlab fp32: {rates['mdlab_bf16'] / rates['mdlab']:.2f}x" if "mdlab_bf16" in rates else ""))


def _lengths(new_tokens, tokenizer):
    """Generated tokens per row, up to and including the first EOS (padding after it not counted)."""
    import torch

    eos = new_tokens == tokenizer.eos_token_id
    first = torch.where(eos.any(1), eos.float().argmax(1) + 1, torch.full_like(eos[:, 0], new_tokens.shape[1],
                                                                                   dtype=torch.long))
    return first


if __name__ == "__main__":
    main()

"""GPU check: sampling throughput of ``evaluate``'s transformers backend on a 4-bit 7B-shaped model.

The random Llama-2-7B-shaped model of ``bench/gpu_qlora.py`` (built there, or here when it is
missing), loaded as ``evaluate`` loads a student on a GPU: ``models.load(quant="nf4")``, NF4 +
double quantization, bf16 compute. Prompts are 48-96 made-up words of its tokenizer (no data
files on a machine without network; a random model cares only about their lengths).

Candidate: ``evaluate.HFBackend`` decoding k=16 paths for each of 32 prompts (one prefill per
prompt shared by its paths, continuous batching of ``batch_rows`` rows, the gpu profile's
128). Baseline: a naive loop of one ``model.generate`` per path (batch 1), on the first two
prompts' paths, stopped after ``--naive-seconds`` (it is the slow arm; tokens/s needs no more).
Both sample at T=0.7 with the same ``max_new_tokens`` and no stop strings; tokens are counted
up to and including EOS (a random model rarely draws it, so both arms decode about
``max_new_tokens`` per path). Each arm gets one short warm-up call first.

    python bench/gpu_sample.py [--prompts 32] [--k 16] [--max-new-tokens 64] [--naive-seconds 30] [--json out.json]

Prints tokens/s of each arm and their ratio; goal: mdlab / naive >= 5x (exit status 0, else 1).
Without CUDA it exits with status 2; ``--cpu-dry-run`` runs the same code on the small random
model (4-bit on the CPU, 3 prompts, k=2, 8 tokens) and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from gpu_qlora import LLAMA2_7B, SMALL, build_random_model, default_workdir  # also puts the repo on sys.path
from sample import _lengths

from mdlab import config, evaluate, models
from mdlab.data import Problem

GOAL_RATIO = 5.0


def make_jobs(n: int, k: int, vocab: int, seed: int = 0) -> list[evaluate.Job]:
    """``n`` prompts of random words, k sampled paths each, seeded as ``evaluate.sample`` seeds them."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        text = " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(rng.randint(48, 96)))
        problem = Problem(id=f"random-{i}", question=text, answer=0.0, equation=None, dataset="random", split="test")
        jobs.append(evaluate.Job(problem, "cot", text, list(range(k)),
                                 [evaluate.sample_seed(seed, problem.id, "cot", j) for j in range(k)]))
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=16, help="sampled paths per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-rows", type=int, default=None, help="default: the gpu profile's evaluate.batch_rows")
    parser.add_argument("--naive-prompts", type=int, default=2, help="prompts whose k paths the naive loop decodes")
    parser.add_argument("--naive-seconds", type=float, default=30.0, help="stop the naive loop after this long")
    parser.add_argument("--workdir", default=None, help="the random model (as in bench/gpu_qlora.py)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--cpu-dry-run", action="store_true", help="no GPU: the small random model, few paths")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry_run:
        print("no CUDA device: this check needs a GPU; nothing was measured", file=sys.stderr)
        return 2
    workdir = args.workdir or default_workdir()
    if args.cpu_dry_run:
        workdir += "-small"
        args.prompts, args.k, args.max_new_tokens, args.naive_prompts = 3, 2, 8, 1
    batch_rows = args.batch_rows or config.merged("gpu")[1]["evaluate"]["batch_rows"]
    shape = SMALL if args.cpu_dry_run else LLAMA2_7B
    t0 = time.perf_counter()
    model_dir = build_random_model(Path(workdir), shape, "cuda" if cuda else "cpu")
    model, tokenizer = models.load(str(model_dir), quant="nf4")
    print(f"4-bit random model from {model_dir} in {time.perf_counter() - t0:.0f} s "
          f"(4-bit: {bool(getattr(model, 'is_loaded_in_4bit', False))}); {args.prompts} prompts x k={args.k}, "
          f"max_new_tokens={args.max_new_tokens}, T={args.temperature}, batch_rows={batch_rows}", flush=True)

    engine = evaluate.backend((model, tokenizer), batch_rows=batch_rows, tag="random-7b")
    jobs = make_jobs(args.prompts, args.k, shape["vocab_size"])
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def mdlab_arm(jobs_: list[evaluate.Job], max_new_tokens: int) -> tuple[int, int]:
        # sorted by prompt length, as evaluate.sample hands them over; stop=(): the naive arm has none
        ordered = sorted(jobs_, key=lambda job: engine.prompt_length(job.prompt))
        out = engine.generate(ordered, temperature=args.temperature, top_p=1.0, max_new_tokens=max_new_tokens,
                              stop=())
        return sum(len(group) for group in out), sum(c.tokens for group in out for c in group)

    def naive_path(job: evaluate.Job, slot: int, max_new_tokens: int) -> int:
        ids = tokenizer(job.prompt, return_tensors="pt").to(model.device)
        torch.manual_seed(job.seeds[slot])
        with torch.inference_mode():
            generated = model.generate(**ids, do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        return int(_lengths(generated[:, ids.input_ids.shape[1]:], tokenizer).sum())

    warm = evaluate.Job(jobs[0].problem, "cot", jobs[0].prompt, [0, 1], jobs[0].seeds[:2])
    mdlab_arm([warm], 4)
    naive_path(jobs[0], 0, 4)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    paths, tokens = mdlab_arm(jobs, args.max_new_tokens)
    sync()
    mdlab = {"paths": paths, "tokens": tokens, "seconds": time.perf_counter() - start}
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    naive = {"paths": 0, "tokens": 0}
    start = time.perf_counter()
    for job, slot in [(j, slot) for j in jobs[:args.naive_prompts] for slot in range(len(j.seeds))]:
        naive["tokens"] += naive_path(job, slot, args.max_new_tokens)
        naive["paths"] += 1
        if time.perf_counter() - start > args.naive_seconds:
            break
    sync()
    naive["seconds"] = time.perf_counter() - start
    ratio = (mdlab["tokens"] / mdlab["seconds"]) / (naive["tokens"] / naive["seconds"])
    for arm in (mdlab, naive):
        arm["tokens_per_s"] = round(arm["tokens"] / arm["seconds"], 1)
        arm["tokens_per_path"] = round(arm["tokens"] / arm["paths"], 1)
        arm["seconds"] = round(arm["seconds"], 2)
    result = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "dry_run": args.cpu_dry_run,
              "prompts": args.prompts, "k": args.k, "max_new_tokens": args.max_new_tokens,
              "temperature": args.temperature, "batch_rows": batch_rows, "mdlab": mdlab, "naive": naive,
              "ratio": round(ratio, 2), "goal_ratio": GOAL_RATIO, "meets_goal": ratio >= GOAL_RATIO if cuda else None,
              "peak_allocated_gib": round(peak, 2) if peak is not None else None}

    print(f"\n{'arm':<44}{'paths':>6}{'tokens':>8}{'tok/path':>9}{'seconds':>9}{'tok/s':>9}")
    for name, arm in ((f"mdlab HFBackend ({batch_rows} rows, shared prefill)", mdlab),
                      ("naive loop, one generate per path", naive)):
        print(f"{name:<44}{arm['paths']:>6}{arm['tokens']:>8}{arm['tokens_per_path']:>9}{arm['seconds']:>9.1f}"
              f"{arm['tokens_per_s']:>9.1f}")
    print(f"ratio mdlab / naive: {ratio:.1f}x (goal >= {GOAL_RATIO:g}x"
          + (f": {'met' if result['meets_goal'] else 'NOT met'})" if cuda else "; cpu dry run, not a measurement)")
          + (f"; peak allocated while sampling {peak:.2f} GiB" if peak is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if not cuda:
        return 0
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())

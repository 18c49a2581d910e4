"""Training throughput on CPU: packed / length-grouped batches against naive padded batches.

Trains the embedded SmolLM2-135M with LoRA (``train.fit``, the real code path) on the same
examples from a real MD mixture -- ``--dataset svamp`` (default): PaLM CoT and Codex PoT
rationales for SVAMP train via ``teachers.Recorded``, the demo's mixture; ``--dataset gsm8k``:
CoT and PoT written from GSM8K train's reference solutions by ``teachers.Annotations``, whose
lengths spread much wider -- once per batching strategy, interleaved over ``--rounds`` rounds so
that load from other processes hits all strategies alike. Tokens/s counts real (non-pad)
tokens only, from the first step's end to the last step's end (the first step warms up).

    .venv/bin/python bench/train.py [--dataset svamp|gsm8k] [--examples 48] [--batch 8] [--rounds 2] [--threads N] [--raw]
    .venv/bin/python bench/train.py --dtypes   # packed training in fp32 against bf16 weights + bf16 autocast

Strategies (``TrainConfig.batching``): ``padded`` (random batches of ``--batch`` padded to their
longest: the naive baseline), ``padded/4`` (the same with a quarter of the batch per micro-step
and 4 accumulation steps: how much smaller micro-steps alone gain on a CPU), ``grouped``
(length-grouped batches) and ``packed`` (padding-free rows of <= max_length tokens).
Prints tokens/s per strategy (median over rounds) and the ratios to ``padded``; goal >= 1.5x.
All strategies train in fp32 so that they compare with earlier figures; ``--dtypes`` instead
compares ``packed`` in fp32 (the baseline) with ``packed`` in bf16 (``TrainConfig.dtype``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MDLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdlab import data, models, teachers, train

# name -> (batching, micro-batch divisor): "padded/4" is padded batches of batch/4 examples with 4 accumulation
# steps (same examples per optimizer step), to separate the gain of smaller micro-steps on a CPU from packing's
# name -> (batching, micro-batch divisor, dtype)
STRATEGIES = {"padded": ("padded", 1, "fp32"), "padded/4": ("padded", 4, "fp32"), "grouped": ("grouped", 1, "fp32"),
              "packed": ("packed", 1, "fp32")}
DTYPES = {"packed": ("packed", 1, "fp32"), "packed/bf16": ("packed", 1, "bf16")}


def md_examples(n: int, config: train.TrainConfig, seed: int = 0, dataset: str = "svamp") -> list[dict]:
    """``n`` MD examples (seeded choice): SVAMP's recorded PaLM CoT + Codex PoT, or GSM8K's annotations."""
    if dataset == "svamp":
        problems = data.load("svamp", "train")
        sources = [(teachers.Recorded("svamp-palm-cot"), "cot"), (teachers.Recorded("svamp-codex-pot"), "pot")]
    else:
        problems = data.load("gsm8k", "train")[:400]
        sources = [(teachers.Annotations(), "cot"), (teachers.Annotations(), "pot")]
    rationales = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for teacher, mode in sources:
            rationales += teachers.generate(teacher, problems, mode, run_dir=tmp, progress=False)
        examples = train.build_examples(rationales, problems, "md", config=config)
    examples = [ex for ex in examples if not ex["repeat"]]
    return random.Random(seed).sample(examples, n)


def padded_tokens(examples: list[dict], batch: int, seed: int) -> float:
    """Share of real tokens in random batches padded to their longest (what `padded` computes on)."""
    lengths = [ex["tokens"] for ex in examples]
    random.Random(seed).shuffle(lengths)
    padded = sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    return sum(lengths) / padded


def run_once(strategy: str, examples: list[dict], config: train.TrainConfig, variants: dict = STRATEGIES) -> dict:
    batching, divisor, dtype = variants[strategy]
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    cfg = train.TrainConfig(**{**config.__dict__, "batching": batching, "batch_size": config.batch_size // divisor,
                               "grad_accum": config.grad_accum * divisor, "dtype": dtype})
    with tempfile.TemporaryDirectory() as run:
        train.fit(cfg, examples, run, callbacks=[Clock()])
        losses = train.read_loss(run, cfg.mode)
    tokens = losses["tokens"].iloc[-1] - losses["tokens"].iloc[0]
    seconds = marks[-1] - marks[0]
    return {"strategy": strategy, "steps": len(marks), "tokens": int(losses["tokens"].iloc[-1]),
            "tokens_per_s": tokens / seconds, "final_loss": float(losses["loss"].iloc[-1])}


def raw_rate(lengths=(96, 160, 320, 640, 960), tokens: int = 1920) -> None:
    """The model's own training rate on single rows of random tokens: the ceiling any batching can reach."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = models.load("embedded")  # (model, tokenizer)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for length in lengths:
        ids = torch.randint(0, 40_000, (1, length))
        step(ids)  # warm-up
        n = max(2, tokens // length)
        start = time.perf_counter()
        for _ in range(n):
            step(ids)
        print(f"raw forward + backward + AdamW, one row of {length:4d} tokens: "
              f"{n * length / (time.perf_counter() - start):6.1f} tokens/s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("svamp", "gsm8k"), default="svamp")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=None,
                        help="default 320 for svamp (its MD examples are <= ~280 tokens), 512 for gsm8k (<= ~460)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 suffers less when other jobs share the cores")
    parser.add_argument("--raw", action="store_true", help="only the model's raw training rate per row length")
    parser.add_argument("--dtypes", action="store_true", help="packed fp32 (baseline) against packed bf16")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    max_length = args.max_length or {"svamp": 320, "gsm8k": 512}[args.dataset]
    if args.raw:
        raw_rate()
        return 0
    config = train.TrainConfig(model="embedded", mode="md", max_length=max_length, batch_size=args.batch,
                               lora_rank=16, lora_dropout=0.0, learning_rate=2e-4, save_steps=10_000, logging_steps=1)
    examples = md_examples(args.examples, config, dataset=args.dataset)
    lengths = [ex["tokens"] for ex in examples]
    print(f"model: {models.resolve('embedded')}  threads: {__import__('torch').get_num_threads()}")
    print(f"{args.dataset}: {len(examples)} MD examples ({sum(ex['mode'] == 'cot' for ex in examples)} CoT, "
          f"{sum(ex['mode'] == 'pot' for ex in examples)} PoT), tokens per example: mean "
          f"{statistics.mean(lengths):.0f}, min {min(lengths)}, max {max(lengths)}; batch {args.batch}")
    print(f"real-token share of random padded batches: {padded_tokens(examples, args.batch, 0):.2f}")
    variants = DTYPES if args.dtypes else STRATEGIES
    baseline = next(iter(variants))
    results: dict[str, list[dict]] = {s: [] for s in variants}
    for round_ in range(args.rounds):
        order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
        for strategy in order:
            row = run_once(strategy, examples, config, variants)
            results[strategy].append(row)
            print(f"round {round_ + 1} {strategy:<9} {row['steps']:>3} steps  {row['tokens_per_s']:7.1f} tokens/s  "
                  f"final loss {row['final_loss']:.3f}", flush=True)
    # the machine's load drifts: a ratio within a round (runs minutes apart) is steadier than one of medians
    print(f"\nstrategy  tokens/s (median)  vs {baseline} (median of per-round ratios)")
    for strategy in variants:
        rate = statistics.median(r["tokens_per_s"] for r in results[strategy])
        ratios = [r["tokens_per_s"] / p["tokens_per_s"] for r, p in zip(results[strategy], results[baseline])]
        print(f"{strategy:<10} {rate:16.1f}  {statistics.median(ratios):8.2f}x  "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

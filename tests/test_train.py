"""Tests for mdlab.train: example building, (Q)LoRA fit, resume after a kill, data parallel, merge.

Everything trains the tiny random Llama (``models.tiny_path()``) on rationales made from
SVAMP equations, so a fit takes seconds; the subprocess tests (kill-and-resume, torchrun / accelerate)
are marked slow.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdlab import data, models, plots, prompts, teachers, train

ROOT = Path(__file__).resolve().parent.parent


def make_inputs(n: int = 16):
    """(problems, rationales): a CoT and a PoT rationale per SVAMP train problem, from its equation."""
    problems = data.load("svamp", "train", limit=n)
    rationales = []
    for p in problems:
        rationales.append(teachers.Rationale(
            id=f"{p.id}-cot", problem_id=p.id, mode="cot", teacher="test", sample=0, answer=p.answer, status="ok",
            text=f"We need {p.equation.strip()}. That is {p.answer:g}. The answer is {p.answer:g}."))
        rationales.append(teachers.Rationale(
            id=f"{p.id}-pot", problem_id=p.id, mode="pot", teacher="test", sample=0, answer=p.answer, status="ok",
            text=f"x = {p.equation.strip()}\nans = x"))
    return problems, rationales


def tiny_config(**overrides) -> train.TrainConfig:
    values = {"model": str(models.tiny_path()), "max_length": 128, "batch_size": 2, "learning_rate": 1e-2,
              "warmup": 0, "lr_scheduler": "constant", "lora_rank": 8, "lora_dropout": 0.0, "max_steps": 6,
              "save_steps": 100, "dtype": "fp32"}  # fp32: the numerics tests compare logits tightly
    values.update(overrides)
    return train.TrainConfig(**values)


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    """One run directory with the md, cot and pot students trained for 6 steps each."""
    problems, rationales = inputs
    run = tmp_path_factory.mktemp("run")
    config = tiny_config()
    adapters = {}
    for student in train.STUDENTS:
        examples = train.build_examples(rationales, problems, student, config=config)
        adapters[student] = train.fit(config, examples, run, student=student)
    return run, config, adapters


# ------------------------------------------------------------------------------ examples

def test_build_examples_md_mixes_both_modes_with_the_shared_prompt(inputs):
    problems, rationales = inputs
    config = tiny_config()
    tokenizer = models.load_tokenizer(config.model)
    examples = train.build_examples(rationales, problems, "md", config=config)
    assert examples.counts() == {"cot": 16, "pot": 16}
    by_id = data.by_id(problems)
    for ex in examples:
        assert ex["prompt"] == prompts.student_prompt(by_id[ex["problem_id"]].question, ex["mode"])
        assert ex["completion"].endswith(tokenizer.eos_token)
        ids = tokenizer(ex["prompt"])["input_ids"] + tokenizer(ex["completion"], add_special_tokens=False)["input_ids"]
        assert ex["tokens"] == len(ids) and ids[-1] == tokenizer.eos_token_id
    for mode in ("cot", "pot"):
        single = train.build_examples(rationales, problems, mode, config=config)
        assert {ex["mode"] for ex in single} == {mode} and len(single) == 16


def test_cot_weight_repeats_the_scarcer_mode(inputs):
    problems, rationales = inputs
    fewer_pot = [r for r in rationales if r.mode == "cot" or int(r.problem_id.split("-")[1]) % 4 == 0]
    n_pot = sum(r.mode == "pot" for r in fewer_pot)
    assert 0 < n_pot < 16
    even = train.build_examples(fewer_pot, problems, "md", config=tiny_config(cot_weight=0.5))
    assert sum(ex["mode"] == "pot" for ex in even) == 16
    repeats = [ex for ex in even if ex["repeat"]]
    assert len(repeats) == 16 - n_pot and {ex["mode"] for ex in repeats} == {"pot"}
    cot_heavy = train.build_examples(rationales, problems, "md", config=tiny_config(cot_weight=0.75))
    counts = cot_heavy.counts()
    assert counts["cot"] + counts.get("cot+repeat", 0) == 48 and counts["pot"] == 16


def test_per_problem_and_max_problems_limit_the_examples(inputs):
    problems, rationales = inputs
    extra = [teachers.Rationale(id=f"{r.id}-s1", problem_id=r.problem_id, mode=r.mode, text=r.text + " Done.",
                                teacher="test", sample=1, answer=r.answer, status="ok") for r in rationales]
    everything = train.build_examples(rationales + extra, problems, "cot", config=tiny_config())
    assert len(everything) == 32
    one = train.build_examples(rationales + extra, problems, "cot", config=tiny_config(per_problem=1))
    assert len(one) == 16 and all(ex["rationale_id"].endswith("-cot") for ex in one)
    few = train.build_examples(rationales, problems, "md", config=tiny_config(max_problems=5))
    assert len({ex["problem_id"] for ex in few}) == 5 and len(few) == 10
    other = [teachers.Rationale(id=f"{r.id}-o", problem_id=r.problem_id, mode=r.mode, text=r.text + " Other.",
                                teacher="other", sample=0, answer=r.answer, status="ok") for r in rationales]
    only = train.build_examples(rationales + other, problems, "md", config=tiny_config(teachers=["other"]))
    assert len(only) == 32 and {ex["teacher"] for ex in only} == {"other"}
    with pytest.raises(ValueError, match="train.teachers"):
        tiny_config(teachers="other")


def test_too_long_and_unknown_rationales_are_reported_not_trained(inputs):
    problems, rationales = inputs
    long_one = teachers.Rationale(id="long", problem_id=problems[0].id, mode="cot", text="word " * 300,
                                  teacher="test", sample=1, answer=1.0, status="ok")
    stranger = teachers.Rationale(id="stranger", problem_id="chal-999999", mode="cot", text="The answer is 1.",
                                  teacher="test", sample=0, answer=1.0, status="ok")
    with pytest.warns(UserWarning, match=r"too_long: 1 \(e.g. long\).*unknown|unknown_problem: 1 \(e.g. stranger\)"):
        examples = train.build_examples(rationales + [long_one, stranger], problems, "cot", config=tiny_config())
    assert examples.dropped["too_long"] == ["long"] and examples.dropped["unknown_problem"] == ["stranger"]
    assert "long" not in {ex["rationale_id"] for ex in examples} and len(examples) == 16


def test_empty_or_all_filtered_training_sets_are_clear_errors(inputs, tmp_path):
    problems, rationales = inputs
    with pytest.raises(train.TrainError, match="no training examples"):
        train.build_examples([], problems, "md", config=tiny_config())
    with pytest.warns(UserWarning, match="too_long: 16"), pytest.raises(train.TrainError, match="max_length"):
        train.build_examples(rationales, problems, "pot", config=tiny_config(max_length=20))
    with pytest.raises(train.TrainError, match="training set is empty"):
        train.fit(tiny_config(), [], tmp_path)
    examples = train.build_examples(rationales, problems, "cot", config=tiny_config())
    with pytest.raises(train.TrainError, match="longer than max_length=40"):
        train.fit(tiny_config(max_length=40), examples, tmp_path, student="cot")
    with pytest.raises(train.TrainError, match="mode"):
        train.fit(tiny_config(), examples, tmp_path, student="pot")
    assert not (tmp_path / "students").exists()  # nothing half-written


def test_config_validation():
    with pytest.raises(ValueError, match="cot_weight"):
        train.TrainConfig(cot_weight=1.0)
    with pytest.raises(ValueError, match="students"):
        train.TrainConfig(students=["md", "gsm"])
    with pytest.raises(ValueError, match="batching"):
        train.TrainConfig(batching="bucketed")
    with pytest.raises(ValueError, match=r"train.dtype must be one of \('auto', 'bf16', 'fp16', 'fp32'\), got 'int8'"):
        train.TrainConfig(dtype="int8")  # the choices come from the Literal annotation
    with pytest.raises(ValueError, match="train.students must be a non-empty list"):
        train.TrainConfig(students=[])


def test_fingerprint_is_the_setting_not_its_spelling():
    """`epochs: 1` in a profile and the default 1.0 train the same adapter, so one is reused for the other."""
    rows = [{"input_ids": [1, 2, 3], "prompt_tokens": 2}]
    base = {"config_sha256": "c", "weights_sha256": "w"}
    one = train._fingerprint(train.TrainConfig(epochs=1), rows, base, "md")
    assert one == train._fingerprint(train.TrainConfig(epochs=1.0), rows, base, "md")
    assert one != train._fingerprint(train.TrainConfig(epochs=1.5), rows, base, "md")
    assert one != train._fingerprint(train.TrainConfig(epochs=2), rows, base, "md")


def test_bf16_training_on_cpu_keeps_lora_in_fp32_and_learns(inputs, tmp_path):
    """dtype='bf16' on a CPU: bf16 base weights, bf16 autocast, fp32 LoRA weights; the loss still falls."""
    import torch
    from safetensors.torch import load_file

    problems, rationales = inputs
    config = tiny_config(dtype="bf16")
    adapter = train.fit(config, train.build_examples(rationales, problems, "pot", config=config), tmp_path,
                        student="pot")
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    losses = train.read_loss(tmp_path, "pot")["loss"]
    assert losses.iloc[-3:].mean() < losses.iloc[0] - 0.1
    if not torch.cuda.is_available():  # CPUs have no fp16 autocast for training: a clear error, before loading
        fp16 = tiny_config(dtype="fp16")
        with pytest.raises(train.TrainError, match="fp16"):
            train.fit(fp16, train.build_examples(rationales, problems, "pot", config=fp16), tmp_path / "fp16",
                      student="pot")


# ----------------------------------------------------------------------------------- fit

def test_loss_decreases_for_every_student(trained):
    run, _, adapters = trained
    for student, adapter in adapters.items():
        losses = train.read_loss(run, student)
        assert list(losses.columns) == list(train.LOSS_FIELDS)
        assert list(losses["step"]) == list(range(1, 7))
        assert losses["tokens"].is_monotonic_increasing and losses["tokens"].iloc[0] > 0
        # step 1 is the untrained model (~ln(vocab)); single steps are noisy, so average the last three
        first, last = losses["loss"].iloc[0], losses["loss"].iloc[-3:].mean()
        assert last < first - 0.1, f"{student}: loss {first:.3f} -> {last:.3f}"
        manifest = json.loads((adapter / "manifest.json").read_text())
        assert manifest["student"] == student and manifest["steps"] == 6
        assert manifest["base"]["config_sha256"] and manifest["base"]["weights_sha256"]
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        assert not (adapter.parent / "checkpoints").exists()
    manifest = json.loads(adapters["md"].joinpath("manifest.json").read_text())
    assert manifest["by_mode"] == {"cot": 16, "pot": 16}
    table = train.summary(run)
    assert list(table["student"]) == ["md", "cot", "pot"] and (table["final_loss"] < table["first_loss"]).all()
    assert plots.loss_curves(run) == run / "figures" / "loss.png"
    assert (run / "figures" / "loss.png").stat().st_size > 1000


def test_finished_adapter_is_reused_and_a_changed_config_is_refused(trained, inputs, monkeypatch):
    from mdlab import models

    run, config, adapters = trained
    problems, rationales = inputs
    examples = train.build_examples(rationales, problems, "cot", config=config)
    before = (adapters["cot"] / "adapter_model.safetensors").stat().st_mtime_ns
    loaded = []
    monkeypatch.setattr(models, "load", lambda *a, **k: loaded.append(a) or pytest.fail("reuse loaded a model"))
    assert train.fit(config, examples, run, student="cot") == adapters["cot"]
    # bookkeeping (threads, save_steps) does not change what is trained
    assert train.fit(tiny_config(threads=1, save_steps=7), examples, run, student="cot") == adapters["cot"]
    assert not loaded  # no model load, no training
    monkeypatch.undo()
    assert (adapters["cot"] / "adapter_model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(train.TrainError, match="overwrite=True"):
        train.fit(tiny_config(learning_rate=3e-3), examples, run, student="cot")


def test_adapter_reloads_and_merges_to_the_same_logits(trained):
    import torch

    run, config, adapters = trained
    adapter = adapters["md"]
    with_adapter, tokenizer = train.load_student(adapter, dtype="fp32")
    ids = tokenizer(prompts.student_prompt("Tom has 3 apples and buys 4 more. How many now?", "pot"),
                    return_tensors="pt")["input_ids"]
    base, _ = models.load(config.model, dtype="fp32")
    with torch.no_grad():
        reference = with_adapter(ids).logits
        assert not torch.allclose(reference, base(ids).logits, atol=1e-3)  # the adapter changes the model
        merged, _ = train.merge(adapter, dtype=torch.float32)
        assert torch.allclose(merged(ids).logits, reference, atol=1e-4)
        saved, _ = train.merge(adapter, run / "merged", dtype=torch.bfloat16)
    assert next(saved.parameters()).dtype == torch.bfloat16
    reloaded, _ = models.load(str(run / "merged"))
    with torch.no_grad():
        assert (reloaded(ids).logits - reference).abs().max() < 0.5  # bf16 rounding only


def test_adapter_on_a_different_base_is_refused(trained):
    run, _, adapters = trained
    other = str(models.tiny_path(seed=1))  # same shape, other weights
    with pytest.raises(train.AdapterMismatchError, match="different weights"):
        train.load_student(adapters["cot"], model=other)
    wider = str(models.tiny_path(hidden=32))
    with pytest.raises(train.AdapterMismatchError, match="architecture"):
        train.check_base(adapters["cot"], wider)
    with pytest.raises(models.ModelError, match="not a finished mdlab adapter"):
        train.load_student(run / "students")


def test_packed_rows_give_the_same_logits_as_separate_sequences():
    """Padding-free packing on CPU: position_ids restarts must keep examples apart (SDPA mask)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tokenizer = models.load(str(models.tiny_path()), dtype="fp32")
    a = tokenizer("Tom has 3 apples.")["input_ids"]
    b = tokenizer("ans = 4 + 5 * 2 - 1")["input_ids"]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": a}, {"input_ids": b}])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    assert torch.allclose(packed[len(a):], alone_b, atol=1e-4)


@pytest.mark.slow
def test_nf4_qlora_path_runs_on_cpu(inputs, tmp_path):
    problems, rationales = inputs
    config = tiny_config(quant="nf4", max_steps=2)
    examples = train.build_examples(rationales, problems, "pot", config=config)
    adapter = train.fit(config, examples, tmp_path, student="pot")
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["quantized"] is True and manifest["steps"] == 2
    assert math.isfinite(manifest["final_loss"])


# ------------------------------------------------------------------ subprocess: kill, torchrun

CHILD = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from transformers import TrainerCallback
from test_train import make_inputs, tiny_config
from mdlab import train

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep({sleep})

class Probe(TrainerCallback):
    steps = 0
    def on_step_end(self, args, state, control, **kwargs):
        Probe.steps += 1
    def on_train_end(self, args, state, control, model=None, **kwargs):
        Probe.lora = float(sum(p.detach().double().sum() for n, p in model.named_parameters() if "lora_" in n))

problems, rationales = make_inputs()
config = tiny_config(**{overrides!r})
examples = train.build_examples(rationales, problems, "md", config=config)
adapter = train.fit(config, examples, sys.argv[1], callbacks=[Slow(), Probe()])
import torch.distributed as dist
rank = int(os.environ.get("RANK", 0))
with open(os.path.join(sys.argv[1], f"rank{{rank}}.json"), "w") as fh:
    json.dump({{"world": dist.get_world_size() if dist.is_initialized() else 1, "steps": Probe.steps,
               "lora": Probe.lora, "adapter": str(adapter)}}, fh)
"""


def _child(tmp_path: Path, sleep: float, **overrides) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests"), sleep=sleep, overrides=overrides))
    return script


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill_after_a_checkpoint_then_resume_continues_from_it(inputs, tmp_path):
    overrides = {"max_steps": 10, "save_steps": 3}
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, str(_child(tmp_path, 0.4, **overrides)), str(run)], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state = run / "students" / "md" / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    while not state.exists() and child.poll() is None:  # an event, not a time limit (pytest's --timeout guards)
        time.sleep(0.05)
    assert state.exists(), child.stderr.read().decode()[-3000:] if child.poll() is not None else "no checkpoint"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    student = run / "students" / "md"
    assert not (student / "adapter").exists()  # a killed run leaves no adapter that looks finished
    killed_at = int(train.read_loss(student)["step"].max())
    assert killed_at >= 3

    from transformers import TrainerCallback

    class Count(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            Count.steps += 1

    problems, rationales = inputs
    config = tiny_config(**overrides)
    examples = train.build_examples(rationales, problems, "md", config=config)
    adapter = train.fit(config, examples, run, callbacks=[Count()])
    manifest = json.loads((adapter / "manifest.json").read_text())
    resumed = manifest["resumed_from_step"]
    assert resumed >= 3 and resumed % 3 == 0
    assert Count.steps == 10 - resumed and manifest["steps_this_run"] == 10 - resumed
    assert list(train.read_loss(student)["step"]) == list(range(1, 11))  # no step lost or logged twice


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# accelerate's --multi_gpu launcher is torch.distributed.run underneath and works on CPU processes too (its
# --cpu multi-process path needs mpirun); fit passes use_cpu, so the processes sync gradients over gloo
LAUNCHERS = {
    "torchrun": lambda port: ["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                              "--master_port", str(port)],
    "accelerate": lambda port: ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_train_data_parallel(tmp_path, launcher):
    run = tmp_path / "run"
    script = _child(tmp_path, 0.0, max_steps=3, batching="padded", batch_size=2)
    command = LAUNCHERS[launcher](_free_port())
    command[0] = str(Path(sys.executable).with_name(command[0]))
    done = subprocess.run([*command, str(script), str(run)], env=_env(), capture_output=True, text=True,
                          timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [3, 3]
    assert ranks[0]["lora"] == pytest.approx(ranks[1]["lora"], rel=1e-6)  # gradients were synchronised
    student = run / "students" / "md"
    manifest = json.loads((student / "adapter" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    losses = train.read_loss(student)
    assert list(losses["step"]) == [1, 2, 3]  # one writer: rank 0
    assert sorted(p.name for p in student.iterdir()) == ["adapter", "loss.csv", "manifest.json"]
    # each step saw 2 examples per rank: 3 steps cover 12 of the 32 examples
    assert manifest["examples"] == 32 and abs(losses["epoch"].iloc[-1] - 12 / 32) < 0.02


# ---------------------------------------------------------------------------------- memory

def test_estimate_memory_predicts_qlora_7b_under_12_gb():
    est = models.estimate_memory("7b", seq_len=1024, batch=1, lora_rank=16, quant="nf4")
    assert 6.5e9 < est.params < 6.9e9  # Llama-2-7B has 6.74 B parameters
    assert 3.4 < est.weights / models.GiB < 4.2  # NF4 weights + 16-bit embeddings
    assert est.total_gb < 12 and est.fits(16) and not est.fits(4)
    assert est.activations < est.activations_no_checkpointing
    full = models.estimate_memory("7b", seq_len=1024, batch=1, lora_rank=16, quant="none")
    assert full.weights > 3 * est.weights and not full.fits(12)
    bigger = models.estimate_memory("7b", seq_len=2048, batch=4, lora_rank=16, quant="nf4")
    assert bigger.activations > 7 * est.activations
    assert "total on GPU" in str(est)
    # GPUs without bf16 (T4, V100) train in fp16: the same 2 bytes per value; fp32 doubles what is not 4-bit
    assert models.estimate_memory("7b", 1024, dtype="fp16").total == est.total
    wide = models.estimate_memory("7b", 1024, dtype="fp32")
    assert wide.activations == 2 * est.activations and est.weights < wide.weights < 1.5 * est.weights
    with pytest.raises(models.ModelError, match="dtype 'fp8'"):
        models.estimate_memory("7b", 1024, dtype="fp8")


def test_estimate_memory_reads_only_the_config():
    from transformers import LlamaConfig

    path = models.tiny_path()
    from_path = models.estimate_memory(str(path), 128, 2, 8, "none")
    from_config = models.estimate_memory(LlamaConfig.from_pretrained(path), 128, 2, 8, "none")
    assert from_path == from_config
    config = json.loads((path / "config.json").read_text())
    hidden, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    assert from_path.params > vocab * hidden and from_path.params < vocab * hidden + layers * 20 * hidden * hidden
    with pytest.raises(models.ModelError, match="config.json"):
        models.estimate_memory(str(path / "nowhere"), 128)


def test_oom_message_points_to_the_estimate_and_smaller_settings():
    message = models.oom_message(train.TrainConfig(model="7b", max_length=1024, batch_size=4))
    assert "estimate_memory" in message and "batch_size" in message and "max_length" in message
    assert "GiB" in message


def test_every_profile_gives_trl_a_valid_sft_config(tmp_path):
    from trl import SFTConfig

    from mdlab import config

    for name in config.PROFILES:
        kwargs = train.sft_kwargs(config.load(name).train, [100, 300], str(tmp_path), cuda=False, dtype="float32")
        args = SFTConfig(**kwargs)  # TRL's own validation of every option mdlab derives
        assert {k: getattr(args, k) for k in ("max_length", "learning_rate", "seed")} == {
            k: kwargs[k] for k in ("max_length", "learning_rate", "seed")}


def test_trainer_options_pass_through_to_sft_config(inputs, tmp_path, monkeypatch):
    import trl

    with pytest.raises(ValueError, match=r"\['max_grad_norn'\] are not trl.SFTConfig options"):
        tiny_config(trainer={"max_grad_norn": 0.3})
    with pytest.raises(ValueError, match=r"\['learning_rate'\] are set from train's own fields"):
        tiny_config(trainer={"learning_rate": 0.1})
    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Stop  # before any model loads

    problems, rationales = inputs
    config = tiny_config(trainer={"max_grad_norm": 0.3})
    examples = train.build_examples(rationales, problems, "pot", config=config)
    monkeypatch.setattr(trl, "SFTConfig", capture)
    with pytest.raises(Stop):
        train.fit(config, examples, tmp_path, student="pot")
    assert seen["max_grad_norm"] == 0.3 and seen["learning_rate"] == config.learning_rate

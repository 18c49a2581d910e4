"""MD example builder and (Q)LoRA fine-tuning of the student (notebook 03).

``build_examples`` turns curated rationales into one student's prompt-completion records; ``fit`` trains it
with TRL's ``SFTTrainer`` into ``run_dir/students/<student>/`` (``adapter/``, ``loss.csv``, ``checkpoints/``
while it runs, ``manifest.json``), resuming a killed run from its latest complete checkpoint and reusing a
finished adapter with the same fingerprint (config, data, base). Only rank 0 writes, so ``fit`` also runs
under ``torchrun``. Choices and reasons: docs/design.md ("Module notes": train, models, config, plots).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from mdlab import config as _config
from mdlab import runs

# adapters on their base model live in models; notebooks and evaluate know them by these names
from mdlab.models import AdapterMismatchError, base_fingerprint, check_base, load_student, merge  # noqa: F401

log = logging.getLogger(__name__)

Student = Literal["md", "cot", "pot"]
STUDENTS: tuple[str, ...] = get_args(Student)
MANIFEST = "manifest.json"
LOSS_CSV = "loss.csv"
LOSS_FIELDS = ("step", "epoch", "loss", "learning_rate", "tokens")
# config fields that change what is trained; the others (bookkeeping) may change between runs
_BOOKKEEPING = {"mode", "students", "save_steps", "save_total_limit", "logging_steps", "keep_checkpoints", "threads"}


class TrainError(RuntimeError):
    """Training cannot start or finish; the message says why and what to change."""


@dataclasses.dataclass
class TrainConfig:
    model: str = "embedded"  # student base: "embedded", "tiny", a hub id or a local path
    mode: Student = "md"  # the student `fit` trains when none is named (md = CoT + PoT)
    students: list[Student] = dataclasses.field(default_factory=lambda: list(STUDENTS))  # students notebook 03 trains
    seed: int = 0  # seed for example choice, data order and LoRA init
    # --- examples
    cot_weight: float = 0.5  # lambda: share of CoT among MD examples, reached by repeating the scarcer mode
    per_problem: int | None = None  # at most this many rationales per problem and mode (None = all)
    # train only on rationales of these teachers (specs as in teacher.cot / teacher.pot; None = every curated one)
    teachers: list[str] | None = None
    max_problems: int | None = None  # train on rationales of at most N problems (seeded choice; None = all)
    max_length: int = 512  # longest prompt+completion in tokens; longer examples are dropped and reported
    # --- model and LoRA
    quant: Literal["auto", "none", "nf4"] = "auto"  # auto = NF4 QLoRA on CUDA, full-precision LoRA on CPU
    # compute dtype (models.compute_dtype): auto = bf16 on GPUs that have it, else fp16 with loss scaling; on a
    # CPU bf16 weights + bf16 autocast where the CPU multiplies bf16 natively (its flags), else fp32
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    lora_rank: int = 16  # LoRA r
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    target_modules: str | list[str] = "all-linear"  # LoRA targets (peft syntax)
    # --- optimisation
    epochs: float = 1.0  # passes over the examples (ignored when max_steps is set)
    max_steps: int | None = None  # stop after this many optimizer steps (None = epochs decide)
    batch_size: int = 8  # examples per device per step (packed: about this many, by tokens)
    grad_accum: int = 1  # gradient accumulation steps
    learning_rate: float = 2e-4  # peak learning rate
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"  # schedule
    warmup: float = 0.05  # warmup: a fraction of the steps if < 1, else a number of steps
    weight_decay: float = 0.0  # AdamW weight decay
    optim: Literal["auto", "paged_adamw_8bit", "adamw_torch"] = "auto"  # auto = paged 8-bit on CUDA, AdamW on CPU
    gradient_checkpointing: bool | None = None  # None = on for CUDA (memory), off on CPU (speed)
    threads: int | None = None  # CPU threads while training (None = torch's default: one per core)
    # packed: best-fit-decreasing rows of <= max_length tokens, padding-free; grouped: length-grouped padded
    # batches; padded: random batches padded to their longest (the naive baseline of bench/train.py)
    batching: Literal["packed", "grouped", "padded"] = "packed"
    # any other trl.SFTConfig option, passed through as it is (e.g. {max_grad_norm: 0.3}); the options mdlab
    # derives from the fields above are refused here, so each setting has one name
    trainer: dict[str, Any] = dataclasses.field(default_factory=dict)
    # --- bookkeeping
    save_steps: int = 50  # checkpoint every N optimizer steps (resume point after a kill)
    save_total_limit: int = 2  # checkpoints kept on disk while training
    logging_steps: int = 1  # a loss.csv row every N steps
    keep_checkpoints: bool = False  # keep checkpoints/ after the adapter is saved

    def __post_init__(self):
        _config.check_choices(self, "train")
        if self.teachers is not None and (isinstance(self.teachers, str) or not self.teachers):
            raise ValueError(f"train.teachers must be a non-empty list of teacher specs or null, got {self.teachers!r}")
        if not 0.0 < self.cot_weight < 1.0:
            raise ValueError(f"train.cot_weight (lambda) must be strictly between 0 and 1, got {self.cot_weight}")
        _config.check_positive(self, "train", ("per_problem", "max_problems", "max_steps", "threads"), nullable=True)
        _config.check_positive(self, "train", ("max_length", "lora_rank", "batch_size", "grad_accum", "save_steps",
                                               "logging_steps", "save_total_limit"))
        if self.epochs <= 0 or self.learning_rate <= 0 or self.warmup < 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"train: need epochs > 0, learning_rate > 0, warmup >= 0 and lora_dropout in [0, 1), got "
                             f"{self.epochs}, {self.learning_rate}, {self.warmup}, {self.lora_dropout}")
        if not self.trainer:
            return
        from trl import SFTConfig  # only when used: importing trl takes seconds

        if not isinstance(self.trainer, dict):
            raise _config.ConfigError(f"train.trainer must be a mapping of trl.SFTConfig options, got {self.trainer!r}")
        unknown = sorted(set(self.trainer) - {f.name for f in dataclasses.fields(SFTConfig)})
        if unknown:
            raise _config.ConfigError(f"train.trainer: {unknown} are not trl.SFTConfig options")
        derived = sorted(set(self.trainer) & set(sft_kwargs(self, [1], "out", cuda=False, dtype="fp32")))
        if derived:
            raise _config.ConfigError(f"train.trainer: {derived} are set from train's own fields (learning_rate, "
                                      "epochs, batch_size, ...); set those instead")


# ---------------------------------------------------------------------------------- examples

class ExampleSet(list):
    """The examples (a plain list of dicts) plus what was left out and why."""

    def __init__(self, examples: Iterable[dict] = (), dropped: dict[str, list[str]] | None = None):
        super().__init__(examples)
        self.dropped: dict[str, list[str]] = dropped or {}  # reason -> rationale ids

    def counts(self) -> dict[str, int]:
        out = Counter(ex["mode"] + ("+repeat" if ex.get("repeat") else "") for ex in self)
        return {**out, **{f"dropped:{k}": len(v) for k, v in self.dropped.items() if v}}


def _encode(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(input_ids, prompt length): the prompt tokenized alone, so its tokens are the ones the student sees
    when it samples, then the completion, which always ends with the EOS id."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, len(prompt_ids)


def _report(dropped: dict[str, list[str]], where: str) -> None:
    parts = [f"{reason}: {len(ids)} (e.g. {', '.join(map(str, ids[:5]))})" for reason, ids in dropped.items() if ids]
    if parts:
        message = f"{where}: left out {sum(map(len, dropped.values()))} rationale(s) -- " + "; ".join(parts)
        log.warning(message)
        warnings.warn(message, stacklevel=3)


def build_examples(rationales, problems, mode: str = "md", *, config: TrainConfig | None = None) -> ExampleSet:
    """Prompt-completion records for one student from curated (kept) teacher rationales.

    Each record: ``prompt``, ``completion`` (rationale + EOS), ``mode`` (cot | pot), ``problem_id``,
    ``rationale_id``, ``teacher``, ``tokens`` (prompt + completion), ``prompt_tokens`` and ``repeat`` (0, or
    k for the k-th repetition made to reach ``cot_weight``). Rationales that are empty, answer a problem not
    in ``problems``, or do not fit ``config.max_length`` are left out, reported in a warning and ``.dropped``.
    """
    from mdlab import data, models, prompts, teachers

    config = config or TrainConfig()
    if mode not in STUDENTS:
        raise ValueError(f"mode must be one of {STUDENTS}, got {mode!r}")
    wanted = prompts.MODES if mode == "md" else (mode,)
    by_id = data.by_id(problems)
    dropped: dict[str, list[str]] = {"unknown_problem": [], "empty": [], "too_long": [], "over_per_problem": []}
    groups: dict[tuple[str, str], list] = {}
    for r in rationales:
        r = r if isinstance(r, teachers.Rationale) else teachers.Rationale.from_dict(r)
        if r.mode not in wanted or (config.teachers is not None and r.teacher not in config.teachers):
            continue
        if r.problem_id not in by_id:
            dropped["unknown_problem"].append(r.id)
        elif not (r.text or "").strip():
            dropped["empty"].append(r.id)
        else:
            groups.setdefault((r.problem_id, r.mode), []).append(r)

    chosen_problems = [p.id for p in problems if any((p.id, m) in groups for m in wanted)]
    if config.max_problems is not None and len(chosen_problems) > config.max_problems:
        keep = set(random.Random(config.seed).sample(chosen_problems, config.max_problems))
        chosen_problems = [pid for pid in chosen_problems if pid in keep]

    tokenizer = models.load_tokenizer(config.model)
    per_mode: dict[str, list[dict]] = {m: [] for m in wanted}
    for pid in chosen_problems:
        for m in wanted:
            group = sorted(groups.get((pid, m), []), key=lambda r: (r.sample, r.teacher, r.id))
            if config.per_problem is not None:
                dropped["over_per_problem"] += [r.id for r in group[config.per_problem:]]
                group = group[:config.per_problem]
            for r in group:
                prompt = prompts.student_prompt(by_id[pid].question, m)
                completion = r.text.strip() + tokenizer.eos_token
                ids, n_prompt = _encode(tokenizer, prompt, completion)
                if len(ids) > config.max_length:
                    dropped["too_long"].append(r.id)
                    continue
                per_mode[m].append({"prompt": prompt, "completion": completion, "mode": m, "problem_id": pid,
                                    "rationale_id": r.id, "teacher": r.teacher, "tokens": len(ids),
                                    "prompt_tokens": n_prompt, "repeat": 0})
    _report({k: v for k, v in dropped.items() if k != "over_per_problem"}, f"build_examples({mode!r})")

    if mode == "md" and all(per_mode.values()):
        per_mode = _reweight(per_mode, config.cot_weight, config.seed)
    elif mode == "md" and any(per_mode.values()):
        missing = [m for m, exs in per_mode.items() if not exs]
        warnings.warn(f"build_examples('md'): no usable {' / '.join(missing)} rationales; the MD student gets "
                      "one mode only", stacklevel=2)
    examples = [ex for m in wanted for ex in per_mode[m]]
    if not examples:
        raise TrainError(f"build_examples({mode!r}): no training examples left from {len(rationales)} rationale(s) "
                         f"and {len(problems)} problem(s) (left out: { {k: len(v) for k, v in dropped.items()} }). "
                         "Check that curation kept rationales of this mode and that max_length "
                         f"({config.max_length}) fits them.")
    return ExampleSet(examples, dropped)


def _reweight(per_mode: dict[str, list[dict]], cot_weight: float, seed: int) -> dict[str, list[dict]]:
    """Repeat examples of the scarcer mode until CoT makes up ``cot_weight`` of the examples.

    Repetition (never dropping) keeps every rationale; in expectation it weighs the two
    per-mode losses as lambda : 1 - lambda, like a weighted multi-task loss would.
    """
    n_cot, n_pot = len(per_mode["cot"]), len(per_mode["pot"])
    target_cot = max(n_cot, round(n_pot * cot_weight / (1 - cot_weight)))
    target_pot = n_pot if target_cot > n_cot else max(n_pot, round(n_cot * (1 - cot_weight) / cot_weight))
    rng = random.Random(seed)
    out = {}
    for m, target in (("cot", target_cot), ("pot", target_pot)):
        base, extra = per_mode[m], []
        while len(base) + len(extra) < target:
            order = list(range(len(base)))
            rng.shuffle(order)
            rnd = (len(base) + len(extra)) // len(base)
            extra += [{**base[i], "repeat": rnd} for i in order[:target - len(base) - len(extra)]]
        out[m] = base + extra
    return out


# ---------------------------------------------------------------------------------- fit

def student_dir(run_dir: str | os.PathLike, student: str) -> Path:
    return Path(run_dir) / "students" / student


def adapter_dir(run_dir: str | os.PathLike, student: str) -> Path:
    return student_dir(run_dir, student) / "adapter"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints with their trainer_state.json (the Trainer writes it last), oldest first."""
    found = []
    for path in folder.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            found.append((int(path.name.split("-")[1]), path))
        except (ValueError, IndexError, OSError):  # JSONDecodeError is a ValueError
            continue
    return [p for _, p in sorted(found)]


def read_loss(run_dir_or_student_dir: str | os.PathLike, student: str | None = None):
    """``loss.csv`` of a student as a DataFrame (step, epoch, loss, learning_rate, tokens)."""
    import pandas as pd

    path = (student_dir(run_dir_or_student_dir, student) if student else Path(run_dir_or_student_dir)) / LOSS_CSV
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(LOSS_FIELDS))


def _truncate_loss(path: Path, step: int) -> int:
    """Keep loss.csv rows up to ``step`` (the checkpoint resumed from); returns the last token count."""
    if not path.exists():
        return 0
    with open(path, newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("step", "").isdigit() and int(row["step"]) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return int(float(rows[-1]["tokens"] or 0)) if rows else 0


def _callbacks():
    """TrainerCallback classes, built on first use so importing mdlab.train stays light."""
    from transformers import ProgressCallback, TrainerCallback

    class Progress(ProgressCallback):
        """The tqdm bar over optimizer steps without a line (a notebook table row) per log: loss.csv has them."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class LossCSV(TrainerCallback):
        """One loss.csv row per log (rank 0), fsynced so a kill loses nothing logged; counts the steps this
        process ran (not restored ones) and their wall time."""

        def __init__(self, path: Path, tokens_before: int):
            self.path, self.tokens_before = path, tokens_before
            self.steps, self.start, self.seconds = 0, time.perf_counter(), 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            new = not self.path.exists()
            with open(self.path, "a", newline="") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(LOSS_FIELDS)
                writer.writerow([state.global_step, round(state.epoch or 0.0, 4), logs["loss"],
                                 logs.get("learning_rate"), self.tokens_before + int(logs.get("num_tokens", 0))])
                fh.flush()
                os.fsync(fh.fileno())

    return LossCSV, Progress


def _fingerprint(config: TrainConfig, rows: list[dict], base: dict, student: str) -> str:
    # adapters trained before `trainer` existed (left out when empty), or with `epochs: 1` spelled out, are reused
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in _BOOKKEEPING and (k != "trainer" or v)}
    settings["epochs"] = int(config.epochs) if float(config.epochs).is_integer() else config.epochs
    digest = hashlib.sha256(json.dumps({"settings": settings, "student": student,
                                        "base": [base.get("config_sha256"), base.get("weights_sha256")]},
                                       sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row["prompt_tokens"]]).encode())
    return digest.hexdigest()


def _tokenize_examples(examples: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
    rows, too_long, empty = [], [], []
    for i, ex in enumerate(examples):
        name = ex.get("rationale_id", i)
        if "prompt" not in ex or "completion" not in ex:
            raise TrainError(f"example {name} has no 'prompt' / 'completion'; build examples with "
                             "train.build_examples(rationales, problems, mode)")
        if not ex["completion"].replace(tokenizer.eos_token, "").strip():
            empty.append(name)
            continue
        ids, n_prompt = _encode(tokenizer, ex["prompt"], ex["completion"])
        if len(ids) > max_length:
            too_long.append((name, len(ids)))
            continue
        rows.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:], "prompt_tokens": n_prompt,
                     "mode": ex.get("mode", "")})
    if too_long:
        raise TrainError(f"{len(too_long)} example(s) are longer than max_length={max_length} tokens and would be "
                         f"truncated (e.g. {too_long[:5]}). Raise train.max_length, or build the examples with "
                         "train.build_examples(..., config=config), which leaves them out and reports them.")
    if empty:
        raise TrainError(f"{len(empty)} example(s) have an empty completion and nothing to learn "
                         f"(e.g. {empty[:5]}); drop them")
    return rows


def sft_kwargs(config: TrainConfig, lengths: Sequence[int], output_dir: str, *, cuda: bool, dtype: str,
               distributed: bool = False) -> dict[str, Any]:
    """The ``trl.SFTConfig`` options mdlab derives from ``config`` (``dtype``: bfloat16 | float16 | float32)."""
    gradient_checkpointing = cuda if config.gradient_checkpointing is None else config.gradient_checkpointing
    per_device, accum = config.batch_size, config.grad_accum
    if config.batching == "packed":
        # one padding-free row of at most max_length tokens per micro-step: SDPA attends over the whole row
        # (block-diagonal mask), so short rows keep that cost small; accumulate rows to ~batch_size examples
        per_device = 1
        accum *= max(1, round(config.batch_size * sum(lengths) / len(lengths) / config.max_length))
    return {
        "output_dir": output_dir, "seed": config.seed, "data_seed": config.seed, "report_to": "none",
        "per_device_train_batch_size": per_device, "gradient_accumulation_steps": accum,
        "learning_rate": config.learning_rate, "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup, "weight_decay": config.weight_decay,
        "num_train_epochs": config.epochs, "max_steps": config.max_steps or -1,
        "optim": config.optim if config.optim != "auto" else ("paged_adamw_8bit" if cuda else "adamw_torch"),
        "activation_checkpointing": gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if gradient_checkpointing else None,
        # autocast in the compute dtype; fp16 also turns on loss scaling (GPUs without bf16)
        "bf16": dtype == "bfloat16", "fp16": dtype == "float16", "logging_steps": config.logging_steps,
        "save_strategy": "steps", "save_steps": config.save_steps, "save_total_limit": config.save_total_limit,
        "max_length": config.max_length,
        "packing": config.batching == "packed", "packing_strategy": "bfd",
        "train_sampling_strategy": "group_by_length" if config.batching == "grouped" else "random",
        # use_cpu: without it accelerate leaves a torchrun-launched CPU job undistributed (no gradient sync)
        "use_cpu": not cuda, "ddp_backend": "gloo" if distributed and not cuda else None,
        "ddp_find_unused_parameters": False, "dataloader_num_workers": 0, "disable_tqdm": False,
        "save_only_model": False}


def _check_examples(examples: list[dict], student: str) -> None:
    if not examples:
        raise TrainError(f"no training examples for the {student!r} student: the training set is empty (all "
                         "rationales filtered out?). Check the curation output (notebook 02) and build_examples' "
                         "warnings.")
    modes = {ex.get("mode") for ex in examples} - {None}
    if student in ("cot", "pot") and modes - {student}:
        raise TrainError(f"the {student!r} student got examples of mode(s) {sorted(modes - {student})}; build them "
                         f"with train.build_examples(..., mode={student!r})")


def _prepare(out: Path, fingerprint: str, overwrite: bool) -> tuple[Path | None, int]:
    """Clear what must not be reused (all of it with ``overwrite``, checkpoints of other settings, half-written
    adapters and checkpoints); returns (the checkpoint to resume from, loss.csv's token count there)."""
    adapter, ckpt_dir, loss_path = out / "adapter", out / "checkpoints", out / LOSS_CSV
    is_main = _rank() == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for path in (adapter, ckpt_dir, loss_path):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        for stale in out.glob("adapter.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)  # a half-written adapter of a killed run
        marker = ckpt_dir / "fingerprint.txt"
        if ckpt_dir.exists() and (not marker.exists() or marker.read_text().strip() != fingerprint):
            warnings.warn(f"{ckpt_dir}: discarding checkpoints of a run with other settings or data", stacklevel=3)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
    _barrier()
    complete = _complete_checkpoints(ckpt_dir)
    resume = complete[-1] if complete else None
    _barrier()
    tokens_before = 0
    if is_main:
        for partial in ckpt_dir.glob("checkpoint-*"):  # killed mid-save: never resume from those
            if partial not in complete:
                shutil.rmtree(partial, ignore_errors=True)
        if resume:
            tokens_before = _truncate_loss(loss_path, int(resume.name.split("-")[1]))
        else:
            loss_path.unlink(missing_ok=True)
    _barrier()
    return resume, tokens_before


def fit(config: TrainConfig, examples: Sequence[dict], run_dir: str | os.PathLike, *, student: str | None = None,
        callbacks: list | None = None, overwrite: bool = False) -> Path:
    """Train one student (default ``config.mode``) on ``examples`` into ``run_dir/students/<student>/``; returns
    its adapter directory (resumed after a kill, reused when finished with the same fingerprint).
    ``callbacks``: extra ``transformers.TrainerCallback`` objects."""
    import torch

    from mdlab import models

    student = student or config.mode
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    examples = list(examples)
    _check_examples(examples, student)
    out = student_dir(run_dir, student)
    adapter, ckpt_dir = out / "adapter", out / "checkpoints"
    tokenizer = models.load_tokenizer(config.model)
    rows = _tokenize_examples(examples, tokenizer, config.max_length)
    base = base_fingerprint(config.model)
    fingerprint = _fingerprint(config, rows, base, student)

    done = runs.read_manifest(adapter)
    if done.get("fingerprint") == fingerprint and not overwrite:
        print(f"{student}: reusing the finished adapter {adapter} (same config, data and base model)")
        if not (out / MANIFEST).exists() and _rank() == 0:  # killed between the rename and this copy
            runs.write_json_atomic(out / MANIFEST, done)
        return adapter
    if done and not overwrite:
        raise TrainError(f"{adapter} holds a {student!r} student trained with other settings, data or base model; "
                         "pass overwrite=True to retrain it, or use another run directory")

    import datasets
    from peft import LoraConfig
    from transformers import set_seed
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK  # in a notebook: a table row per logged step
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    dtype = models.compute_dtype(config.dtype)
    if dtype == torch.float16 and not cuda:
        raise TrainError("train.dtype='fp16' needs a CUDA GPU (CPUs have no fp16 autocast for training); use "
                         "'auto', 'bf16' or 'fp32'")
    dtype_name, lengths = str(dtype).replace("torch.", ""), [len(r["input_ids"]) for r in rows]
    args = SFTConfig(**sft_kwargs(config, lengths, str(ckpt_dir), cuda=cuda, dtype=dtype_name,
                                  distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1), **config.trainer)
    # after SFTConfig: it has set up the process group when launched data parallel
    resume, tokens_before = _prepare(out, fingerprint, overwrite)
    resumed_from = int(resume.name.split("-")[1]) if resume else 0
    set_seed(config.seed)  # LoRA init happens in SFTTrainer.__init__, before the Trainer seeds
    model, tokenizer = models.load(config.model, quant=config.quant, dtype=config.dtype)
    model.config.use_cache = False
    peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=config.target_modules, task_type="CAUSAL_LM")
    dataset = datasets.Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    LossCSV, Progress = _callbacks()
    steps = LossCSV(out / LOSS_CSV, tokens_before)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[steps, *(callbacks or [])])
    trainer.remove_callback(DEFAULT_PROGRESS_CALLBACK)
    trainer.add_callback(Progress)
    if resume:
        print(f"{student}: resuming from {resume.name} (step {resumed_from})")
    threads = torch.get_num_threads()
    if config.threads and not cuda:
        torch.set_num_threads(config.threads)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except torch.OutOfMemoryError as exc:
        raise TrainError(models.oom_message(config)) from exc
    finally:
        torch.set_num_threads(threads)

    if _rank() == 0:
        losses = read_loss(out)
        manifest = {
            "student": student, "fingerprint": fingerprint, "base": base,
            "quantized": bool(getattr(model, "is_loaded_in_4bit", False)), "dtype": dtype_name,
            "config": dataclasses.asdict(config),
            "examples": len(rows), "by_mode": {m: sum(r["mode"] == m for r in rows) for m in ("cot", "pot")},
            "tokens": sum(lengths), "steps": trainer.state.global_step, "resumed_from_step": resumed_from,
            "steps_this_run": steps.steps, "train_seconds": round(steps.seconds, 2),
            "final_loss": float(losses["loss"].iloc[-1]) if len(losses) else None,
            "train_loss": result.training_loss, "world_size": args.world_size, "versions": runs.package_versions(),
        }
        tmp = out / f"adapter.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        runs.write_json_atomic(tmp / MANIFEST, manifest)
        if adapter.exists():
            shutil.rmtree(adapter)
        os.replace(tmp, adapter)
        runs.write_json_atomic(out / MANIFEST, manifest)
        runs.update_manifest(run_dir, f"train.{student}", **{k: v for k, v in manifest.items() if k != "versions"})
        if not config.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    _barrier()
    return adapter


# ------------------------------------------------------------------------------- notebook 03

def curated_inputs(run_dir: str | os.PathLike, profile) -> tuple[list, list]:
    """(kept rationales, training problems) for a run, or a clear error naming the notebook to run first."""
    from mdlab import curate, data

    run_dir = Path(run_dir)
    for name, first in ((curate.RATIONALES, "01_generate_rationales.ipynb (then 02_curate_rationales.ipynb)"),
                        (curate.AUTO_FILTER, "02_curate_rationales.ipynb")):
        if not (run_dir / name).exists():
            raise TrainError(f"{run_dir / name} is missing: run notebooks/{first} for this run directory first")
    return curate.curated(run_dir), data.load(profile.data.dataset, profile.data.train_split)


def train_students(config: TrainConfig, rationales, problems, run_dir: str | os.PathLike, *,
                   students: Sequence[str] | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Build examples and fit each student in ``students`` (default ``config.students``); reuses finished ones."""
    out = {}
    for student in students or config.students:
        examples = build_examples(rationales, problems, student, config=config)
        print(f"{student}: {len(examples)} examples {examples.counts()}")
        out[student] = fit(dataclasses.replace(config, mode=student), examples, run_dir, student=student,
                           overwrite=overwrite)
    return out


def summary(run_dir: str | os.PathLike, students: Sequence[str] = STUDENTS):
    """One row per trained student: examples, steps, tokens, losses (first, last, means of 3), training time."""
    import pandas as pd

    rows = []
    for student in students:
        m = runs.read_manifest(adapter_dir(run_dir, student))
        if not m:
            continue
        loss = read_loss(run_dir, student)["loss"]
        head, tail = loss.iloc[:3], loss.iloc[-3:]
        rows.append({"student": student, "examples": m["examples"], "cot": m["by_mode"]["cot"],
                     "pot": m["by_mode"]["pot"], "steps": m["steps"], "tokens": m["tokens"],
                     "first_loss": float(loss.iloc[0]) if len(loss) else math.nan,
                     "final_loss": m["final_loss"],
                     "loss_first3": float(head.mean()) if len(head) else math.nan,
                     "loss_last3": float(tail.mean()) if len(tail) else math.nan,
                     "train_seconds": m["train_seconds"]})
    return pd.DataFrame(rows).round(3)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mdlab.train --config PROFILE``: notebook 03's training without a kernel, for launchers.

    Data parallel: ``accelerate launch --multi_gpu --num_processes N -m mdlab.train --config configs/gpu.yaml``
    or ``torchrun --nproc_per_node N -m mdlab.train ...``; every process trains on its shard, rank 0 writes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mdlab.train", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("--config", "--profile", required=True, help="smoke | cpu | laptop | gpu, or a YAML path")
    parser.add_argument("--run-dir", default=None, help="default: runs/<profile name>")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=None, help="default: the profile's")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                        help="override one profile setting (repeatable), e.g. --set train.epochs=1")
    args = parser.parse_args(argv)
    prof = _config.load(args.config, _config.parse_overrides(args.set))
    run = runs.run_dir(args.run_dir or prof.name)
    rationales, problems = curated_inputs(run, prof)
    adapters = train_students(prof.train, rationales, problems, run, students=args.students)
    if _rank() == 0:
        print("\n".join(f"{student}: {path}" for student, path in adapters.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

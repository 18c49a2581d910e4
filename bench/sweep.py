"""The recipe sweep behind ``configs/laptop.yaml``: students scored on a validation slice of the training split.

Not a timing benchmark: it chooses the embedded student's recipe (LoRA rank, epochs, learning
rate, CoT share lambda, rationales per problem, compute dtype) the honest way. The 800 SVAMP
training problems are split once (seeded) into 100 validation problems and 700 training ones;
every setting trains on the 700 and is scored by greedy decoding on the 100. The test split is
never read. Each finished setting is appended to ``runs/sweep/sweep.jsonl`` (a rerun skips it,
so a killed sweep resumes) and the table is rewritten to ``docs/sweep.md``.

    .venv/bin/python bench/sweep.py [--only NAME ...] [--list] [--table]

Teachers and curation are the laptop profile's (recorded PaLM CoT, MCC-KD gpt-3.5 CoTs, Codex
PoT; the automatic filter). A setting's ``train.teachers`` narrows the rationales it trains on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MDLAB_DATA_DIR", str(ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))

from mdlab import config, curate, data, evaluate, runs, teachers, train  # noqa: E402

RUN = ROOT / "runs" / "sweep"
TABLE = ROOT / "docs" / "sweep.md"
VALIDATION = 100  # problems held out from the 800 training problems
PALM = ["recorded:svamp-palm-cot", "recorded:svamp-codex-pot"]  # train.teachers: PaLM's CoT, Codex's PoT
BASE = dict(lora_rank=64, lora_alpha=128, lora_dropout=0.0, learning_rate=1e-3, epochs=2, batch_size=8,
            per_problem=1, cot_weight=0.5, max_length=384, dtype="bf16", save_steps=100)

# name -> (student, TrainConfig overrides, train.teachers (None = all of the profile's), decoding dtype)
SETTINGS: dict[str, tuple[str, dict, list | None, str]] = {
    # the recipe the issue tried first (PaLM CoT + Codex PoT, one of each per problem), in bf16
    "md-palm": ("md", {}, PALM, "bf16"),
    # the same adapter decoded on fp32 weights: does bf16 decoding cost accuracy?
    "md-palm/fp32-decode": ("md", {}, PALM, "fp32"),
    # PoT-only, one epoch, bf16 against fp32 training: does bf16 training cost accuracy?
    "pot-1ep": ("pot", {"epochs": 1}, None, "bf16"),
    "pot-1ep-fp32": ("pot", {"epochs": 1, "dtype": "fp32"}, None, "fp32"),
    # two CoTs per question (MCC-KD's first gpt-3.5 sample and PaLM's), one epoch: about md-palm's compute, spent
    # on more rationales instead of a second pass (the paper's "multiple rationales by sampling")
    "md-multi2-1ep": ("md", {"per_problem": 2, "epochs": 1}, None, "bf16"),
    # the same two CoTs per question for two epochs: more rationales at md-palm's number of passes (2x its steps)
    "md-multi2-2ep": ("md", {"per_problem": 2}, None, "bf16"),
    # lambda: more PoT than CoT (PoT is the stronger single path at this scale)
    "md-palm-lambda0.3": ("md", {"cot_weight": 0.3}, PALM, "bf16"),
}
# Not run yet for lack of time on 2 cores (each ~25-40 min): LoRA r=16 / lr 5e-4, 3 epochs, a shorter student
# prompt, full fine-tuning.


def prepare():
    """Curated rationales of the 800 training problems (laptop profile), and the 700 / 100 split."""
    prof = config.load("laptop")
    problems = data.load("svamp", "train")
    if not (RUN / "auto_filter.csv").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teachers.generate_all(prof.teacher, problems, RUN, live=False)
            curate.run_auto_filter(RUN, problems, prof.curate, test_problems=data.load("svamp", "test"))
    rationales = curate.curated(RUN)
    held_out = set(random.Random(0).sample([p.id for p in problems], VALIDATION))
    fit_on = [p for p in problems if p.id not in held_out]
    validation = [p for p in problems if p.id in held_out]
    return prof, rationales, fit_on, validation


def run_setting(name: str, prof, rationales, fit_on, validation) -> dict:
    student, overrides, cot_teachers, decode_dtype = SETTINGS[name]
    folder = RUN / name.split("/")[0]
    cfg = dataclasses.replace(prof.train, **{**BASE, **overrides}, teachers=cot_teachers, mode=student)
    examples = train.build_examples(rationales, fit_on, student, config=cfg)
    start = time.perf_counter()
    train.fit(cfg, examples, folder, student=student)
    train_seconds = time.perf_counter() - start
    manifest = json.loads((train.adapter_dir(folder, student) / "manifest.json").read_text())
    student_dir = train.student_dir(folder, student)
    engine = evaluate.backend(student_dir, dtype=decode_dtype, tag=f"{student}:{decode_dtype}")
    samples = []
    start = time.perf_counter()
    for mode in evaluate.student_modes(student_dir):
        samples += evaluate.sample(engine, validation, mode, k=0, temperature=0.0, seed=0,
                                   run_dir=student_dir / f"validation-{decode_dtype}", max_new_tokens=192)
    decode_seconds = time.perf_counter() - start
    greedy = evaluate.greedy_accuracy(samples, validation, bootstrap=1000)
    row = {"name": name, "student": student, "cot_teachers": "PaLM" if cot_teachers == PALM else "PaLM + MCC-KD",
           "decode_dtype": decode_dtype, **{k: getattr(cfg, k) for k in BASE}, "examples": len(examples),
           "by_mode": manifest["by_mode"], "tokens": manifest["tokens"], "steps": manifest["steps"],
           "final_loss": manifest["final_loss"], "train_seconds": round(manifest["train_seconds"]),
           "wall_seconds": round(train_seconds), "decode_seconds": round(decode_seconds),
           "validation": {r.policy: [round(100 * r.acc, 1), round(100 * r.lo, 1), round(100 * r.hi, 1)]
                          for r in greedy.itertuples()}, "n_validation": len(validation)}
    runs.JsonlStore(RUN / "sweep.jsonl").append(row)
    return row


def write_table(rows: list[dict]) -> None:
    def acc(row, policy):
        value = row["validation"].get(policy)
        return f"{value[0]:.1f} [{value[1]:.0f}, {value[2]:.0f}]" if value else ""

    lines = ["# Recipe sweep: the embedded student on 100 validation problems from SVAMP train", "",
             f"Written by `bench/sweep.py`. Every setting trains SmolLM2-135M + LoRA on the other "
             f"{800 - VALIDATION} training problems (curated rationales of the `laptop` profile) and is scored "
             "by greedy decoding on the 100 held-out training problems (seeded choice); the test split is never "
             "read. Accuracy in %, 95% bootstrap interval over the 100 problems.", "",
             "`train min` is wall time on the 2-core VM and includes whatever else ran: test runs beside "
             "`md-palm`, pauses (the sweep stopped while CI ran) of 8 minutes inside `pot-1ep` and 11 "
             "inside `md-multi2-2ep`; for speed compare `bench/RESULTS.md` (bf16 training 1.70x fp32, measured "
             "alone). `/` names a decoding variant of the setting before it (same adapter).",
             "", "| setting | student | CoT teachers | rationales/problem | lambda | r | lr | epochs | dtype "
             "(train/decode) | examples | steps | final loss | train min | greedy CoT | greedy PoT | "
             "greedy PoT else CoT |", "|" + " --- |" * 3 + " ---: |" * 13]
    for r in rows:
        teachers = r["cot_teachers"] if r["student"] != "pot" else "(PoT: Codex)"
        lines.append(f"| {r['name']} | {r['student']} | {teachers} | {r['per_problem']} | "
                     f"{r['cot_weight']} | {r['lora_rank']} | {r['learning_rate']:g} | {r['epochs']:g} | "
                     f"{r['dtype']}/{r['decode_dtype']} | {r['examples']} | {r['steps']} | {r['final_loss']:.3f} | "
                     f"{r['train_seconds'] / 60:.1f} | {acc(r, 'cot')} | {acc(r, 'pot')} | {acc(r, 'pot_then_cot')} |")
    TABLE.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=None)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true", help="only rewrite docs/sweep.md from runs/sweep/sweep.jsonl")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SETTINGS))
        return 0
    if args.table:
        write_table(runs.JsonlStore(RUN / "sweep.jsonl").read())
        return 0
    prof, rationales, fit_on, validation = prepare()
    store = runs.JsonlStore(RUN / "sweep.jsonl")
    for name in args.only or SETTINGS:
        if any(row["name"] == name for row in store.read()):
            continue
        row = run_setting(name, prof, rationales, fit_on, validation)
        print(json.dumps(row), flush=True)
        write_table(store.read())
    write_table(store.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

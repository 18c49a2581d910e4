"""Throughput of mdlab.sandbox against the two usual ways of running PoT programs.

Measures, in one run on the same machine (so that load from other processes hits all rows alike):

- ``run_many``: the sandbox, every limit in force, on N real Codex PoT programs (warm pool);
- ``run() loop``: the same sandbox called once per program, one at a time;
- ``python -c``: one fresh interpreter per program with the same answer-extraction wrapper
  (what most published PoT executors do), on a sample, sequentially and on all cores;
- ``exec``: unsafe in-process ``exec`` with the same extraction (no isolation at all).

Programs: SVAMP few-shot Codex programs (no imports, the common case) and SVAMP zero-shot ones
(``import math``, ``import numpy as np``, ``def solver()``), 1000 of each by default (999 per file,
padded from the GSM8K file of the same kind). Usage:

    python bench/sandbox.py [--n 1000] [--sample 100] [--rounds 3] [--sets fewshot,zeroshot]

Rates are medians over interleaved rounds; each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdlab import sandbox

FILES = {
    "fewshot": ["svamp/program_of_thoughts/svamp_s0_e-1_11_24_14_38.jsonl",
                "gsm8k/program_of_thoughts/gsm8K_s0_e-1_11_17_10_20.jsonl"],
    "zeroshot": ["svamp/program_of_thoughts/svamp_zs_s0_e-1_11_18_20_12.jsonl",
                 "gsm8k/program_of_thoughts/gsm8K_zs_s0_e-1_11_19_09_55.jsonl"],
}

# The answer convention of mdlab.sandbox, for the two unsandboxed baselines.
WRAPPER = r'''
import io, json, re, sys, contextlib
src = sys.stdin.read() if len(sys.argv) < 2 else sys.argv[1]
ns = {"__name__": "__main__"}
buf = io.StringIO()
try:
    with contextlib.redirect_stdout(buf):
        exec(compile(src, "<program>", "exec"), ns)
        value = ns.get("ans")
        for name in ("solution", "solver"):
            if value is None and callable(ns.get(name)):
                value = ns[name]()
    if value is None:
        nums = re.findall(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", buf.getvalue())
        value = float(nums[-1]) if nums else None
    answer = float(value) if value is not None else None
    out = {"status": "ok" if answer is not None else "no_answer", "answer": answer}
except Exception as exc:
    out = {"status": "error", "answer": None, "error": repr(exc)}
print(json.dumps(out))
'''
_WRAPPER_CODE = compile(WRAPPER, "<wrapper>", "exec")


def data_path(rel: str) -> Path:
    try:
        from mdlab import data

        return Path(data.resolve(rel))
    except Exception:
        return Path(os.environ.get("MDLAB_DATA_DIR", ROOT.parent / "shared" / "data")) / rel


def load_programs(kind: str, n: int) -> list[str]:
    programs = []
    for rel in FILES[kind]:
        for line in data_path(rel).read_text().splitlines():
            row = json.loads(line)
            if "generated" in row:
                g = row["generated"]
                programs.append(g[0] if isinstance(g, list) else g)
            if len(programs) == n:
                return programs
    return programs


def run_subprocess(program: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", WRAPPER], input=program, capture_output=True, text=True,
                          timeout=3.0, check=False)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"status": "error"}


def run_exec(program: str) -> dict:
    # Same wrapper, executed in this process: no isolation, no limits.
    captured = io.StringIO()
    ns = {"sys": sys}
    old_stdout, old_stdin, old_argv = sys.stdout, sys.stdin, sys.argv
    sys.argv, sys.stdout = ["x", program], captured
    try:
        exec(_WRAPPER_CODE, ns)
    finally:
        sys.stdout, sys.argv = old_stdout, old_argv
    sys.stdin = old_stdin
    return json.loads(captured.getvalue().strip().splitlines()[-1])



def rate(fn, items, workers=1):
    t = time.perf_counter()
    if workers == 1:
        out = [fn(x) for x in items]
    else:
        with ThreadPoolExecutor(workers) as ex:
            out = list(ex.map(fn, items))
    return len(items) / (time.perf_counter() - t), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="programs per set for run_many and exec")
    ap.add_argument("--sample", type=int, default=100, help="programs per set for each python -c baseline")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--sets", default="fewshot,zeroshot")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    pool = sandbox.Pool()
    t = time.perf_counter()
    layers = pool.describe()
    print(f"cores: {cores}   first worker ready in {time.perf_counter() - t:.2f} s   load avg before: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"limits: timeout=3.0 s, memory_mb=512; mode {layers.get('mode')}, layers: {', '.join(layers.get('layers', []))}"
          f"; landlock ABI {layers.get('landlock_abi')}, root: {layers.get('root')}, child uid {layers.get('child_uid')}")
    for kind in args.sets.split(","):
        programs = load_programs(kind, args.n)
        t = time.perf_counter()
        pool.run_many(programs[: cores * 4], workers=cores)  # start this set's workers
        cold = time.perf_counter() - t
        rows: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        per_round = max(1, args.sample // args.rounds)
        for rnd in range(args.rounds):
            # Interleaved, so that a burst of load from elsewhere hits every row alike.
            sample = programs[rnd * per_round:(rnd + 1) * per_round]
            r_many, (res,) = rate(lambda ps: pool.run_many(ps, workers=cores, progress=False), [programs])
            r_many *= len(programs)
            r_sub1, _ = rate(run_subprocess, sample)
            r_subn, _ = rate(run_subprocess, sample, workers=cores)
            r_run1, _ = rate(pool.run, sample)
            r_exec, ex = rate(run_exec, programs)
            for name, value in (("many", r_many), ("sub1", r_sub1), ("subn", r_subn), ("run1", r_run1),
                                ("exec", r_exec)):
                rows.setdefault(name, []).append(value)
            for name, value in (("many/sub1", r_many / r_sub1), ("many/subn", r_many / r_subn),
                                ("run1/sub1", r_run1 / r_sub1), ("exec/many", r_exec / r_many)):
                ratios.setdefault(name, []).append(value)
        statuses: dict[str, int] = {}
        for r in res:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        agree = sum(1 for a, b in zip(res, ex) if (a.answer is None and b["answer"] is None)
                    or (a.answer is not None and b["answer"] is not None and abs(a.answer - b["answer"]) < 1e-9))
        med = statistics.median
        print(f"\n[{kind}] {len(programs)} programs, {args.rounds} rounds ({per_round} per round for python -c "
              f"and run()); worker start {cold:.2f} s; statuses {statuses}; answers equal to exec's: "
              f"{agree}/{len(programs)}")
        labels = {"many": f"run_many (sandbox, {cores} workers)", "run1": "run() one at a time (sandbox)",
                  "sub1": "python -c per program, sequential", "subn": f"python -c per program, {cores} threads",
                  "exec": "exec in-process (unsafe)"}
        for name, label in labels.items():
            print(f"  {label:38s} {med(rows[name]):10.1f} programs/s   (rounds: "
                  f"{', '.join(f'{x:.0f}' for x in rows[name])})")
        for name, label in (("many/sub1", "run_many / python -c sequential"),
                            ("many/subn", f"run_many / python -c {cores} threads"),
                            ("run1/sub1", "run()    / python -c sequential"), ("exec/many", "exec     / run_many")):
            print(f"  {label:34s} = {med(ratios[name]):6.1f}x   (rounds: {', '.join(f'{x:.1f}' for x in ratios[name])})")
    print(f"\nload avg after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    pool.close()


if __name__ == "__main__":
    main()

"""Time of ``curate.auto_filter`` on every SVAMP rationale we hold, against its sandbox part alone.

Rationales come from ``teachers.Recorded`` over all 1000 SVAMP problems (written once to a
temporary run directory, not timed): PaLM CoT (1000) + Codex PoT (999), and MCC-KD's ten CoTs
per train question (7000) for the duplicate check's pairwise comparisons. Measured in one run:

- ``sandbox.run_many`` on the 999 programs alone (warm pool): the floor auto_filter cannot beat;
- ``auto_filter`` on PaLM + Codex, every check on (agreement included);
- ``auto_filter`` on the MCC-KD CoTs (no programs: extraction, checks and near-duplicates).

Usage: ``python bench/curate.py [--repeat 3]``; prints seconds (best of the repeats) and ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MDLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from mdlab import curate, data, sandbox, teachers  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = data.load("svamp", "all")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for source, mode, n in (("svamp-palm-cot", "cot", 1), ("svamp-codex-pot", "pot", 1),
                                ("svamp-mcckd-cot", "cot", 10)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no rationale for N problems": the sources cover fewer
                sets[source] = teachers.generate(teachers.Recorded(source), problems, mode, n=n, run_dir=tmp,
                                                 progress=False)
    main_set = sets["svamp-palm-cot"] + sets["svamp-codex-pot"]
    programs = [r.text for r in sets["svamp-codex-pot"]]
    config = curate.CurateConfig(check_agreement=True)
    sandbox.run_many(programs[:50])  # start the warm pool outside the timings

    t_sandbox = best(lambda: sandbox.run_many(programs), args.repeat)
    t_filter = best(lambda: curate.auto_filter(main_set, problems, config), args.repeat)
    t_mcckd = best(lambda: curate.auto_filter(sets["svamp-mcckd-cot"], problems, config), args.repeat)
    print(f"{'what':<44}{'items':>7}{'seconds':>9}{'items/s':>9}")
    for name, n, t in (("sandbox.run_many (Codex programs)", len(programs), t_sandbox),
                       ("auto_filter PaLM CoT + Codex PoT", len(main_set), t_filter),
                       ("auto_filter MCC-KD CoT (10 per problem)", len(sets["svamp-mcckd-cot"]), t_mcckd)):
        print(f"{name:<44}{n:>7}{t:>9.2f}{n / t:>9.0f}")
    print(f"auto_filter / its sandbox part: {t_filter / t_sandbox:.2f}x "
          f"(checks other than execution: {t_filter - t_sandbox:.2f} s)")


if __name__ == "__main__":
    main()

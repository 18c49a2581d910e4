"""Figures and the results table for notebook 05.

``accuracy_vs_k`` draws acc@k (with its bootstrap band) for each student, one panel per
voting policy; ``greedy_bars`` draws single-path (greedy) accuracy per student and policy;
``results_table`` puts our numbers beside the paper's, stating the split and the decoding of
each; ``write_report`` saves all of it under the run directory (``curves.csv``,
``greedy.csv``, ``figures/*.png``, ``results.md``). Inputs are the DataFrames of
``evaluate.evaluate_students`` (columns student, policy, k, acc, lo, hi, n).

What it simplifies: the paper's numbers are quoted as published (Li et al., 2023, "Mixed
Distillation Helps Smaller Language Model Better Reasoning", SVAMP): its split is not
published (its figures are multiples of 0.5, consistent with a 200-problem test split such
as ours), so the comparison is indicative, never paired. Loss curves are drawn by
``train.plot_losses``, the curation funnel by ``curate``.
"""

from __future__ import annotations

import os
from pathlib import Path

# (system, role, accuracy %) on SVAMP as reported in the MD paper
PAPER_SVAMP = (
    ("GPT-3.5-Turbo", "teacher (few-shot)", 82.0),
    ("LLaMA2-7B, MD", "student", 84.5),
    ("CodeLlama-7B, MD", "student", 85.5),
)
PAPER_DATA = "SVAMP; split not published (figures are multiples of 0.5: consistent with 200 test problems)"
PAPER_DECODING = "as reported; students: multi-path sampling and voting"
STUDENT_LABELS = {"md": "MD (CoT + PoT)", "cot": "CoT only", "pot": "PoT only"}
GREEDY_LABELS = {"cot": "greedy, 1 CoT path", "pot": "greedy, 1 PoT path",
                 "pot_then_cot": "greedy, the PoT path, the CoT path where the program failed"}
POLICY_LABELS = {"cot": "CoT vote", "pot": "PoT vote", "mixed": "mixed vote (CoT + PoT pooled)",
                 "pot_then_cot": "PoT, CoT where every program failed"}


def _plt():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(student: str) -> str:
    return STUDENT_LABELS.get(student, student)


def _colors(students) -> dict[str, str]:
    """The same colour for a student in every figure: md, cot, pot first, then the others."""
    order = list(STUDENT_LABELS) + [s for s in students if s not in STUDENT_LABELS]
    return {s: f"C{order.index(s)}" for s in students}


def accuracy_vs_k(curves, path: str | os.PathLike | None = None, *, greedy=None, title: str | None = None):
    """One panel per policy: acc@k per student with its interval as a band (greedy as a dotted line)."""
    plt = _plt()
    policies = [p for p in POLICY_LABELS if p in set(curves["policy"])]
    if not policies:
        raise ValueError("no acc@k curves to draw (no student has sampled paths)")
    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(policies) == 4 else len(policies)
    rows_ = (len(policies) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.2 * rows_ + 0.6), sharey=True, squeeze=False)
    students = list(dict.fromkeys(curves["student"]))
    colors = _colors(students)
    for ax, policy in zip(axes.flat, policies):
        part = curves[curves["policy"] == policy]
        for student, rows in part.groupby("student", sort=False):
            rows = rows.sort_values("k")
            ax.plot(rows["k"], 100 * rows["acc"], marker="o", ms=3, color=colors[student],
                    label=_label(student))
            ax.fill_between(rows["k"], 100 * rows["lo"], 100 * rows["hi"], color=colors[student], alpha=0.2)
            if greedy is not None:
                single = greedy[(greedy["student"] == student) & (greedy["policy"] == policy)]
                if len(single):
                    ax.axhline(100 * single["acc"].iloc[0], color=colors[student], ls=":", lw=1)
        ax.set_title(POLICY_LABELS[policy], fontsize=9)
        ax.set_xlabel("k (paths per mode)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(policies):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    handles = [plt.Line2D([], [], color=colors[s], marker="o", ms=3, label=_label(s)) for s in students]
    fig.legend(handles=handles, loc="lower center", ncol=len(students), fontsize=8, frameon=False)
    fig.suptitle(title or "Self-consistency: accuracy vs k (band: 95% bootstrap interval; dotted: greedy)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def greedy_bars(greedy, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Single-path (greedy) accuracy: bars per policy, one per student, with interval whiskers."""
    import numpy as np

    plt = _plt()
    policies = [p for p in POLICY_LABELS if p in set(greedy["policy"])]
    students = list(dict.fromkeys(greedy["student"]))
    colors = _colors(students)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.8 * len(policies) * len(students)), 3.6))
    width = 0.8 / max(1, len(students))
    # each policy's bars are centred on its tick among the students that have it (baselines lack pot_then_cot)
    group = {p: [s for s in students if ((greedy["student"] == s) & (greedy["policy"] == p)).any()] for p in policies}
    for student in students:
        rows = greedy[greedy["student"] == student].set_index("policy")
        present = [p for p in policies if p in rows.index]
        xs = [policies.index(p) + (group[p].index(student) - (len(group[p]) - 1) / 2) * width for p in present]
        acc = 100 * rows.loc[present, "acc"].to_numpy()
        lo, hi = 100 * rows.loc[present, "lo"].to_numpy(), 100 * rows.loc[present, "hi"].to_numpy()
        err = np.vstack([acc - lo, hi - acc])
        bars = ax.bar(xs, acc, width, yerr=err, capsize=3, label=_label(student), color=colors[student])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)  # a 0.0 bar is otherwise invisible
    ax.set_xticks(range(len(policies)))
    names = {"cot": "CoT", "pot": "PoT", "pot_then_cot": "PoT, else CoT"}
    ax.set_xticklabels([names.get(p, p) for p in policies])
    ax.set_ylim(0, max(5.0, 100 * float(greedy["hi"].max()) * 1.3))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Single path (greedy decoding), 95% bootstrap whiskers", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", ncol=len(students))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _pct(acc: float, lo: float | None = None, hi: float | None = None) -> str:
    if lo is None:
        return f"{100 * acc:.1f}"
    return f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def results_table(curves, greedy, *, data: str, student_model: str, temperature: float, top_p: float = 1.0,
                  teacher: str | None = None):
    """(DataFrame, markdown): the paper's SVAMP numbers, then ours (greedy, and SC at the largest k).

    ``data`` states our split (e.g. "SVAMP test (200-problem split), first 40"); the table says
    the decoding of every row, since single-path and voted numbers are not comparable.
    """
    import pandas as pd

    rows = [{"source": "paper", "system": name, "role": role, "data": PAPER_DATA, "decoding": PAPER_DECODING,
             "accuracy": f"{acc:.1f}"} for name, role, acc in PAPER_SVAMP]
    for student in dict.fromkeys(list(greedy["student"]) + list(curves["student"])):
        system = f"{student_model}, {_label(student)}"
        for _, row in greedy[greedy["student"] == student].iterrows():
            rows.append({"source": "mdlab", "system": system, "role": "student", "data": data,
                         "decoding": GREEDY_LABELS.get(row["policy"], f"greedy; {row['policy']}"),
                         "accuracy": _pct(row["acc"], row["lo"], row["hi"])})
        part = curves[curves["student"] == student]
        if len(part):
            k = int(part["k"].max())
            for _, row in part[part["k"] == k].iterrows():
                rows.append({"source": "mdlab", "system": system, "role": "student", "data": data,
                             "decoding": f"{k} paths per mode, T={temperature:g}"
                                         f"{'' if top_p >= 1 else f', top-p {top_p:g}'}; "
                                         f"{POLICY_LABELS[row['policy']]}",
                             "accuracy": _pct(row["acc"], row["lo"], row["hi"])})
    table = pd.DataFrame(rows, columns=["source", "system", "role", "data", "decoding", "accuracy"])
    lines = ["| source | system | data | decoding | accuracy % [95% CI] |", "|---|---|---|---|---|"]
    for _, row in table.iterrows():
        cells = (row["source"], row["system"], row["data"], row["decoding"], row["accuracy"])
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Teacher rationales: {teacher}." if teacher else "",
             ("Intervals: percentile bootstrap over problems. acc@k averages the vote over k-subsets of the "
              "stored paths (evaluate.acc_at_k), not the first k."),
             ("The paper's rows come from 7B students and GPT-3.5-Turbo rationales on a split it does not "
              "publish: context, not a paired comparison.")]
    markdown = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes if n) + "\n"
    return table, markdown


def write_report(run_dir: str | os.PathLike, curves, greedy, *, data: str, student_model: str,
                 temperature: float, top_p: float = 1.0, teacher: str | None = None) -> dict[str, Path]:
    """curves.csv, greedy.csv, figures/accuracy_vs_k.png, figures/greedy.png, results.md in ``run_dir``."""
    plt = _plt()
    run_dir = Path(run_dir)
    figures = run_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths = {"curves": run_dir / "curves.csv", "greedy": run_dir / "greedy.csv",
             "results": run_dir / "results.md", "greedy_png": figures / "greedy.png"}
    curves.to_csv(paths["curves"], index=False)
    greedy.to_csv(paths["greedy"], index=False)
    if len(curves):
        paths["curves_png"] = figures / "accuracy_vs_k.png"
        plt.close(accuracy_vs_k(curves, paths["curves_png"], greedy=greedy))
    plt.close(greedy_bars(greedy, paths["greedy_png"]))
    _, markdown = results_table(curves, greedy, data=data, student_model=student_model,
                                temperature=temperature, top_p=top_p, teacher=teacher)
    figure_lines = "\n".join(f"![{p.stem}](figures/{p.name})" for key, p in paths.items()
                             if key.endswith("_png"))
    paths["results"].write_text(f"# Results\n\n{markdown}\n{figure_lines}\n")
    return paths

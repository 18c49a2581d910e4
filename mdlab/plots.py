"""Figures and the results table (notebooks 02, 03, 05); every figure goes through ``_plt``'s backend rule.

``accuracy_vs_k``: acc@k with its bootstrap band per student, one panel per voting policy (``ensemble``
shares ``mixed``'s panel: both pool k CoT and k PoT paths), greedy paths as points at the left;
``greedy_bars``: single-path accuracy per student and policy; ``teacher_self_consistency``: a recorded
teacher's CoT vote beside the students'; ``results_table``: our numbers beside the paper's, with split and
decoding; ``write_report``: all of it under the run directory (``curves.csv``, ``greedy.csv``,
``figures/*.png``, ``results.md``, ``results.json``). ``curation_funnel`` (notebook 02) and ``loss_curves``
(notebook 03) draw curation and training.

The paper's numbers (Li et al., 2023, "Mixed Distillation Helps Smaller Language Model Better Reasoning",
SVAMP) are quoted as published: its split is not (its figures are multiples of 0.5, consistent with a
200-problem test split such as ours), so the comparison is indicative, never paired.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

# (system, role, accuracy %) on SVAMP as reported in the MD paper
PAPER_SVAMP = (
    ("GPT-3.5-Turbo", "teacher (few-shot)", 82.0),
    ("LLaMA2-7B, MD", "student", 84.5),
    ("CodeLlama-7B, MD", "student", 85.5),
)
PAPER_DATA = "SVAMP; split not published (figures are multiples of 0.5: consistent with 200 test problems)"
PAPER_DECODING = "as reported; students: multi-path sampling and voting"
STUDENT_LABELS = {"md": "MD (CoT + PoT)", "cot": "CoT only", "pot": "PoT only",
                  "cot+pot": "CoT-only + PoT-only (ensemble)", "base": "untrained base model"}
GREEDY_LABELS = {"cot": "greedy, 1 CoT path", "pot": "greedy, 1 PoT path",
                 "pot_then_cot": "greedy, the PoT path, the CoT path where the program failed"}
POLICY_LABELS = {"cot": "CoT vote", "pot": "PoT vote", "mixed": "mixed vote (CoT + PoT pooled)",
                 "pot_then_cot": "PoT, CoT where every program failed",
                 "ensemble": "ensemble vote (CoT-only student's CoT + PoT-only student's PoT pooled)"}
PANEL = {"ensemble": "mixed"}  # the policy whose panel a policy shares: both pool k CoT and k PoT paths
PANEL_TITLES = {**POLICY_LABELS, "mixed": "CoT + PoT pooled (MD: mixed; two students: ensemble)"}


def _plt():
    """pyplot under the one backend rule of mdlab's figures, which are all written to files: the user's
    ``MPLBACKEND`` or a notebook's inline backend (``module://...``) is kept; anything else becomes Agg, so a
    script or a headless kernel never opens (or fails to open) a window."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    if "MPLBACKEND" not in os.environ and not backend.startswith(("module://", "agg")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(student: str) -> str:
    return STUDENT_LABELS.get(student, student)


def _colors(students) -> dict[str, str]:
    """The same colour for a student in every figure: md, cot, pot first, then the others."""
    order = list(STUDENT_LABELS) + [s for s in students if s not in STUDENT_LABELS]
    return {s: f"C{order.index(s)}" for s in students}


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _curve(ax, rows, color: str, label: str, **style):
    """One acc@k line (percent) with its bootstrap interval as a band."""
    rows = rows.sort_values("k")
    ax.plot(rows["k"], 100 * rows["acc"], marker="o", ms=3, color=color, label=label, **style)
    ax.fill_between(rows["k"], 100 * rows["lo"], 100 * rows["hi"], color=color, alpha=0.2)


def _accuracy_limits(ax):
    # at least 0-5%, and no negative ticks: a student right nowhere would otherwise sit on a +-0.05% axis
    lo, hi = ax.get_ylim()
    top = max(hi, 5.0)
    ax.set_ylim(max(lo, -0.04 * top), top)


def _suptitle(fig, text: str, width_in: float):
    # wrapped to the figure: a long title on a one-panel figure would otherwise run off both edges
    fig.suptitle(textwrap.fill(text, max(30, int(width_in * 12))), fontsize=10)


def accuracy_vs_k(curves, path: str | os.PathLike | None = None, *, greedy=None, title: str | None = None):
    """One panel per policy: acc@k per student with its interval as a band; greedy paths as points left."""
    plt = _plt()
    if not len(curves):
        raise ValueError("no acc@k curves to draw (no student has sampled paths)")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    greedy = greedy if greedy is not None else curves.iloc[:0]
    shown = {PANEL.get(p, p) for p in curves["policy"]} | set(greedy["policy"])
    panels = [p for p in POLICY_LABELS if p in shown and p not in PANEL]
    cols = 2 if len(panels) == 4 else len(panels)
    rows_ = (len(panels) + cols - 1) // cols
    width = max(6.4, 4.2 * cols)
    fig = plt.figure(figsize=(width, 3.2 * rows_ + 1.0), layout="constrained")
    axes = fig.subplots(rows_, cols, sharey=True, squeeze=False)
    students = list(dict.fromkeys(list(curves["student"]) + list(greedy["student"])))
    colors = _colors(students)
    for ax, panel in zip(axes.flat, panels):
        part = curves[curves["policy"].map(lambda p: PANEL.get(p, p)) == panel]
        for student, rows in part.groupby("student", sort=False):
            _curve(ax, rows, colors[student], _label(student))
        single = greedy[greedy["policy"] == panel]
        for offset, (_, row) in enumerate(single.iterrows()):
            x = -0.3 + 0.6 * offset / max(1, len(single) - 1)  # side by side at "greedy"
            acc = 100 * row["acc"]
            ax.errorbar([x], [acc], yerr=[[acc - 100 * row["lo"]], [100 * row["hi"] - acc]], fmt="D", ms=4,
                        capsize=2, color=colors[row["student"]])
        ax.set_title(PANEL_TITLES[panel], fontsize=9)
        ax.set_xlabel("k (paths per mode)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "greedy" if x == 0 else f"{x:g}"))
        ax.set_xlim(left=-0.6)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    _accuracy_limits(axes[0, 0])  # shared by every panel
    handles = [plt.Line2D([], [], color=colors[s], marker="o", ms=3, label=_label(s)) for s in students]
    handles.append(plt.Line2D([], [], color="gray", marker="D", ms=4, ls="none", label="greedy (one path)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8,
               frameon=False)
    _suptitle(fig, title or "Self-consistency: accuracy vs k (bands and whiskers: 95% bootstrap intervals)",
              width)
    return _save(fig, path)


def teacher_self_consistency(teacher, path: str | os.PathLike | None = None, *, curves=None,
                             teacher_label: str = "teacher (recorded)", title: str | None = None):
    """A recorded teacher's acc@k (``evaluate.teacher_curve``) beside the students' CoT-vote curves."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    width = 6.4
    fig, ax = plt.subplots(figsize=(width, 4.0), layout="constrained")
    _curve(ax, teacher, "black", f"{teacher_label}, {int(teacher['n'].iloc[0])} problems")
    if curves is not None and len(curves):
        part = curves[curves["policy"] == "cot"]
        colors = _colors(list(dict.fromkeys(part["student"])))
        for student, rows in part.groupby("student", sort=False):
            label = f"{_label(student)}, {int(rows['n'].iloc[0])} problems"
            _curve(ax, rows, colors[student], label, ls="--")
    ax.set_xlabel("k (CoT paths voted)")
    ax.set_ylabel("accuracy (%)")
    _accuracy_limits(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _suptitle(fig, title or ("Self-consistency of the CoT vote: the teacher's recorded samples and the "
                             "students' (band: 95% bootstrap interval)"), width)
    return _save(fig, path)


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
    return _save(fig, path)


def curation_funnel(df, path: str | os.PathLike) -> Path:
    """Grouped bars of ``curate.funnel(...)`` (stages x modes), saved as a PNG; returns the path."""
    plt = _plt()
    modes = [c for c in df.columns if c != "all"]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(df))]
        ax.bar_label(ax.bar(xs, df[mode].values, width, label=mode.upper()), fontsize=8)
    ax.set_xticks(range(len(df)), list(df.index))
    ax.set_ylabel("rationales")
    ax.set_title("Curation funnel")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save_closed(fig, path)


def loss_curves(run_dir: str | os.PathLike, students=("md", "cot", "pot"), *, path: str | None = None) -> Path:
    """Training loss of each student side by side (shared y axis), saved to ``figures/loss.png``; returns the path."""
    from mdlab import train

    students = [s for s in students if len(train.read_loss(run_dir, s))]
    if not students:
        raise train.TrainError(f"no loss.csv under {Path(run_dir) / 'students'}: train the students first")
    plt = _plt()
    fig, axes = plt.subplots(1, len(students), figsize=(4 * len(students), 3.2), sharey=True, squeeze=False)
    for ax, student in zip(axes[0], students):
        losses = train.read_loss(run_dir, student)
        ax.plot(losses["step"], losses["loss"], lw=1, alpha=0.5, label="loss")
        window = max(3, len(losses) // 8) if len(losses) >= 6 else 1
        ax.plot(losses["step"], losses["loss"].rolling(window, min_periods=1).mean(), lw=2,
                label=f"mean of {window}")
        ax.set_title(f"{student} student")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (completion tokens)")
    axes[0][0].legend()
    fig.tight_layout()
    return _save_closed(fig, Path(path) if path else Path(run_dir) / "figures" / "loss.png")


def _save_closed(fig, path) -> Path:
    # closed once saved: a notebook shows the file, and the inline backend would show the figure a second time
    _save(fig, path)
    _plt().close(fig)
    return Path(path)


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
        system = _label(student) if student == "base" else f"{student_model}, {_label(student)}"
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


def comparisons_markdown(claims) -> str:
    """The paired claims (``evaluate.comparisons``) as a markdown table, differences in points."""
    lines = ["| a | b | a - b, points [95% CI] | McNemar p | problems |", "|---|---|---|---|---|"]
    for c in claims:
        p = c.get("p_mcnemar")
        lines.append(f"| {c['a']} | {c['b']} | {c['diff']:+.1f} [{c['lo']:+.1f}, {c['hi']:+.1f}] | "
                     f"{'' if p is None else f'{p:.3g}'} | {c.get('n_problems', '')} |")
    note = ("Paired over the same problems: percentile bootstrap of the difference (problems resampled "
            "jointly); McNemar's exact test where both sides are one greedy path; @k: acc@k, k paths per "
            "mode.")
    return "\n".join(lines) + f"\n\n- {note}\n"


def transfer_markdown(transfer) -> str:
    """The generality table (``evaluate.transfer_accuracy``): student x transfer set, greedy accuracy %."""
    policies = [p for p in GREEDY_LABELS if p in set(transfer["policy"])]
    names = {"cot": "greedy CoT", "pot": "greedy PoT", "pot_then_cot": "greedy PoT, else CoT"}
    lines = ["| student | dataset | problems | " + " | ".join(names[p] for p in policies) + " |",
             "|---|---|---:|" + "---|" * len(policies)]
    for (student, dataset), part in transfer.groupby(["student", "dataset"], sort=False):
        by_policy = part.set_index("policy")
        cells = [_pct(*by_policy.loc[p, ["acc", "lo", "hi"]]) if p in by_policy.index else ""
                 for p in policies]
        lines.append(f"| {_label(student)} | {dataset} | {int(part['n'].iloc[0])} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike, curves, greedy, *, data: str, student_model: str,
                 temperature: float, top_p: float = 1.0, teacher: str | None = None, comparisons=(),
                 transfer=None, teacher_curve=None, teacher_label: str = "teacher (recorded)"):
    """curves.csv, greedy.csv, figures/*.png, results.md and results.json in ``run_dir``.

    ``comparisons``: ``evaluate.comparisons``; ``transfer``: ``evaluate.transfer_accuracy``;
    ``teacher_curve``: ``evaluate.teacher_curve``, drawn beside the students' CoT votes.
    """
    from mdlab import evaluate

    plt = _plt()
    run_dir = Path(run_dir)
    figures = run_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths = {"curves": run_dir / "curves.csv", "greedy": run_dir / "greedy.csv",
             "results": run_dir / "results.md", "results_json": run_dir / evaluate.RESULTS_FILE,
             "greedy_png": figures / "greedy.png"}
    curves.to_csv(paths["curves"], index=False)
    greedy.to_csv(paths["greedy"], index=False)
    if len(curves):
        paths["curves_png"] = figures / "accuracy_vs_k.png"
        plt.close(accuracy_vs_k(curves, paths["curves_png"], greedy=greedy))
    plt.close(greedy_bars(greedy, paths["greedy_png"]))
    if teacher_curve is not None:
        paths["teacher_png"] = figures / "teacher_self_consistency.png"
        plt.close(teacher_self_consistency(teacher_curve, paths["teacher_png"], curves=curves,
                                           teacher_label=teacher_label))
    _, markdown = results_table(curves, greedy, data=data, student_model=student_model,
                                temperature=temperature, top_p=top_p, teacher=teacher)
    if comparisons:
        markdown += "\n## Paired comparisons\n\n" + comparisons_markdown(comparisons)
    if transfer is not None and len(transfer):
        markdown += ("\n## Transfer: greedy accuracy % [95% CI] on other datasets\n\n"
                     + transfer_markdown(transfer))
    figure_lines = "\n".join(f"![{p.stem}](figures/{p.name})" for key, p in paths.items()
                             if key.endswith("_png"))
    paths["results"].write_text(f"# Results\n\n{markdown}\n{figure_lines}\n")
    blob = evaluate.results(curves, greedy, comparisons, transfer)
    paths["results_json"].write_text(json.dumps(blob, indent=1))
    return paths


def results_markdown(path: str | os.PathLike) -> str:
    """``results.md`` for a notebook, without its figure links: they resolve from the run directory, not from the
    notebook's folder (the notebook shows the figures itself)."""
    return "".join(line for line in Path(path).read_text().splitlines(True) if not line.startswith("!["))
